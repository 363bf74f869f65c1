"""prepare / attribute / report on the command line, on 24 default images with the shipped model."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from unlearn_fast.cli import main
from unlearn_fast.data import SubsetDataset, export_imagefolder

FAST = ["--timesteps", "2", "--no-flips", "--score-seed", "3", "--quiet"]
UNLEARN = ["--draws", "16", "--step", "alpha/N:0.001"]  # α in α/N units, as written


@pytest.fixture(scope="module")
def folder(tmp_path_factory, default_dataset):
    root = tmp_path_factory.mktemp("images24")
    export_imagefolder(SubsetDataset(default_dataset, range(360, 384)), str(root))
    return str(root)


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_prepare_attribute_report(folder, tmp_path, capsys, default_dataset):
    work = tmp_path / "work"
    main(["prepare", "--data", folder, "--work-dir", str(work), *FAST, "--json"])
    prepared = last_json(capsys)
    assert prepared["num_train"] == 24
    assert set(prepared["timings_s"]) == {"content_binding", "latents", "text", "fisher", "base_losses"}

    default_dataset.image(369).convert("RGB").resize((32, 32)).save(tmp_path / "query.png")  # 'red apple'
    main(["attribute", "--data", folder, "--work-dir", str(work), "--image", str(tmp_path / "query.png"),
          "--prompt", "red apple", *UNLEARN, "--top-k", "4", "--quiet", "--json"])
    summary = last_json(capsys)
    files = summary["files"]
    assert np.load(files["scores"]).shape == (1, 24)
    assert summary["queries"][0]["prompt"] == "red apple" and len(summary["queries"][0]["top"]) == 4
    assert summary["queries"][0]["top"][0]["caption"] == "red apple"  # the query is that training image
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["settings"]["scoring"]["timesteps"] == 2 and manifest["settings"]["scoring"]["flips"] is False

    assert files["report"] == str(work / "attributions" / summary["queries"][0]["folder"].split("/")[-1] / "report.html")
    main(["report", str(work / "attributions" / "latest"), "--top-k", "2", "--json"])
    again = last_json(capsys)
    assert again["files"]["report"] == files["report"]
    assert open(files["report"]).read().count("<figure>") == 2

    main(["attribute", "--data", folder, "--work-dir", str(work), "--prompt", "red apple", "--seed", "1",
          "--sample-steps", "5", *UNLEARN, "--quiet", "--out", str(tmp_path / "generated")])
    printed = capsys.readouterr().out
    assert "'red apple': #1" in printed and "report" in printed
    assert Image.open(tmp_path / "generated" / "contact_sheet.png").size[1] > 96


def test_bad_input_is_named_and_loses_nothing(folder, tmp_path, capsys):
    work = tmp_path / "work"
    main(["prepare", "--data", folder, "--work-dir", str(work), *FAST])
    capsys.readouterr()
    fisher = (work / "fisher.safetensors").read_bytes()
    Image.new("RGB", (48, 40)).save(tmp_path / "wrong.png")
    with pytest.raises(SystemExit, match=r"wrong.png is 48×40; the model takes 32×32"):
        main(["attribute", "--data", folder, "--work-dir", str(work), "--image", str(tmp_path / "wrong.png"),
              "--prompt", "x", "--quiet"])
    with pytest.raises(SystemExit, match="one prompt per image"):
        main(["attribute", "--data", folder, "--work-dir", str(work), "--image", str(tmp_path / "wrong.png"),
              "--prompt", "x", "--prompt", "y", "--quiet"])
    with pytest.raises(SystemExit, match=r"(?s)unlearn-fast prepare: work directory .*built from other inputs:\n"
                                         r"  setting 'scoring': was \{[^\n]*'timesteps': 2\}, now \{[^\n]*'timesteps': 3\}\n"
                                         r"use another"):  # other settings than the folder was prepared with
        main(["prepare", "--data", folder, "--work-dir", str(work), "--timesteps", "3", "--quiet"])
    with pytest.raises(SystemExit, match=r"unlearn-fast attribute: unlearning produced NaN/inf .* smaller step \(now --step alpha/N:1e\+40\)"):
        main(["attribute", "--data", folder, "--work-dir", str(work), "--prompt", "red apple", "--sample-steps", "2",
              "--step", "alpha/N:1e40", "--draws", "4", "--quiet"])
    with pytest.raises(SystemExit, match=r"unlearn-fast attribute: the Fisher lacks .* group 'attention'"):
        main(["attribute", "--data", folder, "--work-dir", str(work), "--prompt", "red apple", "--sample-steps", "2",
              "--group", "attention", "--draws", "4", "--quiet"])
    with pytest.raises(SystemExit, match=r"unlearn-fast attribute: parameter group 'no_such_layer' matches no"):
        main(["attribute", "--data", folder, "--work-dir", str(work), "--prompt", "red apple", "--sample-steps", "2",
              "--group", "no_such_layer", "--draws", "4", "--quiet"])
    with pytest.raises(SystemExit, match=r"unlearn-fast attribute: .*no_such_data: no such file or folder"):
        main(["attribute", "--data", str(tmp_path / "no_such_data"), "--work-dir", str(work), "--prompt", "x"])
    with pytest.raises(SystemExit, match=r"unlearn-fast prepare: device 'gpu0' is not a torch device"):
        main(["prepare", "--data", folder, "--work-dir", str(work), "--device", "gpu0", "--quiet"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match=r"unlearn-fast attribute: device 'cuda'.* sees no CUDA GPU"):
            main(["attribute", "--data", folder, "--work-dir", str(work), "--prompt", "x", "--device", "cuda"])
    assert (work / "fisher.safetensors").read_bytes() == fisher


def test_speed_options_apply_to_a_prepared_folder_and_keep_its_numbers(folder, tmp_path, capsys):
    from unlearn_fast.cli import _prepare_settings, build_parser

    work = tmp_path / "work"
    main(["prepare", "--data", folder, "--work-dir", str(work), *FAST])
    args = build_parser().parse_args(["attribute", "--data", folder, "--work-dir", str(work), "--prompt", "x",
                                      "--batch-size", "7", "--compile", "reduce-overhead", "--no-channels-last"])
    scoring = _prepare_settings(args).scoring  # no numeric option given: the folder's numbers, the command's speed
    assert (scoring.timesteps, scoring.flips, scoring.seed) == (2, False, 3)
    assert (scoring.batch_size, scoring.compile, scoring.channels_last) == (7, "reduce-overhead", False)


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    """README's first command (minus its installs), with a short sampler: the whole default set is attributed."""
    main(["demo", "--out", str(tmp_path), "--sample-steps", "5", "--quiet", "--json"])
    summary = last_json(capsys)
    assert summary["num_train"] == 3953 and summary["queries"][0]["prompt"] == "red apple"
    assert np.load(summary["files"]["scores"]).shape == (1, 3953)
    assert (tmp_path / "report" / "report.html").exists() and (tmp_path / "work" / "manifest.json").exists()
    assert set(summary["timings_s"]) >= {"latents", "fisher", "base_losses", "unlearn", "score"}


