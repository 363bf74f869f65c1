"""Every family × every capability, on tiny random pipelines this test builds itself (tests/tiny_pipelines.py: no
downloads, tokenizers written offline). The table in benchmarks/README.md ("Model families") is these tests:

    folder loads        the pipeline folder loads through models/families, the family and objective are recognised,
                        "kv" selects Linear weights that read the text
    objective           model.loss equals what diffusers' official training script computes on the same draws
                        (tests/family_objectives.py), and the fused kernels equal the reference path
    fisher              the hooked diagonal Fisher equals the per-example (vmap) one
    batch invariance    every row's loss has the same bits for any batch size
    unlearn + score     the family fine-tuned (our trainer) on a planted set; a work directory over it: the query's
                        copies take the top ranks
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from family_objectives import official_training_loss, tiny_dit_training_loss
from tiny_pipelines import build_pipeline_folder
from unlearn_fast.engine.step_rules import LossRise
from unlearn_fast.engine.fisher_hooks import _vmap_fisher, diagonal_fisher
from unlearn_fast.engine.loss_grid import LossGrid
from unlearn_fast.engine.scoring import per_example_losses
from unlearn_fast.engine.unlearn import UnlearnSettings
from unlearn_fast.models.adapter import DiffusionModel
from unlearn_fast.models.tiny import new_tiny_model

WORDS = ["red", "apple", "cat", "face", "blue", "star", "green", "tree", "a", "photo", "of", "zebra", "stripes"]
# family → (model.family.name, objective)
FAMILIES = {
    "sd": ("unet", "epsilon"),
    "sdxl": ("sdxl", "epsilon"),
    "pixart-sigma": ("pixart-sigma", "epsilon"),
    "sana": ("sana", "flow_matching"),
    "sd3": ("sd3", "flow_matching"),
    "flux": ("flux", "flow_matching"),
    "tiny-dit": ("tiny-dit", "flow_matching"),  # ours: models/tiny.py, the DiT the ground-truth benchmarks train
}
# The planted test's attribution, one setting for every family: the scale-free "rise" step and the calibrated score
# (the response to reference queries subtracted). With raw scores the tiny SDXL and Flux models move every image's
# loss alike under the step (the raw score's hub effect, METHOD.md) and the copies fall to ranks 11-13 and 8-10 of 24
# after 200 fine-tune steps; benchmarks/family_planted.py measures both rules (benchmarks/README.md, "Model families").
PLANTED = UnlearnSettings(step=LossRise(0.5), draws=16, score="calibrated", references=4)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny sizes: a second thread only waits


def load_family_model(name: str, folder) -> DiffusionModel:
    """The family's tiny random pipeline folder written at `folder` (seeded), loaded back through models/."""
    torch.manual_seed(0)
    if name == "tiny-dit":
        new_tiny_model(WORDS, architecture="dit").save(str(folder))
    else:
        build_pipeline_folder(name, folder, WORDS, seed=0)
    torch.manual_seed(0)
    return DiffusionModel.load(str(folder)).eval()


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, folder, load_family_model(request.param, folder)


def draws(model, rows: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn((rows, *model.latent_shape), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.linspace(10, model.num_timesteps - 10, rows).long()
    prompts = ["red apple", "cat face", "blue star", "green tree"][:rows]
    return x0, noise, t, prompts


def test_folder_loads_as_its_family(family):
    name, folder, model = family
    assert model.family.name == FAMILIES[name][0] and model.prediction_type == FAMILIES[name][1]
    kv = model.parameter_group("kv")
    modules = dict(model.unet.named_modules())
    assert kv and all(isinstance(modules[n.rpartition(".")[0]], torch.nn.Linear) for n in kv)
    cond = model.encode_text(["red apple", "cat face"])
    assert cond.shape[0] == 2 and cond.dtype == torch.float32
    fields = dict(model.conditioning_layout.fields)
    assert ("pooled" in fields) == (name in ("sdxl", "sd3", "flux")) and ("mask" in fields) == (name in ("pixart-sigma",
                                                                                                       "sana"))


def test_loss_is_diffusers_own_training_objective(family):
    name, folder, model = family
    x0, noise, t, prompts = draws(model)
    cond = model.encode_text(prompts)
    ours = model.loss(x0, cond, t, noise)
    if name == "tiny-dit":  # no diffusers pipeline: the flow-matching scripts' arithmetic on our text states
        theirs = tiny_dit_training_loss(model.unet, model.scheduler, x0, model.conditioning_layout.unpack(cond)["tokens"],
                                        noise, t)
    else:
        pipe = model.family.pipeline if name != "sd" else _sd_pipeline(folder)
        theirs = official_training_loss(name, pipe, x0, prompts, noise, t, max_sequence_length=model.text.max_tokens)
    torch.testing.assert_close(ours.detach(), theirs.detach().float(), rtol=1e-5, atol=1e-6)


def _sd_pipeline(folder):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None)


def test_fused_path_equals_the_reference_and_does_not_depend_on_the_batch(family):
    name, folder, model = family
    x0, _, _, prompts = draws(model)
    cond, ids = model.encode_text(prompts), [3, 1, 4, 1]
    grid = LossGrid(timesteps=3, flips=True, seed=2, batch_size=5)
    fused = per_example_losses(model, x0, cond, ids, grid)
    for batch_size in (1, 7):
        other = LossGrid(timesteps=3, flips=True, seed=2, batch_size=batch_size)
        torch.testing.assert_close(per_example_losses(model, x0, cond, ids, other), fused, rtol=0, atol=0)
    reference = per_example_losses(model, x0, cond, ids, LossGrid(timesteps=3, flips=True, seed=2, path="stored-noise"))
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)


