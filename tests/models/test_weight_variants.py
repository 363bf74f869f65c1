"""Model folders saved with diffusers' save_pretrained(..., variant="fp16"): read with --variant fp16 (variant= in the
Python API) through the libraries' own from_pretrained(variant=...), computed in float32; without it, a folder of such
files alone is a one-line error; the work directory binds the weights actually read, so one variant refuses the other."""
import json
import shutil

import numpy as np
import pytest
import torch

from unlearn_fast.cli import main
from unlearn_fast.models.adapter import DiffusionModel
from unlearn_fast.models.folder import DEFAULT_MODEL, ModelFolderError

FAST = ["--timesteps", "2", "--no-flips", "--score-seed", "3", "--fisher-examples", "16", "--quiet"]
UNLEARN = ["--draws", "8", "--step", "alpha/N:0.001", "--prompt", "red apple"]
PARTS = ("unet", "vae", "text_encoder")  # the default model's weight files; its tokenizer and scheduler have none


def _module(model, part):
    return {"unet": model.unet, "vae": model.vae, "text_encoder": model.text.encoder}[part]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """fp16: the default model as fp16 variants only (half-precision tensors in <name>.fp16.safetensors); rounded: the
    same half-rounded weights as plain float32 files; both: the default's float32 files beside fp16 variants."""
    root = tmp_path_factory.mktemp("variants")
    made = {name: root / name for name in ("fp16", "rounded", "both")}
    for folder in made.values():
        shutil.copytree(DEFAULT_MODEL, folder)
    for part in PARTS:
        for name, half, variant, keep in (("fp16", True, "fp16", False), ("rounded", False, None, False),
                                          ("both", True, "fp16", True)):
            module = _module(DiffusionModel.load("default"), part)
            module.half() if half else module.half().float()
            if not keep:
                (made[name] / part / "diffusion_pytorch_model.safetensors").unlink()
            module.save_pretrained(made[name] / part, variant=variant, safe_serialization=True)
    return {name: str(folder) for name, folder in made.items()}


@pytest.fixture(scope="module")
def data(default_image_folder):
    return default_image_folder(range(360, 376))


def test_the_fp16_files_are_read_as_saved_and_computed_in_float32(folders):
    import safetensors.torch

    saved = safetensors.torch.load_file(f"{folders['fp16']}/unet/diffusion_pytorch_model.fp16.safetensors")
    assert {tensor.dtype for tensor in saved.values()} == {torch.float16}  # a real half-precision variant
    model = DiffusionModel.load(folders["fp16"], variant="fp16")
    assert {p.dtype for module in model.modules() for p in module.parameters()} == {torch.float32}
    for key, tensor in model.unet.state_dict().items():
        assert torch.equal(tensor, saved[key].float()), key
    assert model.fingerprints() == DiffusionModel.load(folders["rounded"]).fingerprints()


def test_a_folder_of_fp16_variants_alone_asks_for_the_flag(folders, tmp_path):
    with pytest.raises(ModelFolderError, match=r"holds only fp16-variant weights .*pass --variant fp16"):
        DiffusionModel.load(folders["fp16"])
    with pytest.raises(SystemExit) as error:
        main(["prepare", "--model", folders["fp16"], "--work-dir", str(tmp_path / "w"), *FAST])
    message = str(error.value)
    assert "\n" not in message and "pass --variant fp16" in message and "text_encoder" in message
    assert not (tmp_path / "w" / "manifest.json").exists()  # refused before any work
    with pytest.raises(ModelFolderError, match=r"--variant bf16: no part holds <name>\.bf16\.safetensors"):
        DiffusionModel.load(folders["fp16"], variant="bf16")


