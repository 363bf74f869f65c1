"""Every knob declared once: a dataclass field whose metadata holds its help text and its role (kronfluence's
arguments.py does the same). The settings key a work directory or a query folder is bound to, and the command line's
flags, are computed from those declarations, so a new setting is written in one place.

Roles:
    numbers       changes the numbers: part of every settings key, recorded in manifests
    speed         speed or memory only (batch sizes, backends, compilation): never in a key
    presentation  what is shown or written, not computed: never in a key

The dataclasses' defaults are the package's default: what `unlearn-fast attribute` does with no flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import MISSING, field

NUMBERS, SPEED, PRESENTATION = "numbers", "speed", "presentation"
ROLES = (NUMBERS, SPEED, PRESENTATION)

# Settings added after work directories existed, left out of keys at the value that reproduces the older numbers, so
# those folders (and their query folders) stay valid.
IMPLICIT = {"noise": "example", "step": "alpha/N", "curvature": "diagonal", "curvature_damping": 0.1, "cap": False,
            "retain": 0, "resolution": None}


# ------------------------------------------------------------------ checked value types (the command line's parsers)

def _number(kind, minimum, what: str):
    """A parser: `kind` (int or float), finite, >= minimum; the message names the bound."""
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


# ------------------------------------------------------------------------------------------------ the declaration

def knob(default=MISSING, *, help: str, role: str = NUMBERS, flag: str | None = None, parse=None, choices=None,
         negate: bool = False, cli: bool = True, default_factory=MISSING):
    """A settings field. help: one line for --help (the real default is appended there). role: ROLES. flag: its
    command-line name (default --field-name; the command line also takes --field_name, as diffusers' scripts spell it). parse:
    the command line's checked type (default: the default's type). negate: a True default that the flag turns off
    (--sgd for precondition). cli: False for fields only the Python API sets."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    metadata = {"help": help, "role": role, "flag": flag, "parse": parse, "choices": choices, "negate": negate,
                "cli": cli}
    return field(default=default, default_factory=default_factory, metadata=metadata)


def role(settings_field: dataclasses.Field) -> str | None:
    """The field's declared role, or None for a field declared without knob()."""
    return settings_field.metadata.get("role")


def settings_key(settings, leave_out=()) -> dict:
    """The fields of a settings dataclass that change the numbers (role "numbers"): what keys and manifests record.
    Fields at their IMPLICIT value are left out (so keys made before the field existed stay valid). A value with
    key_items() (a step rule) is recorded as those items."""
    items = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if role(f) != NUMBERS or f.name in leave_out:
            continue
        if hasattr(value, "key_items"):  # a typed value recorded as plain items (a step rule: its rule and number)
            items.update(value.key_items())
        else:
            items[f.name] = settings_key(value) if dataclasses.is_dataclass(value) else value
    return {name: value for name, value in items.items() if not (name in IMPLICIT and value == IMPLICIT[name])}


def flag_of(settings_field: dataclasses.Field) -> str:
    return settings_field.metadata.get("flag") or "--" + settings_field.name.replace("_", "-")


def default_of(settings_field: dataclasses.Field):
    if settings_field.default is not MISSING:
        return settings_field.default
    return settings_field.default_factory()


def _argument_type(default):
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


def _shown(value) -> str:
    return "on" if value is True else "off" if value is False else "none" if value is None else f"{value}"


def command_line_fields(cls, only=None) -> list[dataclasses.Field]:
    """The fields of `cls` the command line sets (all of them, or those named in `only`)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli") and (only is None or f.name in only)]


def dest_of(settings_field: dataclasses.Field, flags: dict | None = None) -> str:
    return (flags or {}).get(settings_field.name, flag_of(settings_field))[2:].replace("-", "_")


def add_arguments(parser, cls, only=None, notes: dict | None = None, flags: dict | None = None,
                  real_defaults: bool = False) -> None:
    """One flag per command-line field of dataclass `cls` (or of the names in `only`), with the field's help,
    `notes[name]` (e.g. what a recipe changes) and the field's real default. Each defaults to None, so that a command
    can tell "not given" from a value (a work directory's or a recipe's value then applies), or with `real_defaults`
    to the field's default. flags: {field name: flag} where a verb spells one otherwise (given() takes the same)."""
    for f in command_line_fields(cls, only):
        flag, default = (flags or {}).get(f.name, flag_of(f)), default_of(f)
        note = f"; {notes[f.name]}" if notes and f.name in notes else ""
        shown = not default if f.metadata.get("negate") else default  # what the flag's own sense is by default
        help_text = f"{f.metadata['help']} (default {_shown(shown)}{note})"
        options = {"dest": dest_of(f, flags), "default": default if real_defaults else None, "help": help_text}
        if f.metadata.get("negate"):
            parser.add_argument(flag, action="store_false", **options)
        elif isinstance(default, bool) or f.metadata.get("parse") is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        else:
            parser.add_argument(flag, type=f.metadata.get("parse") or _argument_type(default),
                                choices=f.metadata.get("choices"), **options)


def given(args: argparse.Namespace, cls, only=None, flags: dict | None = None) -> dict:
    """{field name: value} of `cls`'s command-line fields that the command line gave (add_arguments' flags)."""
    return {f.name: getattr(args, dest_of(f, flags)) for f in command_line_fields(cls, only)
            if getattr(args, dest_of(f, flags), None) is not None}
