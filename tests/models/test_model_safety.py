"""NaN/inf and unusable inputs are refused where they enter, with one line naming the culprit: a damaged tensor in any
part of a model folder or in a LoRA file (at load), a non-finite guidance scale (before sampling), a generated image
holding NaN (before it turns black in uint8), a query image of one flat colour, and a prompt that is not Unicode."""
import math
import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

from unlearn_fast.errors import SettingsError, UserInputError
from unlearn_fast.models.adapter import DiffusionModel
from unlearn_fast.models.finite import DamagedWeightsError, GenerationError
from unlearn_fast.models.folder import DEFAULT_MODEL
from unlearn_fast.query import QueryError, query_from_array, query_from_file, query_from_prompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DAMAGED = 3  # entries overwritten in the damaged tensor


def damage(path, key: str, value: float) -> None:
    """Overwrite the first DAMAGED entries of tensor `key` in the safetensors file `path` with `value`."""
    tensors = load_file(str(path))
    tensors[key].view(-1)[:DAMAGED] = value
    save_file(tensors, str(path), metadata={"format": "pt"})


def assert_names(error, *culprits: str) -> None:
    """A one-line UserInputError (the CLI prints it without a traceback) naming every culprit."""
    assert isinstance(error.value, UserInputError)
    message = str(error.value)
    assert "\n" not in message, message
    for culprit in culprits:
        assert culprit in message, (culprit, message)


def counts(value: float) -> str:
    return f"{DAMAGED} NaN / 0 inf" if math.isnan(value) else f"0 NaN / {DAMAGED} inf"


@pytest.mark.parametrize("part, key, value", [
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", math.nan),
    ("unet", "mid_block.resnets.0.conv1.weight", math.inf),
    ("vae", "encoder.down_blocks.1.resnets.0.conv1.weight", math.nan),
    ("vae", "decoder.up_blocks.0.resnets.0.conv2.weight", math.nan),
    ("vae", "decoder.conv_out.bias", -math.inf),
    ("text_encoder", "token_embedding.weight", math.nan),
])
def test_a_damaged_tensor_in_the_model_folder_is_refused_at_load_naming_file_and_tensor(tmp_path, part, key, value):
    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, folder)
    weights = folder / part / "diffusion_pytorch_model.safetensors"
    damage(weights, key, value)
    with pytest.raises(DamagedWeightsError) as error:
        DiffusionModel.load(str(folder))
    assert_names(error, f"{weights}: tensor {key!r}", counts(value))


def test_a_damaged_second_text_encoder_of_a_pipeline_family_is_refused(tmp_path):
    pytest.importorskip("transformers")
    from tiny_pipelines import build_pipeline_folder

    folder = build_pipeline_folder("sdxl", tmp_path / "sdxl", ["red", "apple"])
    weights = folder / "text_encoder_2" / "model.safetensors"
    key = next(k for k in load_file(str(weights)) if k.endswith("token_embedding.weight"))
    damage(weights, key, math.nan)
    with pytest.raises(DamagedWeightsError) as error:
        DiffusionModel.load(str(folder))
    assert_names(error, f"{weights}: tensor {key!r}", counts(math.nan))


@pytest.fixture
def lora_file(tmp_path):
    pytest.importorskip("peft")
    from unlearn_fast.models.lora import add_lora, save_lora

    model = DiffusionModel.load("default")
    add_lora(model, rank=2, seed=0)
    return save_lora(model, str(tmp_path / "lora"))


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_damaged_lora_is_refused_before_it_touches_the_model(lora_file, value):
    from unlearn_fast.models.lora import load_lora

    key = sorted(k for k in load_file(lora_file) if k.endswith(".lora.up.weight"))[0]  # B, as diffusers names it
    damage(lora_file, key, value)
    model = DiffusionModel.load("default")
    with pytest.raises(DamagedWeightsError) as error:
        load_lora(model, os.path.dirname(lora_file))
    assert_names(error, f"{lora_file}: tensor {key!r}", counts(value))
    assert not any("lora_" in name for name, _ in model.unet.named_parameters())


@pytest.fixture
def model():
    """The default model, for this test alone (tests here damage it)."""
    return DiffusionModel.load("default")


@pytest.mark.parametrize("guidance", [math.nan, math.inf, -math.inf])
def test_a_non_finite_guidance_scale_is_refused_before_sampling(model, monkeypatch, guidance):
    def sample(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(model.family, "generate", sample)
    with pytest.raises(SettingsError) as error:
        model.generate(["red apple"], guidance=guidance, steps=2)
    assert_names(error, "guidance", repr(guidance))
    with pytest.raises(SettingsError) as error:
        query_from_prompt(model, "red apple", steps=2, guidance=guidance)
    assert_names(error, "guidance")


def test_a_generated_image_holding_nan_is_refused_not_made_black(model):
    with torch.no_grad():
        model.vae.decoder.conv_out.weight[0, 0, 0, 0] = math.nan  # damaged after loading: the load check passed
    with pytest.raises(GenerationError) as error:
        model.generate(["red apple", "blue star"], seed=[4, 7], steps=2)
    assert_names(error, "'red apple' (seed 4)", "NaN")


@pytest.mark.parametrize("colour", [(0, 0, 0), (12, 200, 7)])
def test_a_query_file_of_one_flat_colour_is_refused(tmp_path, colour):
    path = tmp_path / "blank.png"
    Image.new("RGB", (32, 32), colour).save(path)
    with pytest.raises(QueryError) as error:
        query_from_file(str(path), "red apple", 32)
    assert_names(error, str(path), f"RGB {colour}")


def test_a_generated_query_of_one_flat_colour_is_refused(model):
    with torch.no_grad():  # a dead decoder: finite, but every pixel black
        model.vae.decoder.conv_out.weight.zero_()
        model.vae.decoder.conv_out.bias.fill_(-5.0)
    with pytest.raises(QueryError) as error:
        query_from_prompt(model, "red apple", seed=3, steps=2)
    assert_names(error, "generated from prompt 'red apple' (seed 3", "RGB (0, 0, 0)")


@pytest.mark.parametrize("prompt", [os.fsdecode(b"red \xff apple"), "red \ud800 apple"])
def test_a_prompt_that_is_not_unicode_is_refused_naming_it(tmp_path, monkeypatch, model, prompt):
    path = tmp_path / "query.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    with pytest.raises(QueryError) as error:
        query_from_file(str(path), prompt, 32)
    assert_names(error, str(path), repr(prompt))

    def sample(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(model, "generate", sample)
    with pytest.raises(QueryError) as error:
        query_from_prompt(model, prompt, steps=2)
    assert_names(error, repr(prompt))


# Any code point, lone surrogates and control characters included; long prompts by repetition.
_TEXT = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"]), st.characters(categories=["Cc"])),
                max_size=40)
PROMPTS = st.one_of(_TEXT, _TEXT.map(lambda text: text * 300), st.sampled_from(["", " ", "\t\n", "\x00", "\ud800"]))


@settings(max_examples=100, deadline=None)
@given(PROMPTS)
def test_any_prompt_makes_a_query_or_a_one_line_query_error(prompt):
    image = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    try:
        query = query_from_array(image, prompt, 2)
    except QueryError as error:
        assert "\n" not in str(error) and len(str(error)) < 400, str(error)
        return
    assert len(query.key) == 16  # the work directory's name for the query: the prompt's UTF-8 bytes are hashed
    assert isinstance(query.prompt, str) and query.prompt.strip()

