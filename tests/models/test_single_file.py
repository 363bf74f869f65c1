"""Stable Diffusion single-file checkpoints (--model FILE.safetensors --model-config FOLDER; Python:
DiffusionModel.load(FILE, config=FOLDER)), read through diffusers' StableDiffusionPipeline.from_single_file.

The checkpoint is the tiny SD pipeline's weights written as one safetensors file in the original LDM layout by
tests/ldm_checkpoint.py; that helper's key mapping is itself checked here against diffusers' own conversions. The
config folder is the pipeline folder with every weight file removed, so every weight the model holds came from the
file. Everything is built offline."""
import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from ldm_checkpoint import ldm_state_dict, write_ldm_checkpoint  # noqa: E402
from tiny_pipelines import build_pipeline, build_pipeline_folder, load_pipeline  # noqa: E402
from unlearn_fast.cli import main  # noqa: E402
from unlearn_fast.models.adapter import DiffusionModel  # noqa: E402
from unlearn_fast.models.folder import DEFAULT_MODEL, ModelFolderError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny sizes: a second thread only waits

WORDS = ["red", "apple"]
FAST = ["--timesteps", "2", "--no-flips", "--score-seed", "3", "--fisher-examples", "16", "--quiet"]
QUERY = ["--draws", "8", "--step", "alpha/N:0.001", "--prompt", "red apple", "--seed", "2", "--sample-steps", "3",
         "--json"]


