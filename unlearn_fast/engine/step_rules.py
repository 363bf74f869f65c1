"""The step rule of an unlearning ascent, as a typed value: the rule and its number travel together, so a number never
changes unit when the rule does.

    FixedStep(size)      s = size, whatever the training set's size N (a learning rate); the package's default
    AlphaOverN(alpha)    s = α / N (the paper): its effect shrinks as N grows, so α chosen at one N does not transfer
    LossRise(factor)     s such that the query's own loss rises by that factor, L(θ + s·u) = (1 + factor) · L(θ): a
                         short line search (engine/unlearn.py), so the step means the same thing for any N

On the command line and in `--set`, a rule is written RULE:VALUE (`fixed:7.5e-6`, `alpha/N:0.1`, `rise:0.1`) or RULE
alone for that rule's default value. Validation grids are multiples of a rule's own value (grid()), so every grid
holds the value it was built around.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, replace
from typing import ClassVar

from ..errors import SettingsError

# Validation grids: the value itself and half-decades around it (0.1×, ≈0.32×, 1×, 3.2×).
GRID_FACTORS = (0.1, 0.32, 1.0, 3.2)


@dataclass(frozen=True)
class _StepRule:
    """A rule (`rule`, its name) and its number (`value`, named `unit_name` in the subclass)."""

    unit_name: ClassVar[str]

    @property
    def value(self) -> float:
        """The rule's number, in its own unit."""
        raise NotImplementedError

    def with_value(self, value: float) -> "_StepRule":
        return replace(self, **{self.unit_name: value})

    def scale(self, num_train: int | None) -> float:
        """The step's scale s for a training set of num_train rows (LossRise: found by a line search, so None)."""
        raise NotImplementedError

    def grid(self, factors=GRID_FACTORS) -> tuple["_StepRule", ...]:
        """This rule at value × each factor (3 significant digits), so the grid holds this value when 1 is a factor."""
        return tuple(self.with_value(float(f"{self.value * factor:.3g}")) for factor in factors)

    def key_items(self) -> dict:
        """What settings keys record (the form they had when the rule was a string beside `alpha`, so folders made
        then keep their keys)."""
        return {"step": self.rule, "alpha": self.value}

    def __str__(self) -> str:
        return f"{self.rule}:{self.value!r}"  # repr: the text reads back as the same float

    def __post_init__(self):
        value = self.value
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise SettingsError(f"the {self.rule} step rule's {self.unit_name} must be a finite number > 0, got "
                                f"{value!r} (0 changes no weight and scores every image 0; a negative step would "
                                "make the query more likely, not less)")


@dataclass(frozen=True)
class FixedStep(_StepRule):
    """s = size for any N. 7.5e-6 is the size α = 0.003 gives α/N at N = 400, chosen on validation plants at N = 200,
    1,000 and 3,940 (benchmarks/README.md, "Choosing AbU's default")."""

    size: float = 7.5e-6
    rule: str = field(default="fixed", init=False)
    unit_name: ClassVar[str] = "size"

    @property
    def value(self) -> float:
        return self.size

    def scale(self, num_train):
        return self.size


@dataclass(frozen=True)
class AlphaOverN(_StepRule):
    """s = α / N (the paper). 0.1 is the α chosen on validation prompts (benchmarks/results/tuning.md; the paper's
    MSCOCO value is 0.01)."""

    alpha: float = 0.1
    rule: str = field(default="alpha/N", init=False)
    unit_name: ClassVar[str] = "alpha"

    @property
    def value(self) -> float:
        return self.alpha

    def scale(self, num_train):
        if not num_train:
            raise ValueError("the alpha/N step rule needs the training-set size N")
        return self.alpha / num_train


@dataclass(frozen=True)
class LossRise(_StepRule):
    """The step that raises the query's loss by `factor` (relative)."""

    factor: float = 0.1
    rule: str = field(default="rise", init=False)
    unit_name: ClassVar[str] = "factor"

    @property
    def value(self) -> float:
        return self.factor

    def scale(self, num_train):
        return None


StepRule = FixedStep | AlphaOverN | LossRise
STEP_RULES = {"fixed": FixedStep, "alpha/N": AlphaOverN, "rise": LossRise}


def parse_step_rule(text: str) -> StepRule:
    """RULE[:VALUE] (also RULE=VALUE) -> the rule; RULE alone takes that rule's default value."""
    rule, separator, number = text.replace("=", ":", 1).partition(":")
    if rule not in STEP_RULES:
        raise argparse.ArgumentTypeError(f"expected RULE[:VALUE] with RULE one of {', '.join(STEP_RULES)} (e.g. "
                                         f"fixed:7.5e-6, alpha/N:0.1, rise:0.1), got {text!r}")
    if not separator:
        return STEP_RULES[rule]()
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number after {rule}:, got {text!r}") from None
    try:
        return STEP_RULES[rule]().with_value(value)
    except SettingsError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def step_rule(value) -> StepRule:
    """A step rule from itself or its RULE[:VALUE] text (SettingsError naming the text)."""
    if isinstance(value, (FixedStep, AlphaOverN, LossRise)):
        return value
    if isinstance(value, str):
        try:
            return parse_step_rule(value)
        except argparse.ArgumentTypeError as error:
            raise SettingsError(f"step: {error}") from None
    raise SettingsError(f"step must be a step rule (FixedStep, AlphaOverN, LossRise) or RULE[:VALUE] text, got "
                        f"{value!r}")
