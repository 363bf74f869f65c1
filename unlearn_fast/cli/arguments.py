"""Command-line arguments shared by the verbs: one-line errors, checked number types, --device and the speed options."""
from __future__ import annotations

import argparse
import math


class Parser(argparse.ArgumentParser):
    """argparse, with a bad option reported as one line naming it (not the verb's whole usage text)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _number(kind, minimum, what: str):
    """An argparse type: `kind` (int or float), finite, >= minimum; the message names the bound."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (kind is float and not math.isfinite(value)) or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


positive_int = _number(int, 1, "an integer >= 1")
count_or_zero = _number(int, 0, "an integer >= 0")
non_negative_float = _number(float, 0.0, "a finite number >= 0")
finite_float = _number(float, -math.inf, "a finite number")  # any sign (a guidance scale); nan and inf refused


def seed(text: str) -> int:
    """A noise seed: an integer in [0, 2**63), refused at parse time (before any work or any manifest is written)."""
    value = count_or_zero(text)
    if value >= 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = non_negative_float(text)
    except argparse.ArgumentTypeError:
        value = 0.0
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def candidate_spec(text: str) -> str:
    """--candidates: "auto", "exact", a count ("2000") or a share ("10%"); checked here, resolved against N later."""
    if text.strip().lower() in ("auto", "exact"):
        return text.strip().lower()
    from ..errors import SettingsError
    from ..methods.abu_two_stage import parse_candidates

    try:
        parse_candidates(text)
    except SettingsError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU when torch sees one, else the CPU), cpu, "
                        "cuda or cuda:N")


def speed_arguments(parser: argparse.ArgumentParser) -> None:
    """How the scoring pass runs the UNet (unet_forward.ForwardPlan): speed only, never the scores' meaning."""
    from ..engine.unet_forward import COMPILE_MODES

    parser.add_argument("--compile", choices=COMPILE_MODES, default="none", help="torch.compile the UNet for the "
                        "scoring passes (reduce-overhead: CUDA graphs); pays a one-off compile per process")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="NHWC UNet activations (default: on for CUDA, off for CPU)")