def _without_weights(folder, to):
    """A copy of a pipeline folder holding its configs, tokenizer and scheduler only."""
    shutil.copytree(folder, to, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    assert not list(to.rglob("*.safetensors"))
    return to


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """folder: the tiny SD pipeline folder; file: its weights as one LDM-layout safetensors file; config: the folder
    without weights."""
    root = tmp_path_factory.mktemp("single_file")
    folder = build_pipeline_folder("sd", root / "folder", WORDS)
    file = write_ldm_checkpoint(load_pipeline("sd", folder), root / "tiny-sd.safetensors")
    return {"folder": str(folder), "file": file, "config": str(_without_weights(folder, root / "config"))}


@pytest.fixture(scope="module")
def data(default_image_folder):
    return default_image_folder(range(360, 376))


def test_the_ldm_layout_helper_is_the_inverse_of_diffusers_conversions():
    """Every tensor of UNet, VAE and CLIP comes back from diffusers' own convert_ldm_* under its diffusers name, with
    the same shape, dtype and bits, and nothing else does."""
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)

    pipe = build_pipeline("sd", WORDS)
    checkpoint = ldm_state_dict(pipe)
    assert {key.split(".")[0] for key in checkpoint} == {"model", "first_stage_model", "cond_stage_model"}
    assert checkpoint["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # LDM's 1×1 convolutions
    back = {"unet": convert_ldm_unet_checkpoint(dict(checkpoint), pipe.unet.config),
            "vae": convert_ldm_vae_checkpoint(dict(checkpoint), pipe.vae.config),
            "text_encoder": convert_ldm_clip_checkpoint(dict(checkpoint))}
    for part, converted in back.items():
        expected = getattr(pipe, part).state_dict()
        if not any(key.startswith("text_model.") for key in expected):  # transformers' flattened CLIPTextModel
            converted = {key.removeprefix("text_model."): value for key, value in converted.items()}
        assert set(converted) == set(expected), part
        for key, tensor in expected.items():
            assert converted[key].dtype == tensor.dtype and torch.equal(converted[key], tensor), (part, key)


def test_a_single_file_loads_the_same_model_as_its_folder_bit_for_bit(sd):
    folder = DiffusionModel.load(sd["folder"])
    single = DiffusionModel.load(sd["file"], config=sd["config"])
    assert single.fingerprints() == folder.fingerprints()
    for module, reference in zip(single.modules(), folder.modules()):
        saved = reference.state_dict()
        assert set(module.state_dict()) == set(saved)
        for key, tensor in module.state_dict().items():
            assert tensor.dtype == torch.float32 and torch.equal(tensor, saved[key]), key
    assert type(single.scheduler) is type(folder.scheduler) and single.scheduler.config == folder.scheduler.config
    prompts = ["red apple", "an apple"]
    cond = single.encode_text(prompts)
    assert torch.equal(cond, folder.encode_text(prompts))
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x0 = single.encode_images(images)
    assert torch.equal(x0, folder.encode_images(images))
    timesteps, noise = torch.tensor([10, 700]), torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(single.loss(x0, cond, timesteps, noise), folder.loss(x0, cond, timesteps, noise))
    assert single.folder == sd["file"] and single.model_config == sd["config"]


def test_a_half_precision_single_file_is_computed_in_float32(sd, tmp_path):
    """Most shared checkpoints are fp16: read into float32 modules, the same model as a float32 folder of the
    half-rounded weights."""
    pipe = load_pipeline("sd", sd["folder"])
    pipe.to(torch.float16)
    file = write_ldm_checkpoint(pipe, tmp_path / "half.safetensors")
    pipe.to(torch.float32).save_pretrained(tmp_path / "rounded", safe_serialization=True)
    single, rounded = DiffusionModel.load(file, config=sd["config"]), DiffusionModel.load(str(tmp_path / "rounded"))
    assert {p.dtype for module in single.modules() for p in module.parameters()} == {torch.float32}
    assert single.fingerprints() == rounded.fingerprints()
    assert single.fingerprints()["unet"] != DiffusionModel.load(sd["folder"]).fingerprints()["unet"]


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt"])
def test_a_pickle_checkpoint_is_refused_by_its_name_before_it_is_read(sd, tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04 not even a pickle")  # were it read, the error would be about its content
    with pytest.raises(ModelFolderError, match=rf"^{path}: a pickle-based checkpoint \({suffix}\) is refused"):
        DiffusionModel.load(str(path), config=sd["config"])
    with pytest.raises(SystemExit) as error:
        main(["prepare", "--model", str(path), "--model-config", sd["config"], "--work-dir", str(tmp_path / "w"),
              *FAST])
    assert "\n" not in str(error.value) and str(path) in str(error.value) and "safetensors only" in str(error.value)
    assert not (tmp_path / "w" / "manifest.json").exists()


def test_a_single_file_without_its_config_says_what_to_give(sd, tmp_path):
    with pytest.raises(ModelFolderError, match=r"single-file checkpoint: give --model-config FOLDER"):
        DiffusionModel.load(sd["file"])
    with pytest.raises(SystemExit) as error:
        main(["prepare", "--model", sd["file"], "--work-dir", str(tmp_path / "w"), *FAST])
    message = str(error.value)
    assert "\n" not in message and sd["file"] in message and "--model-config FOLDER" in message
    assert not (tmp_path / "w" / "manifest.json").exists()
    with pytest.raises(ModelFolderError, match=r"--model-config .*no_such: no such folder"):
        DiffusionModel.load(sd["file"], config=str(tmp_path / "no_such"))


def test_flags_that_do_not_fit_the_model_are_refused(sd):
    with pytest.raises(ModelFolderError, match=r"--model-config .*: only a single-file checkpoint needs one"):
        DiffusionModel.load(sd["folder"], config=sd["config"])
    with pytest.raises(ModelFolderError, match=r"--variant fp16: .* is a single-file checkpoint"):
        DiffusionModel.load(sd["file"], variant="fp16", config=sd["config"])
    with pytest.raises(ModelFolderError, match=r"model_index\.json names 'UnlearnFastPipeline'; .*Stable Diffusion"):
        DiffusionModel.load(sd["file"], config=DEFAULT_MODEL)


def test_a_file_missing_a_part_or_of_another_architecture_is_a_one_line_error(sd, tmp_path):
    import safetensors.torch

    checkpoint = safetensors.torch.load_file(sd["file"])
    no_vae = tmp_path / "no_vae.safetensors"
    safetensors.torch.save_file({k: v for k, v in checkpoint.items() if not k.startswith("first_stage_model.")},
                                str(no_vae))
    with pytest.raises(ModelFolderError, match=r"no_vae\.safetensors: holds no vae weights"):
        DiffusionModel.load(str(no_vae), config=sd["config"])
    # One tensor short: diffusers' conversion skips it, and accelerate leaves it empty (on the meta device).
    for missing, message in (("model.diffusion_model.out.2.bias", "lacks tensors that the architecture"),
                             ("cond_stage_model.transformer.text_model.final_layer_norm.bias",
                              "holds no weights for text_encoder tensor '.*final_layer_norm.bias'")):
        short = tmp_path / "short.safetensors"
        safetensors.torch.save_file({k: v for k, v in checkpoint.items() if k != missing}, str(short))
        with pytest.raises(ModelFolderError, match=rf"short\.safetensors: {message}"):
            DiffusionModel.load(str(short), config=sd["config"])
    (tmp_path / "damaged.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(ModelFolderError, match=r"damaged\.safetensors: not a readable safetensors file"):
        DiffusionModel.load(str(tmp_path / "damaged.safetensors"), config=sd["config"])
    other = _without_weights(sd["folder"], tmp_path / "other")
    unet_config = json.loads((other / "unet" / "config.json").read_text())
    (other / "unet" / "config.json").write_text(json.dumps({**unet_config, "block_out_channels": [16, 48]}))
    with pytest.raises(ModelFolderError) as error:
        DiffusionModel.load(sd["file"], config=str(other))
    assert "\n" not in str(error.value) and str(error.value).startswith(sd["file"])


@pytest.mark.slow
def test_single_file_attribution_equals_the_folders_and_a_later_command_needs_neither_flag(sd, data, tmp_path,
                                                                                          capsys):
    """attribute from the single file: the generated query image, every array artefact (latents, text conditioning,
    base losses, the query's losses after unlearning) and the scores equal the pipeline folder's bit for bit, and the
    content binding is the same; the work directory records the file and its config, so a later attribute with neither
    --model nor --model-config reopens them."""
    runs = {}
    for name, model in (("folder", ["--model", sd["folder"]]),
                        ("file", ["--model", sd["file"], "--model-config", sd["config"]])):
        work = tmp_path / name
        main(["attribute", *model, "--data", data, "--work-dir", str(work), *FAST, *QUERY])
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        runs[name] = (work, np.load(summary["files"]["scores"]), json.loads((work / "manifest.json").read_text()))
    (work_folder, scores_folder, manifest_folder), (work_file, scores_file, manifest_file) = runs.values()
    assert np.array_equal(scores_file, scores_folder) and np.abs(scores_folder).max() > 0
    assert manifest_file["inputs"] == manifest_folder["inputs"]
    assert manifest_file["sources"]["model"] == sd["file"] and manifest_file["sources"]["model_config"] == sd["config"]
    assert manifest_folder["sources"]["model_config"] is None
    arrays = sorted(path.relative_to(work_folder) for path in work_folder.rglob("*.npy")
                    if "attributions" not in path.parts)
    assert any("losses_base" in str(path) for path in arrays) and len(arrays) > 2
    assert sorted(path.relative_to(work_file) for path in work_file.rglob("*.npy")
                  if "attributions" not in path.parts) == arrays
    for path in arrays:
        assert (work_file / path).read_bytes() == (work_folder / path).read_bytes(), path
    queries = [next(work.glob("attributions/*/images/query_0.png")).read_bytes() for work in (work_folder, work_file)]
    assert queries[0] == queries[1]  # generated by the model from the prompt and seed

    main(["attribute", "--work-dir", str(work_file), "--out", str(tmp_path / "again"), *FAST, *QUERY])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.array_equal(np.load(summary["files"]["scores"]), scores_file)
    with pytest.raises(SystemExit, match="--model-config FOLDER"):  # the file named again: its config too
        main(["attribute", "--model", sd["file"], "--work-dir", str(work_file), *FAST, *QUERY])


def test_without_accelerate_a_single_file_is_refused_not_read_unchecked(sd, monkeypatch):
    """diffusers without accelerate loads non-strictly into initialised modules, where a missing tensor would keep
    its random value unseen: the file is refused, in one line that says what to install."""
    from diffusers import utils as diffusers_utils

    monkeypatch.setattr(diffusers_utils, "is_accelerate_available", lambda: False)
    with pytest.raises(ModelFolderError, match=r"need accelerate \(pip install accelerate") as error:
        DiffusionModel.load(sd["file"], config=sd["config"])
    assert "\n" not in str(error.value)