def test_a_new_folder_s_fisher_covers_the_group_the_command_unlearns(tmp_path):
    """A new work directory's Fisher covers --group, else the recipe's group; the demo's too (it used to keep K/V's,
    so `demo --group image` stopped at the Fisher check)."""
    from unlearn_fast.cli.main import _resolve_sources, _unlearn_settings, build_parser, demo_settings
    from unlearn_fast.methods.abu.recipes import recipe_group

    args = build_parser().parse_args(["demo", "--out", str(tmp_path), "--group", "image"])
    assert demo_settings(args, _unlearn_settings(args)).fisher_group == "image"
    args = build_parser().parse_args(["demo", "--out", str(tmp_path)])
    assert demo_settings(args, _unlearn_settings(args)).fisher_group == recipe_group()
    for extra, group in (([], recipe_group()), (["--group", "attention"], "attention")):
        args = build_parser().parse_args(["attribute", "--work-dir", str(tmp_path / "new"), "--prompt", "x", *extra])
        _resolve_sources(args)
        assert args.fisher_group == group


def test_parquet_shards_with_another_image_column_score_as_the_image_folder(folder, tmp_path, capsys,
                                                                            default_dataset):
    """The same 24 images and captions as parquet shards whose images sit in column "img" (diffusers' underscore
    spelling of the flag): the scores are the image folder's bit for bit, and a later command on the work directory
    omits --data and --image-column (it recorded them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from unlearn_fast.data import open_dataset

    images = open_dataset(folder)
    encoded = []
    for i in range(len(images)):
        with open(f"{folder}/{images.key(i)}", "rb") as handle:
            encoded.append(handle.read())
    table = pa.table({"file_name": [images.key(i) for i in range(len(images))],
                      "text": [images.captions(i)[0] for i in range(len(images))], "img": encoded})
    (tmp_path / "shards").mkdir()
    for k, start in enumerate(range(0, 24, 10)):
        pq.write_table(table.slice(start, 10), tmp_path / "shards" / f"train-{k:05d}.parquet")
    default_dataset.image(369).convert("RGB").resize((32, 32)).save(tmp_path / "query.png")
    query = ["--image", str(tmp_path / "query.png"), "--prompt", "red apple", *UNLEARN, "--json"]
    scores = {}
    for name, data in (("folder", ["--data", folder]),
                       ("shards", ["--data", str(tmp_path / "shards"), "--image_column", "img"])):
        main(["attribute", *data, "--work-dir", str(tmp_path / f"work-{name}"), *FAST, *query])
        scores[name] = np.load(last_json(capsys)["files"]["scores"])
    np.testing.assert_array_equal(scores["shards"], scores["folder"])
    main(["attribute", "--work-dir", str(tmp_path / "work-shards"), *FAST, *query])  # no --data, no --image-column
    np.testing.assert_array_equal(np.load(last_json(capsys)["files"]["scores"]), scores["folder"])


def test_a_subset_file_scores_as_a_folder_of_just_those_images(folder, tmp_path, capsys, default_dataset):
    """--subset FILE (file names here) attributes over those images only: the scores of a folder holding just them,
    bit for bit (the default noise is shared, so no image's losses depend on its row); the work directory records the
    subset, so a later command and the report's reopening of the set use it too."""
    from unlearn_fast.data import open_dataset

    images = open_dataset(folder)
    keep = [17, 3, 9, 21, 0, 12, 5, 8]  # an order of its own: the subset's rows follow the file
    (tmp_path / "subset.txt").write_text("".join(f"{images.key(i)}\n" for i in keep))
    export_imagefolder(SubsetDataset(images, keep), str(tmp_path / "eight"))
    default_dataset.image(369).convert("RGB").resize((32, 32)).save(tmp_path / "query.png")
    query = ["--image", str(tmp_path / "query.png"), "--prompt", "red apple", *UNLEARN, "--json"]
    main(["attribute", "--data", str(tmp_path / "eight"), "--work-dir", str(tmp_path / "work-eight"), *FAST, *query])
    alone = np.load(last_json(capsys)["files"]["scores"])
    main(["attribute", "--data", folder, "--subset", str(tmp_path / "subset.txt"), "--work-dir",
          str(tmp_path / "work-subset"), *FAST, *query])
    summary = last_json(capsys)
    assert alone.shape == (1, 8)
    np.testing.assert_array_equal(np.load(summary["files"]["scores"]), alone)
    main(["attribute", "--work-dir", str(tmp_path / "work-subset"), *FAST, *query])  # the recorded subset
    np.testing.assert_array_equal(np.load(last_json(capsys)["files"]["scores"]), alone)
    main(["report", str(tmp_path / "work-subset" / "attributions" / "latest"), "--json"])  # reopens the subset
    assert last_json(capsys)["files"]["report"]


@pytest.mark.slow
def test_methods_side_by_side_in_one_report(folder, tmp_path, capsys, default_dataset):
    """attribute --methods: AbU's column is exactly `attribute`'s answer; pixel similarity finds the query's own
    training image with score 1; the work directory's index lists both outputs; `report` rewrites the comparison."""
    work = tmp_path / "work"
    default_dataset.image(369).convert("RGB").resize((32, 32)).save(tmp_path / "query.png")  # row 9: 'red apple'
    ask = ["attribute", "--data", folder, "--work-dir", str(work), "--image", str(tmp_path / "query.png"),
           "--prompt", "red apple", *FAST, *UNLEARN, "--top-k", "4", "--json"]
    main(ask)
    alone = np.load(last_json(capsys)["files"]["scores"])
    with pytest.raises(SystemExit, match="unknown method 'nope'"):
        main([*ask, "--methods", "abu", "nope"])
    with pytest.raises(SystemExit, match="method 'pixel' is named twice"):
        main([*ask, "--methods", "pixel", "abu", "pixel"])
    main([*ask, "--methods", "abu", "pixel", "dtrak"])
    summary = last_json(capsys)
    out = work / "attributions" / "latest"
    assert summary["methods"] == ["abu", "pixel", "dtrak"] and summary["files"]["report"].endswith("comparison.html")
    assert np.array_equal(np.load(out / "abu" / "scores.npy"), alone)
    pixel = np.load(out / "pixel" / "scores.npy")[0]
    assert int(np.argmax(pixel)) == 9 and pixel[9] == pytest.approx(1.0, abs=1e-5)
    assert summary["queries"][0]["top"]["pixel"][0]["caption"] == "red apple"
    assert {pair["a"] + "|" + pair["b"] for pair in summary["queries"][0]["agreement"]} == {
        "abu|pixel", "abu|dtrak", "pixel|dtrak"}
    index = json.loads((work / "attributions" / "index.json").read_text())
    assert [entry.get("report") for entry in index["outputs"]] == ["report.html", "comparison.html"]
    page = (work / "attributions" / "index.html").read_text()
    assert page.count('class="prompt"') == 2 and "D-TRAK" in page and "comparison.html" in page

    main(["report", str(out), "--top-k", "2", "--json"])
    assert last_json(capsys)["files"]["report"] == summary["files"]["report"]
    assert (out / "comparison.html").read_text().count('<td class="rank">') == 2
