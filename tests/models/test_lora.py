"""A LoRA fine-tuned here on planted copies, saved as diffusers' LoRA file and loaded back onto the base model:
attribution over the LoRA's own training images, unlearning the LoRA's A/B matrices (group "lora"), ranks the
copies first. The user's case: "which of the images I fine-tuned my LoRA on did this generation come from?"."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("peft")

from unlearn_fast.engine.step_rules import LossRise
from unlearn_fast.data import SubsetDataset, load_pixels, open_dataset  # noqa: E402
from unlearn_fast.engine.loss_grid import LossGrid  # noqa: E402
from unlearn_fast.engine.unlearn import UnlearnSettings  # noqa: E402
from unlearn_fast.evaluate.planted import distinctive_image  # noqa: E402
from unlearn_fast.models.adapter import DiffusionModel  # noqa: E402
from unlearn_fast.models.lora import add_lora, load_lora, save_lora  # noqa: E402
from unlearn_fast.training.config import TrainingConfig  # noqa: E402
from unlearn_fast.training.trainer import TrainingSet, train_diffusion  # noqa: E402

pytestmark = pytest.mark.slow  # training runs or subprocesses: the full tier, not the everyday one

CAPTION = "green star"  # words the default vocabulary has; the copies' pattern is nothing like the emoji set
COPIES, OTHERS = 4, 28


@pytest.fixture(scope="module")
def lora_set(tmp_path_factory, default_dataset):
    """An image folder: 28 default images and 4 copies of a distinctive pattern, and the LoRA trained on it."""
    root = tmp_path_factory.mktemp("lora")
    images = root / "images"
    images.mkdir()
    others = SubsetDataset(default_dataset, range(600, 600 + OTHERS))
    pixels = list(load_pixels(others, 32)) + [distinctive_image(32, 3)] * COPIES
    captions = [others.captions(i)[0] for i in range(OTHERS)] + [CAPTION] * COPIES
    rows = []
    for i, (image, caption) in enumerate(zip(pixels, captions)):
        Image.fromarray(image).save(images / f"{i:03d}.png")
        rows.append({"file_name": f"{i:03d}.png", "text": caption})
    (images / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    model = DiffusionModel.load("default")
    add_lora(model, rank=4, seed=0)
    x0 = model.encode_images(np.stack(pixels))
    config = TrainingConfig(steps=150, batch_size=16, lr=3e-3, warmup_steps=10, ema_decay=0.0,
                            unet_parameters="lora", train_text_encoder=False, caption_dropout=0.0)
    train_diffusion(model, TrainingSet(x0, [(c,) for c in captions]), config, quiet=True)
    trained = {n: p.detach().clone() for n, p in model.unet.named_parameters() if "lora_" in n}
    return images, save_lora(model, str(root / "lora")), trained


def test_lora_round_trips_and_only_the_adapter_is_new(lora_set):
    images, path, trained = lora_set
    base = DiffusionModel.load("default")
    model = DiffusionModel.load("default")
    load_lora(model, path)
    group = model.parameter_group("lora")
    assert group and all(".lora_A." in n or ".lora_B." in n for n in group)
    loaded = dict(model.unet.named_parameters())
    assert set(group) == set(trained)  # the saved file holds every trained A/B matrix, and they load back exactly
    for name, value in trained.items():
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0)
    base_weights = dict(base.unet.named_parameters())
    for name, p in model.unet.named_parameters():  # peft wraps a layer: its base weight keeps its value
        if "lora_" not in name:
            plain = name.replace(".base_layer", "")
            torch.testing.assert_close(p, base_weights[plain], rtol=0, atol=0)
    assert model.fingerprint() != base.fingerprint()  # a work directory binds to the adapter too


def test_attribution_over_the_lora_training_images_ranks_the_copies_first(lora_set, tmp_path):
    from unlearn_fast.attributor import Attributor
    from unlearn_fast.query import query_from_array
    from unlearn_fast.workspace import PrepareSettings

    images, path, _ = lora_set
    model = DiffusionModel.load("default")
    load_lora(model, path)
    settings = PrepareSettings(scoring=LossGrid(timesteps=4, flips=False, noise="shared"), fisher_group="lora")
    attributor = Attributor(model, open_dataset(str(images)), tmp_path / "work", settings, progress=False)
    query = query_from_array(distinctive_image(32, 3), CAPTION, 32)
    # The "rise" step (the query's loss rises by half) means the same for any adapter's scale; α/N = 0.01/32 here
    # overshoots until every image's loss rises alike and the copies drown.
    unlearn = UnlearnSettings(step=LossRise(0.5), draws=32, group="lora")
    scores = attributor.attribute([query], unlearn).scores[0]
    top = np.argsort(-scores)[:COPIES].tolist()
    assert set(top) == set(range(OTHERS, OTHERS + COPIES)), (top, scores)
