"""The trainer: it learns, it is deterministic, and excluded images never reach it."""
import copy

import numpy as np
import pytest
import torch

from unlearn_fast.training.config import TrainingConfig
from unlearn_fast.training.trainer import TrainingSet, calibrate_latent_scale, train_diffusion, train_vae

pytestmark = pytest.mark.slow  # training runs or subprocesses: the full tier, not the everyday one

FAST = dict(batch_size=16, warmup_steps=2, ema_decay=0.0)


def _training_set(model, small_pixels, exclude=()):
    pixels, captions = small_pixels
    return TrainingSet(model.encode_images(pixels), captions, exclude)


def test_diffusion_training_lowers_the_loss(tiny_model, small_pixels):
    data = _training_set(tiny_model, small_pixels)
    history = train_diffusion(tiny_model, data, TrainingConfig(steps=60, lr=2e-3, **FAST), quiet=True)
    assert np.mean(history.losses[-10:]) < 0.7 * np.mean(history.losses[:10])


def test_vae_training_lowers_the_loss_and_calibration_standardises_latents(tiny_model, small_pixels):
    pixels, _ = small_pixels
    losses = train_vae(tiny_model.vae, pixels, TrainingConfig(vae_steps=25, vae_batch_size=16), quiet=True)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    calibrate_latent_scale(tiny_model, pixels)
    x0 = tiny_model.encode_images(pixels)
    assert abs(float(x0.mean())) < 1e-4 and abs(float(x0.std()) - 1) < 1e-4


def test_training_is_deterministic_given_a_seed(small_pixels):
    from unlearn_fast.models.tiny import new_tiny_model

    fingerprints = []
    for _ in range(2):
        torch.manual_seed(3)
        model = new_tiny_model([c for cs in small_pixels[1] for c in cs])
        train_diffusion(model, _training_set(model, small_pixels), TrainingConfig(steps=5, seed=3, **FAST),
                        quiet=True)
        fingerprints.append(model.fingerprint())
    assert fingerprints[0] == fingerprints[1]


def _batches_seen(model, data, monkeypatch, steps=30):
    """Dataset indices of the rows each training step received (the spy sits on TrainingSet.batch's output)."""
    seen = []
    original = TrainingSet.batch

    def spy(self, indices, generator):
        x0, captions, kept = original(self, indices, generator)
        seen.append(indices[kept].tolist())
        return x0, captions, kept

    monkeypatch.setattr(TrainingSet, "batch", spy)
    train_diffusion(model, data, TrainingConfig(steps=steps, **FAST), quiet=True)
    monkeypatch.undo()
    return seen


def test_excluded_indices_are_never_seen(tiny_model, small_pixels, monkeypatch):
    excluded = {0, 5, 17, 42, 95}
    data = _training_set(tiny_model, small_pixels, exclude=excluded)
    data.x0[sorted(excluded)] = float("nan")  # poisoned: one excluded row in a step would make the weights NaN
    seen = [i for batch in _batches_seen(tiny_model, data, monkeypatch) for i in batch]
    assert excluded.isdisjoint(seen)
    assert set(seen) == set(range(96)) - excluded  # 5 epochs: every other image was seen
    assert all(bool(p.isfinite().all()) for p in tiny_model.unet.parameters())


def test_leave_k_out_replays_the_full_runs_batches(tiny_model, small_pixels, monkeypatch):
    """Same seed: the leave-K-out run's batches are the full run's batches minus the excluded rows, in order."""
    excluded = {3, 8, 50}
    full = _batches_seen(copy.deepcopy(tiny_model), _training_set(tiny_model, small_pixels), monkeypatch)
    reduced = _batches_seen(copy.deepcopy(tiny_model), _training_set(tiny_model, small_pixels, excluded), monkeypatch)
    assert reduced == [[i for i in batch if i not in excluded] for batch in full]
    assert any(len(batch) < 16 for batch in reduced)


def test_exclude_is_validated(tiny_model, small_pixels):
    with pytest.raises(ValueError, match=r"exclude: indices \[96\]"):
        _training_set(tiny_model, small_pixels, exclude=[3, 96])
    with pytest.raises(ValueError, match="every example is excluded"):
        _training_set(tiny_model, small_pixels, exclude=range(96))


def test_fine_tune_with_a_new_token(tiny_model, small_pixels, tmp_path):
    """Customisation: a new word enters the vocabulary and training binds it (old rows of the embedding kept)."""
    old_rows = tiny_model.text.encoder.token_embedding.weight.detach().clone()
    (token_id,) = tiny_model.text.tokenizer.add_tokens(["<v1>"])
    tiny_model.text.encoder.resize_token_embeddings(len(tiny_model.text.tokenizer))
    pixels, _ = small_pixels
    data = TrainingSet(tiny_model.encode_images(pixels[:4]), [("a photo of <v1>",)] * 4)
    train_diffusion(tiny_model, data, TrainingConfig(steps=3, unet_parameters="kv", **FAST), quiet=True)
    weight = tiny_model.text.encoder.token_embedding.weight
    assert weight.shape[0] == token_id + 1
    assert not torch.equal(weight[token_id], old_rows.mean(0))  # the new word was trained
    with pytest.warns(UserWarning, match=r"unknown word\(s\) \['zebra'\]"):
        tiny_model.text.tokenizer(["a <v1> zebra"])
