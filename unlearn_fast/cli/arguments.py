"""Command-line arguments shared by the verbs: one-line errors, checked number types, --device and the speed options."""
from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """argparse, with a bad option reported as one line naming it (not the verb's whole usage text), and every flag
    also accepted with underscores (--caption_column), as diffusers' training scripts spell them."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([self._dashed(arg) for arg in args], namespace)

    def _dashed(self, arg: str) -> str:
        """--some_flag[=value] → --some-flag[=value] when that is one of this parser's flags."""
        if not arg.startswith("--") or "_" not in arg.partition("=")[0]:
            return arg
        name, equals, value = arg.partition("=")
        dashed = "--" + name[2:].replace("_", "-")
        return dashed + equals + value if dashed in self._option_string_actions else arg


class RetiredFlag(argparse.Action):
    """A flag that no longer exists: one line naming what replaced it (argparse alone would only say 'unrecognized')."""

    def __init__(self, option_strings, dest, replacement: str, **kwargs):
        super().__init__(option_strings, dest, nargs="?", **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is gone: give {self.replacement}")


# The checked number types are declared with the settings (settings.py); the verbs import them from here too.
from ..settings import count_or_zero, finite_float, non_negative_float, positive_float, positive_int, seed

__all__ = ["Parser", "RetiredFlag", "candidate_spec", "count_or_zero", "device_argument", "finite_float",
           "non_negative_float", "positive_float", "positive_int", "seed", "model_config_argument", "variant_argument"]


def candidate_spec(text: str) -> str:
    """--candidates: "auto", "exact", a count ("2000") or a share ("10%"); checked here, resolved against N later."""
    if text.strip().lower() in ("auto", "exact"):
        return text.strip().lower()
    from ..errors import SettingsError
    from ..methods.abu.two_stage import parse_candidates

    try:
        parse_candidates(text)
    except SettingsError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU when torch sees one, else the CPU), cpu, "
                        "cuda or cuda:N")


def variant_name(text: str) -> str:
    """--variant: a name that sits in a file name (<name>.fp16.safetensors), never a path."""
    if not text or not all(c.isalnum() or c in "_-" for c in text):
        raise argparse.ArgumentTypeError(f"expected a weight variant such as fp16 (letters, digits, - and _), got "
                                         f"{text!r}")
    return text


def variant_argument(parser: argparse.ArgumentParser, default_note: str = "") -> None:
    parser.add_argument("--variant", type=variant_name, help="the model folder's weight variant: read the files "
                        "diffusers' save_pretrained(..., variant=VARIANT) wrote (<name>.fp16.safetensors for fp16), "
                        "computed in float32 as any other folder" + (default_note or "; default: the plain files"))


def model_config_argument(parser: argparse.ArgumentParser, default_note: str = "") -> None:
    parser.add_argument("--model-config", metavar="FOLDER", help="with --model FILE.safetensors (a Stable Diffusion "
                        "1.x/2.x single-file checkpoint in the original layout): a local diffusers pipeline folder "
                        "whose configs, tokenizer and scheduler describe it (e.g. the same model's folder, weights or "
                        "not); read through diffusers' from_single_file, never downloaded" + default_note)
