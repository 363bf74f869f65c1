"""What unlearning a query does (engine/unlearn.py runs it): the step rule, the draws, the weights changed, the
preconditioner, how losses become scores. Declared apart from the pass, with no torch import, so the command line
builds its flags (and answers --help) without loading the engines."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import SettingsError, check_seed
from ..score_rules import REFERENCE_RULES, SCORE_RULES
from ..settings import SPEED, count_or_zero, knob, positive_float, positive_int
from ..settings import seed as seed_type
from .step_rules import FixedStep, StepRule, parse_step_rule, step_rule

CURVATURES = ("diagonal", "layer-damped", "kfac", "ekfac")  # the preconditioners (engine/curvature.py)


@dataclass
class UnlearnSettings:
    """group: the weights changed (a DiffusionModel.parameter_group name or regex). precondition=False: plain SGD
    ascent (θ += s · ĝ), the baseline METHOD.md says falls to chance. num_train: N in α/N, overriding the caller's
    training-set size. step: the step rule and its number (step_rules: FixedStep, AlphaOverN, LossRise). score: how losses become scores
    (score_rules.SCORE_RULES); references and spread: the reference queries of the "calibrated" rule. curvature:
    the preconditioner (CURVATURES: the diagonal Fisher, or K-FAC / EK-FAC factors of the group's Linear
    layers, damped by curvature_damping × their mean eigenvalue). cap, retain: MUCS's cap at an untrained model's
    loss and its descent on `retain` seeded training rows per step (module docstring)."""

    steps: int = knob(1, help="ascent steps S", flag="--unlearn-steps", parse=positive_int)
    # The package's default: a fixed step (its value and how it was chosen: step_rules.FixedStep).
    step: StepRule = knob(FixedStep(), parse=parse_step_rule,
                          help="step rule and its number: fixed:SIZE (the step itself, whatever N), alpha/N:ALPHA "
                               "(the paper's α, divided by N) or rise:FACTOR (the step that raises the query's loss "
                               "by that factor); a rule alone takes its default number")
    draws: int = knob(500, help="(t, ε) draws M per step", parse=positive_int)
    batch_size: int = knob(64, role=SPEED, flag="--unlearn-batch-size", parse=positive_int,
                           help="draws per backward")
    seed: int = knob(0, flag="--unlearn-seed", parse=seed_type, help="seed of the unlearning's (t, ε) draws")
    group: str = knob("kv", help="weights to unlearn, within the Fisher's group: kv, cross-attention, attention, "
                                 "image, all, lora, changed or a regex")
    precondition: bool = knob(True, flag="--sgd", negate=True,
                              help="plain gradient ascent, no Fisher (a baseline); the flag turns preconditioning off")
    num_train: int | None = knob(None, cli=False, help="N in α/N, overriding the training set's size")
    score: str = knob("raw", choices=SCORE_RULES,
                      help="raw loss change (the paper's), relative change (L_after − L_before)/(L_after + "
                           "L_before), change minus that of reference queries, or change divided by the image's "
                           "RMS change under the reference queries (sensitivity)")
    references: int = knob(8, parse=positive_int, help="reference queries of --score calibrated and sensitivity")
    spread: bool = knob(False, help="--score calibrated: also divide by the references' spread")
    curvature: str = knob("diagonal", choices=CURVATURES,
                          help="preconditioner: the diagonal Fisher, the diagonal Fisher damped per layer, or K-FAC "
                               "/ EK-FAC factors of the group's Linear layers")
    curvature_damping: float = knob(0.1, parse=positive_float, help="layer-damped, K-FAC and EK-FAC damping as a "
                                                                     "share of the layer's mean Fisher or eigenvalue")
    cap: bool = knob(False, help="stop each step where the query's loss reaches an untrained model's (MUCS)")
    retain: int = knob(0, parse=count_or_zero,
                       help="descend on this many seeded training rows per step while ascending on the query (MUCS)")

    def __post_init__(self):
        self.step = step_rule(self.step)
        if self.curvature not in CURVATURES:
            raise SettingsError(f"curvature must be one of {CURVATURES}, got {self.curvature!r}")
        if not (isinstance(self.curvature_damping, (int, float)) and self.curvature_damping > 0):
            raise SettingsError(f"curvature_damping must be > 0 (a share of the mean eigenvalue), got "
                                f"{self.curvature_damping!r}")
        if self.score not in SCORE_RULES:
            raise SettingsError(f"score must be one of {SCORE_RULES}, got {self.score!r}")
        if self.score in REFERENCE_RULES and (not isinstance(self.references, int)
                                              or self.references < (2 if self.spread else 1)):
            raise SettingsError(f"the {self.score} score needs references >= {2 if self.spread else 1}, "
                                f"got {self.references!r}")
        check_seed(self.seed, "the unlearning seed (--unlearn-seed)")
        if isinstance(self.retain, bool) or not isinstance(self.retain, int) or self.retain < 0:
            raise SettingsError(f"retain must be a number of training rows >= 0, got {self.retain!r}")
        for name in ("steps", "draws", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SettingsError(f"unlearning {name} must be an integer >= 1, got {value!r}")
        if self.num_train is not None and (not isinstance(self.num_train, int) or self.num_train < 1):
            raise SettingsError(f"num_train must be >= 1 or None, got {self.num_train!r}")

    def as_record(self) -> dict:
        """The fields as JSON-ready values (the step rule as RULE:VALUE text, as the command line writes it)."""
        return {**dataclasses.asdict(self), "step": str(self.step)}
