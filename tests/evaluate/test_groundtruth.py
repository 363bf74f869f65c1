"""Ground-truth scenarios: exemplars made outside the data set, and the whole groundtruth run on a toy scale."""
import json
import subprocess
import sys

import numpy as np
import pytest

from unlearn_fast.data import load_pixels
from unlearn_fast.engine.unlearn import UnlearnSettings
from unlearn_fast.errors import SettingsError
from unlearn_fast.evaluate.exemplars import concept_exemplars
from unlearn_fast.evaluate.groundtruth import GroundTruthSetup, customisation_scenario
from unlearn_fast.models.adapter import DiffusionModel

pytestmark = pytest.mark.slow  # training runs or subprocesses: the full tier, not the everyday one


def test_exemplars_are_one_concept_unlike_the_default_set(default_dataset):
    exemplars = concept_exemplars(32, 5, seed=0)
    assert len(exemplars) == 5 and all(e.shape == (32, 32, 3) and e.dtype == np.uint8 for e in exemplars)
    np.testing.assert_array_equal(concept_exemplars(32, 5, seed=0)[2], exemplars[2])  # seeded
    stack = np.stack(exemplars).astype(np.float64)
    assert all(not np.array_equal(exemplars[0], e) for e in exemplars[1:])  # views, not copies
    within = np.mean([np.abs(a - b).mean() for i, a in enumerate(stack) for b in stack[i + 1:]])
    pixels = load_pixels(default_dataset, 32, range(0, 3953, 10)).astype(np.float64)
    nearest = [np.abs(pixels - e).mean(axis=(1, 2, 3)).min() for e in stack]
    assert min(nearest) > 35  # no default image is near any exemplar (mean absolute difference per channel)
    assert within < np.mean(nearest)  # the exemplars are nearer one another than to their nearest default image


def test_customisation_prompts_use_the_token_and_known_words():
    model = DiffusionModel.load("default")
    scenario = customisation_scenario(GroundTruthSetup(prompts=10), 32, model.text.tokenizer.index)
    assert len(scenario.prompts) == 10 and len(set(scenario.prompts)) == 10
    assert all("<v1>" in p and not [w for w in model.text.tokenizer.unknown_words(p) if w != "<v1>"]
               for p in scenario.prompts)


def test_the_cli_scores_every_method_on_every_scenario(tmp_path):
    out = tmp_path / "gt"
    result = subprocess.run([sys.executable, "-m", "unlearn_fast", "evaluate", "groundtruth", "--profile", "tiny",
                             "--out", str(out), "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert [s["scenario"] for s in summary["scenarios"]] == ["customisation", "customisation-domain", "planted-2",
                                                                 "domain0-2"]
    for scenario in summary["scenarios"]:
        n, relevant = scenario["num_train"], scenario["relevant"]
        assert relevant == list(range(n - len(relevant), n))  # the exemplars / copies come after the base images
        assert sorted(scenario["methods"]) == ["abu", "pixel", "random"]
        # No --set: the default AbU runs its own step (the tiny profile validates none; see test_step_grids.py).
        assert scenario["methods"]["abu"]["settings"]["step"] == str(UnlearnSettings().step) == "fixed:7.5e-06"
        for values in scenario["methods"].values():
            assert len(values["per_query"]) == len(scenario["prompts"])
            assert all(0 <= q["recall"] <= 1 and 0 < q["ap"] <= 1 for q in values["per_query"])
    family = summary["scenarios"][1]
    assert family["family"] and 4 <= family["family_size"] <= 8  # tiny profile: 4 exemplars of one family
    domain = summary["scenarios"][3]
    checks = domain["memorisation"]
    assert len(checks) == len(domain["prompts"]) and domain["void"] == (not any(c["memorised"] for c in checks))
    for check in checks:  # the rule: memorised iff the query is nearer the plant than any base image
        assert check["memorised"] == (check["mse_to_plant"] < check["mse_to_nearest_base"])
    for values in domain["methods"].values():
        assert [q["counted"] for q in values["per_query"]] == [c["memorised"] for c in checks]
        assert set(values["controls"]) == {"caption only", "image only"}
        assert all(len(c["ranks"]) == 2 for c in values["controls"].values())
    assert 0 <= domain["plant_nearest_base"]["index"] < domain["num_train"] - 2
    text = (out / "groundtruth.md").read_text()
    assert "domain0-2" in text and "caption only" in text


def test_the_memorisation_rule_marks_a_query_that_looks_like_a_base_image_void():
    from unlearn_fast.evaluate.groundtruth import memorised
    from unlearn_fast.query import Query

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    plant = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    near_plant = np.clip(plant.astype(int) + 3, 0, 255).astype(np.uint8)
    near_base = np.clip(base[2].astype(int) + 3, 0, 255).astype(np.uint8)
    checks = memorised([Query(near_plant, "x"), Query(near_base, "x")], plant, base)
    assert [c["memorised"] for c in checks] == [True, False]
    assert checks[1]["nearest_base"] == 2 and checks[1]["mse_to_nearest_base"] < checks[1]["mse_to_plant"]


def test_the_headline_averages_cases_not_queries_and_leaves_void_cases_out():
    from unlearn_fast.evaluate.groundtruth import headline

    def case(name, void, share, recall=1.0):
        cell = lambda v: {"mean": v, "se": 0.0}  # noqa: E731
        return {"scenario": name, "memorisation": [], "void": void,
                "methods": {"abu": {"top_r_share": cell(share), "recall": cell(recall), "ap": cell(share)}}}

    summary = {"scenarios": [case("domain0-1", False, 1.0), case("domain0-3", False, 0.5, 0.5),
                             case("domain1-1", True, 0.0, 0.0),
                             {"scenario": "customisation-domain", "methods": {
                                 "abu": {"recall": {"mean": 0.25, "se": 0.1}, "ap": {"mean": 0.2, "se": 0.05}}}}]}
    table = headline(summary)["abu"]
    assert table["cases"] == 2 and table["top_r_share"][0] == pytest.approx(0.75)
    assert table["top_r_share"][1] == pytest.approx(0.25)  # SE over the two cases: std(1, 0.5) / √2
    assert table["recall"][0] == pytest.approx(0.75)
    assert table["customisation-domain recall"] == (0.25, 0.1)


def test_validation_plants_are_disjoint_from_every_evaluation_plant(default_dataset):
    """Settings chosen on validation plants never saw an evaluation plant (or its control image), at any size."""
    from unlearn_fast.evaluate.groundtruth import EVALUATION_PLANT_COUNTS, GroundTruthSetup, domain_scenarios

    def planted(split, count, base_images, controls=True):
        setup = GroundTruthSetup(base_images=base_images, domain_images=count, domain_copies=(3,), plant_split=split,
                                 controls=controls)
        scenarios = domain_scenarios(setup, default_dataset, 16)
        images = [s.plant for s in scenarios] + [s.controls["caption only"][0] for s in scenarios if s.controls]
        return scenarios, {image.tobytes() for image in images}

    for base_images in (200, 3940):
        evaluation = set()
        for count in EVALUATION_PLANT_COUNTS:
            evaluation |= planted("evaluation", count, base_images)[1]
        scenarios, validation = planted("validation", 2, base_images, controls=False)
        assert len(validation) == 2 and not validation & evaluation, base_images
        assert [s.name for s in scenarios] == ["validation0-3", "validation1-3"]
        assert all(not s.controls for s in scenarios)
    with pytest.raises(SettingsError, match="plant_split"):
        GroundTruthSetup(plant_split="test")