@pytest.mark.slow
def test_fp16_variant_scores_equal_a_float32_folder_of_the_same_rounded_weights(folders, data, tmp_path, capsys):
    """The variant's scores and base losses are bit for bit those of float32 files holding the half-rounded weights."""
    results = {}
    for name, variant in (("fp16", ["--variant", "fp16"]), ("rounded", [])):
        work = tmp_path / name
        main(["attribute", "--model", folders[name], *variant, "--data", data, "--work-dir", str(work), *FAST,
              *UNLEARN, "--seed", "2", "--sample-steps", "3", "--json"])
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        manifest = json.loads((work / "manifest.json").read_text())
        results[name] = (np.load(summary["files"]["scores"]), np.load(work / "losses_base" / "data.npy"), manifest["inputs"],
                         manifest["sources"]["variant"])
    (scores, losses, inputs, variant), (scores_ref, losses_ref, inputs_ref, variant_ref) = results.values()
    assert variant == "fp16" and variant_ref is None
    assert np.array_equal(scores, scores_ref) and np.array_equal(losses, losses_ref)
    assert inputs == inputs_ref  # the same weights were read: the same content binding
    assert np.abs(scores).max() > 0


@pytest.mark.slow
def test_a_work_directory_made_with_one_variant_refuses_the_other_and_reopens_its_own(folders, data, tmp_path,
                                                                                      capsys):
    work = str(tmp_path / "work")
    main(["prepare", "--model", folders["both"], "--variant", "fp16", "--data", data, "--work-dir", work, *FAST])
    with pytest.raises(SystemExit, match=r"model\.unet"):  # --model without --variant: the float32 files
        main(["prepare", "--model", folders["both"], "--data", data, "--work-dir", work, *FAST])
    capsys.readouterr()
    # Neither --model nor --variant: the work directory's own (recorded with its sources), so no refusal.
    main(["attribute", "--work-dir", work, *FAST, *UNLEARN, "--seed", "2", "--sample-steps", "3", "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.load(summary["files"]["scores"]).shape == (1, 16)
    plain, half = DiffusionModel.load(folders["both"]), DiffusionModel.load(folders["both"], variant="fp16")
    assert plain.fingerprints()["unet"] != half.fingerprints()["unet"]


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_a_pipeline_saved_as_fp16_variants_reads_as_its_half_rounded_float32_weights(family, tmp_path):
    """Stable Diffusion's part-by-part loader (CLIP through transformers) and SDXL's pipeline loader: every part of
    pipe.save_pretrained(..., variant="fp16") read in float32, the same tensors as float32 files of those values."""
    from tiny_pipelines import IMAGE_SIZE, build_pipeline

    pipe = build_pipeline(family, ["red", "apple"])
    record = json.dumps({"resolution": IMAGE_SIZE})
    pipe.to(torch.float16).save_pretrained(tmp_path / "fp16", variant="fp16", safe_serialization=True)
    pipe.to(torch.float32).save_pretrained(tmp_path / "rounded", safe_serialization=True)
    for name in ("fp16", "rounded"):
        (tmp_path / name / "training.json").write_text(record)
    assert not list((tmp_path / "fp16").glob("*/*[!6].safetensors"))  # fp16 variants only
    with pytest.raises(ModelFolderError, match="pass --variant fp16"):
        DiffusionModel.load(str(tmp_path / "fp16"))
    half, rounded = DiffusionModel.load(str(tmp_path / "fp16"), variant="fp16"), DiffusionModel.load(
        str(tmp_path / "rounded"))
    assert {p.dtype for module in half.modules() for p in module.parameters()} == {torch.float32}
    assert half.fingerprints() == rounded.fingerprints()
    prompts = ["red apple", "apple"]
    assert torch.equal(half.encode_text(prompts), rounded.encode_text(prompts))


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_half_precision_plain_files_are_computed_in_float32_too(family, tmp_path):
    """A pipeline saved in float16 as its plain files (no variant): every part in float32, as the fp16 variant's
    (transformers 5 would keep the file's float16 for the text encoders unless told)."""
    from tiny_pipelines import IMAGE_SIZE, build_pipeline

    pipe = build_pipeline(family, ["red", "apple"])
    pipe.to(torch.float16).save_pretrained(tmp_path / "half", safe_serialization=True)
    (tmp_path / "half" / "training.json").write_text(json.dumps({"resolution": IMAGE_SIZE}))
    model = DiffusionModel.load(str(tmp_path / "half"))
    assert {p.dtype for module in model.modules() for p in module.parameters()} == {torch.float32}
