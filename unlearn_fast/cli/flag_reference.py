"""docs/flags.md, generated from the command's own parser: every flag of every verb with its real default and help, so
the reference can never disagree with the command (tests/cli/test_docs.py regenerates it and compares).

    python3 -m unlearn_fast.cli.flag_reference > docs/flags.md
"""
from __future__ import annotations

import argparse

from .main import build_parser

HEADER = """# Every flag of every command

Generated from the command's parser by `python3 -m unlearn_fast.cli.flag_reference > docs/flags.md` (a test checks
it is current). Each flag is also accepted with underscores (`--caption_column`), as diffusers' training scripts
spell them. A default marked "the work directory's" is read from the work directory when the flag is not given.
"""


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """{verb: (its parser, its one-line help)}."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}
    return {}


def _help(action: argparse.Action) -> str:
    text = " ".join((action.help or "").split())
    try:
        text = text % {"default": action.default, "prog": "", "choices": action.choices}
    except (KeyError, TypeError, ValueError):
        text = text.replace("%%", "%")
    return text.replace("|", "\\|")


def _default(action: argparse.Action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or any(
            action.default is nothing for nothing in (None, argparse.SUPPRESS, False)):
        return ""
    if isinstance(action, argparse.BooleanOptionalAction):
        return "on" if action.default else "off"
    value = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else str(action.default)
    return f"`{value}`"


def _table(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| flag | default | what it does |", "|---|---|---|"]
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction, argparse._SubParsersAction,
                                                                   argparse._VersionAction)):
            continue
        names = [name for name in action.option_strings if name.startswith("--")] or [action.dest]
        shown = ", ".join(f"`{name}`" for name in names)
        if action.choices and not isinstance(action.choices, dict):
            shown += " {" + ", ".join(map(str, action.choices)) + "}"
        rows.append(f"| {shown} | {_default(action)} | {_help(action)} |")
    return rows


def flag_reference() -> str:
    lines = [HEADER]
    top = build_parser()
    for verb, (parser, summary) in _subparsers(top).items():
        nested = _subparsers(parser)
        for name, (sub, text) in ({f"{verb} {k}": v for k, v in nested.items()} if nested
                                  else {verb: (parser, summary)}).items():
            lines += [f"## `unlearn-fast {name}`", "", text[:1].upper() + text[1:] + ".", ""] + _table(sub) + [""]
    return "\n".join(line for line in lines).rstrip() + "\n"


if __name__ == "__main__":
    print(flag_reference(), end="")