def test_hooked_fisher_equals_the_per_example_one(family):
    name, folder, model = family
    x0, noise, t, prompts = draws(model)
    params = model.parameter_group("kv")
    cond = model.encode_text(prompts)
    hooked = diagonal_fisher(model, params, x0, cond, t, noise)
    vmapped = _vmap_fisher(model, params, x0, cond, t, noise)
    for key in params:
        assert hooked[key].shape == params[key].shape and bool((hooked[key] >= 0).all())
        torch.testing.assert_close(hooked[key].float(), vmapped[key].float(), rtol=1e-4, atol=1e-10)


def test_generation_samples_through_the_family(family):
    """model.generate (queries from prompts, the calibrated score's references, the demo) at the model's resolution:
    the same bits for the same call, the same image alone or in a batch (to one grey level: SDXL's batched kernels
    round one value in 3,000 differently)."""
    name, folder, model = family
    images = model.generate(["red apple", "cat face"], seed=[0, 1], steps=2)
    assert images.shape == (2, model.resolution, model.resolution, 3) and images.dtype == np.uint8
    alone = model.generate(["red apple"], seed=0, steps=2)
    assert np.array_equal(alone, model.generate(["red apple"], seed=0, steps=2))
    assert np.abs(images[:1].astype(int) - alone).max() <= 1
    assert not np.array_equal(images[0], images[1])


def planted_set(root, model, default_dataset, steps: int = 200, copies: int = 3, others: int = 21):
    """An image folder: `others` default images under their captions and `copies` copies of a distinctive pattern
    under "zebra stripes"; the model fine-tuned on it (denoiser only, briefly), so the copies are training data."""
    from unlearn_fast.data import SubsetDataset, load_pixels
    from unlearn_fast.evaluate.planted import distinctive_image
    from unlearn_fast.training.config import TrainingConfig
    from unlearn_fast.training.trainer import TrainingSet, train_diffusion

    root.mkdir(parents=True, exist_ok=True)
    base = SubsetDataset(default_dataset, range(1000, 1000 + others))
    planted = distinctive_image(model.resolution, 5)
    pixels = list(load_pixels(base, model.resolution)) + [planted] * copies
    captions = [" ".join(WORDS[(i + k) % 8] for k in (0, 3)) for i in range(others)] + ["zebra stripes"] * copies
    rows = []
    for i, (image, caption) in enumerate(zip(pixels, captions)):
        Image.fromarray(image).save(root / f"{i:03d}.png")
        rows.append({"file_name": f"{i:03d}.png", "text": caption})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = TrainingConfig(steps=steps, batch_size=12, lr=1e-3, warmup_steps=5, ema_decay=0.0,
                            train_text_encoder=False, caption_dropout=0.0)
    train_diffusion(model, TrainingSet(model.encode_images(np.stack(pixels)), [(c,) for c in captions]), config,
                    quiet=True)
    model.eval()
    return root, planted, list(range(others, others + copies))


def planted_scores(model, root, default_dataset, unlearn: list[UnlearnSettings], steps: int = 200):
    """([scores of the 24 training images per settings in `unlearn`], the copies' indices): the model fine-tuned on
    planted_set once, one work directory over its images, the planted pattern attributed with each settings."""
    from unlearn_fast.attributor import Attributor
    from unlearn_fast.data import open_dataset
    from unlearn_fast.query import query_from_array
    from unlearn_fast.workspace import PrepareSettings

    images, planted, copies = planted_set(root / "images", model, default_dataset, steps=steps)
    settings = PrepareSettings(scoring=LossGrid(timesteps=3, flips=False, seed=1, noise="shared"), chunk_rows=8)
    attributor = Attributor(model, open_dataset(str(images)), root / "work", settings, progress=False)
    attributor.prepare()
    query = query_from_array(planted, "zebra stripes", model.resolution)
    return [attributor.attribute([query], settings).scores[0] for settings in unlearn], copies


@pytest.mark.slow
def test_unlearning_the_query_ranks_its_copies_first(family, tmp_path, default_dataset):
    name, folder, _ = family
    model = DiffusionModel.load(str(folder)).eval()  # a copy of its own: fine-tuning changes it
    (scores,), copies = planted_scores(model, tmp_path, default_dataset, [PLANTED])
    assert np.isfinite(scores).all() and scores.shape == (len(copies) + 21,)
    assert set(np.argsort(-scores)[:len(copies)].tolist()) == set(copies), (name, scores)
