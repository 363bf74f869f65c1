"""--resolution N: the training images are preprocessed to N px (shorter side resized, centre crop) and the latents
follow; recorded with the work directory's settings so later commands reopen it; a side the model cannot take is a
one-line error naming --resolution and the model's factor before any work; by default nothing changes."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from unlearn_fast.cli import main
from unlearn_fast.data import load_pixels, open_dataset
from unlearn_fast.errors import SettingsError
from unlearn_fast.models.adapter import DiffusionModel
from unlearn_fast.prepare_settings import PrepareSettings

FAST = ["--timesteps", "2", "--no-flips", "--score-seed", "3", "--fisher-examples", "16", "--quiet"]


@pytest.fixture(scope="module")
def data(default_image_folder):
    return default_image_folder(range(360, 376))


def test_the_default_model_takes_multiples_of_its_vae_factor():
    model = DiffusionModel.load("default")
    assert model.size_multiple == 4 and model.resolution == 32 and model.latent_shape == (4, 8, 8)
    assert model.use_resolution(48).latent_shape == (4, 12, 12) and model.resolution == 48
    assert model.use_resolution(None).resolution == 32  # the model's own again
    for bad in (30, 0, -8, 33):
        with pytest.raises(SettingsError, match=rf"--resolution {bad}: .*multiples of 4 \(its VAE's factor 4"):
            model.check_resolution(bad)
    with pytest.raises(SettingsError, match="--resolution 30"):
        PrepareSettings(resolution=30).validate(model)


def test_a_bad_resolution_is_refused_before_any_work(data, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as error:
        main(["prepare", "--data", data, "--work-dir", str(work), "--resolution", "30", *FAST])
    message = str(error.value)
    assert "\n" not in message and "--resolution 30" in message and "multiples of 4" in message
    assert not (work / "manifest.json").exists()
    with pytest.raises(SystemExit):  # argparse: not a positive integer
        main(["prepare", "--data", data, "--work-dir", str(work), "--resolution", "0", *FAST])


@pytest.mark.slow
def test_resolution_sets_the_latents_and_is_reopened_by_later_commands(data, tmp_path, capsys):
    work = tmp_path / "work"
    main(["prepare", "--data", data, "--work-dir", str(work), "--resolution", "48", *FAST])
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["settings"]["resolution"] == 48
    latents = np.load(work / "latents" / "data.npy")
    assert latents.shape == (16, 4, 12, 12)
    # The training images resized (bilinear, shorter side) and centre-cropped to 48 px, encoded: the same bits.
    model = DiffusionModel.load("default").use_resolution(48)
    expected = model.encode_images(load_pixels(open_dataset(data), 48))
    assert torch.equal(torch.from_numpy(latents), expected)

    capsys.readouterr()
    main(["attribute", "--work-dir", str(work), *FAST, "--prompt", "red apple", "--seed", "2", "--sample-steps", "3",
          "--draws", "8", "--json"])  # neither --resolution nor --data: the work directory's own
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.load(summary["files"]["scores"]).shape == (1, 16)
    folder = work / "attributions" / summary["queries"][0]["folder"].split("/")[-1]
    assert Image.open(folder / "images" / "query_0.png").size == (48, 48)  # the generated query has the training images' side

    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "q32.png")
    with pytest.raises(SystemExit, match=r"is 32×32; the model takes 48×48"):
        main(["attribute", "--work-dir", str(work), *FAST, "--prompt", "red apple", "--image",
              str(tmp_path / "q32.png")])
    with pytest.raises(SystemExit) as refused:  # another side: another binding, named as the setting alone
        main(["prepare", "--work-dir", str(work), "--resolution", "32", *FAST])
    assert "setting 'resolution'" in str(refused.value) and "model." not in str(refused.value)


def test_the_model_s_own_side_is_the_default_not_another_setting(data, tmp_path):
    """--resolution at the model's own side (32) on a folder prepared without it: the same numbers, so the same
    binding (nothing refused, nothing recomputed)."""
    work = tmp_path / "work"
    main(["prepare", "--data", data, "--work-dir", str(work), *FAST])
    before = (work / "manifest.json").read_text()
    main(["prepare", "--work-dir", str(work), "--resolution", "32", *FAST])
    assert (work / "manifest.json").read_text() == before


def test_the_default_resolution_leaves_the_settings_key_as_it_was():
    """No --resolution: the work directory's settings carry no resolution entry, so folders and query keys made before
    the setting existed stay valid (tests/methods/test_default_scores_unchanged.py checks the numbers)."""
    assert "resolution" not in PrepareSettings().manifest()
    assert PrepareSettings(resolution=48).manifest()["resolution"] == 48
    assert PrepareSettings.from_manifest(PrepareSettings(resolution=48).manifest()).resolution == 48
