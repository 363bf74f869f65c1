"""The model adapter: encoding, the loss of METHOD.md §1, parameter groups, generation, model folders."""
import json
import os

import numpy as np
import pytest
import torch

from unlearn_fast.models.adapter import DiffusionModel
from unlearn_fast.models.folder import ModelFolderError


def test_loss_matches_the_definition(tiny_model, small_pixels):
    pixels, captions = small_pixels
    x0 = tiny_model.encode_images(pixels[:8])
    cond = tiny_model.encode_text([c[0] for c in captions[:8]])
    t = torch.tensor([0, 10, 100, 250, 500, 750, 900, 999])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    a = tiny_model.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with torch.no_grad():
        expected = (tiny_model.unet(x_t, t, encoder_hidden_states=cond).sample - noise).pow(2).mean((1, 2, 3))
        got = tiny_model.loss(x0, cond, t, noise)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    a_t, s_t = tiny_model.noise_coefficients(t)
    torch.testing.assert_close(a_t, a.flatten().sqrt().float())
    torch.testing.assert_close(s_t, (1 - a.flatten()).sqrt().float())


def test_v_prediction_target(tiny_model):
    from diffusers import DDPMScheduler

    model = DiffusionModel(tiny_model.unet, DDPMScheduler(prediction_type="v_prediction"), tiny_model.text,
                           vae=tiny_model.vae)
    x0, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([1, 400, 999])
    a_t, s_t = model.noise_coefficients(t)
    torch.testing.assert_close(model.target(x0, noise, t), a_t.view(-1, 1, 1, 1) * noise - s_t.view(-1, 1, 1, 1) * x0,
                               rtol=1e-5, atol=1e-6)


def test_encode_images_is_deterministic_and_checks_shape(tiny_model, small_pixels):
    pixels, _ = small_pixels
    torch.testing.assert_close(tiny_model.encode_images(pixels[:5]), tiny_model.encode_images(pixels[:5]), rtol=0, atol=0)
    assert tiny_model.encode_images(pixels[:5]).shape == (5, *tiny_model.latent_shape)
    with pytest.raises(ValueError, match=r"16×16.*32×32"):
        tiny_model.encode_images(pixels[:2, :16, :16])
    with pytest.raises(ValueError, match="uint8"):
        tiny_model.encode_images(pixels[:2].astype(np.float32))


def test_parameter_groups(tiny_model):
    kv = tiny_model.parameter_group("kv")
    assert kv and all(".attn2.to_k.weight" in n or ".attn2.to_v.weight" in n for n in kv)
    assert len(kv) == 2 * sum(".attn2.to_k.weight" in n for n, _ in tiny_model.unet.named_parameters())
    assert set(kv) < set(tiny_model.parameter_group("cross-attention")) < set(tiny_model.parameter_group("attention"))
    assert len(tiny_model.parameter_group("all")) == len(list(tiny_model.unet.parameters()))
    assert set(tiny_model.parameter_group(r"\.attn2\.to_q\.weight$")).isdisjoint(kv)
    with pytest.raises(ValueError, match="matches no unet denoiser parameter"):
        tiny_model.parameter_group("no_such_layer")
    with pytest.raises(ValueError, match="neither one of"):
        tiny_model.parameter_group("attn2[")


def test_generation_is_bit_identical_for_a_seed(tiny_model):
    first = tiny_model.generate(["red apple", "cat face"], seed=7, steps=4, guidance=2.0)
    again = tiny_model.generate(["red apple", "cat face"], seed=7, steps=4, guidance=2.0)
    other = tiny_model.generate(["red apple", "cat face"], seed=8, steps=4, guidance=2.0)
    assert first.dtype == np.uint8 and first.shape == (2, 32, 32, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    alone = tiny_model.generate("cat face", seed=7, steps=4, guidance=2.0)
    np.testing.assert_allclose(alone[0], first[1], atol=1)  # a prompt's image does not depend on its batch
    mixed = tiny_model.generate(["red apple", "red apple"], seed=[7, 8], steps=4, guidance=2.0)
    np.testing.assert_allclose(mixed[0], first[0], atol=1)
    assert not np.array_equal(mixed[0], mixed[1])
    with pytest.raises(ValueError, match="3 seeds for 2 prompts"):
        tiny_model.generate(["a", "b"], seed=[1, 2, 3], steps=2)


def test_save_and_load_round_trip(tiny_model, tmp_path):
    tiny_model.save(str(tmp_path / "m"), training_record={"note": "test"})
    loaded = DiffusionModel.load(str(tmp_path / "m"))
    assert loaded.fingerprint() == tiny_model.fingerprint()
    assert json.loads((tmp_path / "m" / "training.json").read_text()) == {"note": "test"}
    assert np.array_equal(loaded.generate("grinning face", seed=3, steps=3), tiny_model.generate("grinning face", seed=3, steps=3))
    with torch.no_grad():
        loaded.unet.conv_out.bias.add_(1e-3)
    assert loaded.fingerprint() != tiny_model.fingerprint()


def test_unknown_model_folder_layouts(tiny_model, tmp_path):
    with pytest.raises(ModelFolderError, match="no such model folder"):
        DiffusionModel.load(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "weights.ckpt").write_bytes(b"")
    with pytest.raises(ModelFolderError, match=r"empty.*model_index.json is missing.*weights.ckpt"):
        DiffusionModel.load(str(tmp_path / "empty"))
    folder = tmp_path / "partial"
    tiny_model.save(str(folder))
    os.rename(folder / "unet", folder / "unet_old")
    with pytest.raises(ModelFolderError, match=r"partial.*missing part\(s\) \['unet'\]"):
        DiffusionModel.load(str(folder))
    os.rename(folder / "unet_old", folder / "unet")
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "T5EncoderModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match="unknown text encoder transformers.T5EncoderModel"):
        DiffusionModel.load(str(folder))
