"""Each step rule's validation grid is in the rule's own unit and holds the value it is built around, so a default
evaluate run validates (or, with one factor, runs) every AbU variant's own step, never a step in another unit."""
import dataclasses

import pytest

from unlearn_fast.engine.step_rules import STEP_RULES, AlphaOverN, FixedStep, LossRise, parse_step_rule
from unlearn_fast.engine.unlearn import UnlearnSettings
from unlearn_fast.errors import SettingsError
from unlearn_fast.evaluate.counterfactual import CounterfactualSetup
from unlearn_fast.evaluate.groundtruth import GroundTruthSetup
from unlearn_fast.evaluate.group_retraining import GroupRetrainingSetup
from unlearn_fast.evaluate.lds import LDSSetup
from unlearn_fast.evaluate.profiles import PROFILES
from unlearn_fast.methods import build_method
from unlearn_fast.methods.abu.recipes import VARIANTS
from unlearn_fast.settings import settings_key

SETUPS = (CounterfactualSetup, GroundTruthSetup, LDSSetup, GroupRetrainingSetup)
HARNESSES = {CounterfactualSetup: "counterfactual", GroundTruthSetup: "groundtruth", LDSSetup: "lds",
             GroupRetrainingSetup: "groups"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_harness_grid_holds_each_variants_own_step_in_its_rules_unit(variant):
    own = build_method(variant).unlearn.step
    for setup in SETUPS:
        grid = own.grid(setup().abu_step_factors)
        assert own in grid and {type(rule) for rule in grid} == {type(own)}, (setup.__name__, grid)
        for profile in PROFILES.values():  # every profile's grid too
            factors = profile.get(HARNESSES[setup], {}).get("abu_step_factors", setup().abu_step_factors)
            assert own in own.grid(factors), (setup.__name__, factors)


@pytest.mark.parametrize("rule", list(STEP_RULES.values()))
def test_each_rules_default_grid_holds_its_default_and_reads_back_from_its_text(rule):
    default = rule()
    grid = default.grid()
    assert default in grid and len(set(grid)) == len(grid)
    assert all(parse_step_rule(str(r)) == r for r in grid)  # RULE:VALUE text reads back to the same float


def test_the_tiny_profile_runs_the_default_step_without_validation():
    for harness in ("counterfactual", "groundtruth", "lds", "groups"):
        factors = PROFILES["tiny"][harness].get("abu_step_factors")
        assert factors in (None, (1.0,)), harness
    assert UnlearnSettings().step.grid((1.0,)) == (FixedStep(7.5e-6),)


def test_a_number_never_changes_unit_with_the_rule():
    """Changing the rule replaces the number with that rule's own default; the key records both (as before)."""
    assert UnlearnSettings(step="rise").step == LossRise(0.1)
    assert UnlearnSettings(step="alpha/N").step == AlphaOverN(0.1) and AlphaOverN(0.1).scale(400) == 0.1 / 400
    assert FixedStep(2e-6).scale(10) == FixedStep(2e-6).scale(10**6) == 2e-6 and LossRise(0.1).scale(10) is None
    assert settings_key(UnlearnSettings())["step"] == "fixed" and settings_key(UnlearnSettings())["alpha"] == 7.5e-6
    paper = settings_key(UnlearnSettings(step=AlphaOverN(0.1)))
    assert "step" not in paper and paper["alpha"] == 0.1  # alpha/N is the implicit rule of the oldest keys
    with pytest.raises(SettingsError, match="step: expected RULE"):
        UnlearnSettings(step="newton")
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(SettingsError, match="must be a finite number > 0"):
            AlphaOverN(bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        FixedStep().size = 1.0
