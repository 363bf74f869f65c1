"""Every multi-word long option of every verb (evaluate's kinds included) is also accepted with underscores, as
diffusers' training scripts spell them (--caption_column), and parses to the same value: the hand-written flags as
well as those generated from the settings dataclasses."""
import argparse

import pytest

from unlearn_fast.cli.main import build_parser

SKIPPED = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def _subparsers(parser):
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _value(action) -> list[str]:
    """A value the option's type and choices accept (every checked type here takes "1"), as many as it needs."""
    if action.nargs == 0:
        return []
    one = str(action.choices[0]) if action.choices else "1"
    return [one] * (action.nargs if isinstance(action.nargs, int) else 1)


def _required(parser) -> list[str]:
    """Arguments that satisfy the parser's required options, positionals and subcommand (its first)."""
    argv = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name, child = next(iter(action.choices.items()))
            argv += [name, *_required(child)]
        elif not action.option_strings:
            argv += _value(action)
        elif action.required:
            argv += [action.option_strings[0], *_value(action)]
    return argv


def _parsers(parser, path=()):
    """(the words that select it, parser) for the command and every (nested) verb."""
    yield path, parser
    sub = _subparsers(parser)
    if sub is not None:
        for name, child in sub.choices.items():
            yield from _parsers(child, (*path, name))


def _cases():
    top = build_parser()
    for path, parser in _parsers(top):
        required = _required(parser) if path else []
        for action in parser._actions:
            if isinstance(action, SKIPPED) or action.help == argparse.SUPPRESS:
                continue
            for option in action.option_strings:
                name = option[2:]
                if option.startswith("--") and ("-" in name or "_" in name):
                    yield " ".join(path) or "unlearn-fast", path, required, action, option


CASES = list(_cases())


def test_the_walk_finds_the_hand_written_and_the_generated_flags_of_every_verb():
    verbs = {case[0] for case in CASES}
    assert {"train", "prepare", "attribute", "report", "demo", "grid", "evaluate lds", "evaluate groundtruth"} <= verbs
    options = {(case[0], case[4]) for case in CASES}
    assert ("attribute", "--caption-column") in options and ("train", "--init-from") in options
    assert ("prepare", "--chunk-rows") in options and ("attribute", "--sample-steps") in options


@pytest.mark.parametrize("verb,path,required,action,option", CASES, ids=[f"{c[0]} {c[4]}" for c in CASES])
def test_every_multi_word_option_has_its_underscore_spelling(verb, path, required, action, option):
    assert "_" not in option, f"{verb} {option}: declare flags with dashes (the underscore spelling is the alias)"
    value = _value(action)
    underscored = "--" + option[2:].replace("-", "_")
    parser = build_parser()
    dashed_args = parser.parse_args([*path, *required, option, *value])
    underscore_args = parser.parse_args([*path, *required, underscored, *value])
    assert getattr(underscore_args, action.dest) == getattr(dashed_args, action.dest)
    assert vars(underscore_args) == vars(dashed_args)
    if value:  # --flag_name=value too
        assert vars(parser.parse_args([*path, *required, f"{underscored}={value[0]}", *value[1:]])) == vars(dashed_args)
