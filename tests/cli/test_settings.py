"""Every setting is declared once (settings.knob): each field has one role, appears on the command line with the
dataclass's default and its help, and a field that changes the numbers changes the settings key while a speed or
presentation field does not."""
import dataclasses

import pytest

from unlearn_fast.attribution import ReportSettings
from unlearn_fast.cli.main import SAMPLE_FLAGS, _prepare_settings, _report_settings, _unlearn_settings, build_parser
from unlearn_fast.engine.fisher import FisherSettings
from unlearn_fast.engine.loss_grid import LossGrid
from unlearn_fast.engine.unlearn import UnlearnSettings
from unlearn_fast.models.sampling import SamplingSettings
from unlearn_fast.settings import (NUMBERS, ROLES, command_line_fields, default_of, flag_of, role,
                                   settings_key)
from unlearn_fast.training.config import TrainingConfig
from unlearn_fast.workspace import PrepareSettings

SETTINGS = (LossGrid, FisherSettings, PrepareSettings, UnlearnSettings, ReportSettings, TrainingConfig,
            SamplingSettings)
VERB = {TrainingConfig: "train"}  # the verb whose flags a class generates
FLAGS = {SamplingSettings: SAMPLE_FLAGS}  # where `attribute` spells a flag otherwise
REAL_DEFAULTS = {SamplingSettings, TrainingConfig}  # nothing recorded overrides them: argparse holds the real default


def _other_value(cls, f: dataclasses.Field):
    """A valid value of field `f` other than its default."""
    default = default_of(f)
    if hasattr(default, "with_value"):  # a step rule: the same rule at another number (RULE:VALUE on the command line)
        return default.with_value(default.value * 2)
    if dataclasses.is_dataclass(default):
        return dataclasses.replace(default, seed=default.seed + 1)
    if f.metadata.get("choices"):
        return next(c for c in f.metadata["choices"] if c != default)
    if isinstance(default, bool):
        return not default
    if default is None:
        return True if f.metadata.get("parse") is bool else 5
    if isinstance(default, (int, float)):
        return default * 2 + 1
    return {"group": "attention", "fisher_group": "attention", "backend": "reference", "unet_parameters": "kv"}[f.name]


def _option(parser, flag: str, verb: str = "attribute"):
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    return next((a for a in sub.choices[verb]._actions if flag in a.option_strings), None)


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_every_field_has_one_role(cls):
    for f in dataclasses.fields(cls):
        assert role(f) in ROLES, f"{cls.__name__}.{f.name} is declared without a role (settings.knob)"
        assert f.metadata["help"], f"{cls.__name__}.{f.name} has no help"


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_every_command_line_field_appears_with_its_default_and_help(cls):
    parser = build_parser()
    for f in command_line_fields(cls):
        flag = FLAGS.get(cls, {}).get(f.name, flag_of(f))
        action = _option(parser, flag, VERB.get(cls, "attribute"))
        assert action is not None, f"{cls.__name__}.{f.name}: no {flag} on `{VERB.get(cls, 'attribute')}`"
        # None: "not given", the recipe, the work directory or the dataclass decides
        assert action.default == (default_of(f) if cls in REAL_DEFAULTS else None)
        assert f.metadata["help"] in action.help
        default = default_of(f)
        shown = not default if f.metadata.get("negate") else default
        shown = {True: "on", False: "off", None: "none"}.get(shown, shown) if isinstance(shown, (bool, type(None))) \
            else shown
        assert f"(default {shown}" in action.help, (f.name, action.help)


def test_every_flag_takes_the_underscore_spelling_diffusers_scripts_use(tmp_path):
    parser = build_parser()
    base = ["attribute", "--work-dir", str(tmp_path), "--prompt", "x"]
    dashed = parser.parse_args(base + ["--unlearn-steps", "3", "--caption-column", "c", "--fisher-examples=7"])
    underscored = parser.parse_args(base + ["--unlearn_steps", "3", "--caption_column", "c", "--fisher_examples=7"])
    assert vars(dashed) == vars(underscored) and dashed.unlearn_steps == 3 and dashed.fisher_examples == 7


def test_no_flags_give_the_dataclasses_defaults_and_each_flag_sets_exactly_its_field(tmp_path):
    parser = build_parser()
    base = ["attribute", "--work-dir", str(tmp_path / "new"), "--prompt", "x"]
    args = parser.parse_args(base)
    assert _unlearn_settings(args) == UnlearnSettings()  # the Python API's default is the command line's
    assert _prepare_settings(args) == PrepareSettings()
    assert _report_settings(args) == ReportSettings()
    for cls, build, attribute in ((UnlearnSettings, _unlearn_settings, None), (LossGrid, _prepare_settings, "scoring"),
                                  (FisherSettings, _prepare_settings, "fisher"),
                                  (PrepareSettings, _prepare_settings, None), (ReportSettings, _report_settings, None)):
        for f in command_line_fields(cls):
            value = _other_value(cls, f)
            if f.metadata.get("negate"):
                options = [flag_of(f)]
            elif isinstance(value, bool):
                options = [flag_of(f) if value else "--no-" + flag_of(f)[2:]]
            else:
                options = [flag_of(f), str(value)]
            built = build(parser.parse_args(base + options))
            built = getattr(built, attribute) if attribute else built
            expected = dataclasses.replace(cls(), **{f.name: value})
            if cls is FisherSettings and f.name == "seed":
                continue
            assert built == expected, (f.name, options)


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_a_numbers_field_changes_the_settings_key_and_no_other_does(cls):
    default = cls()
    for f in dataclasses.fields(cls):
        changed = dataclasses.replace(default, **{f.name: _other_value(cls, f)})
        differs = settings_key(changed) != settings_key(default)
        assert differs == (role(f) == NUMBERS), f"{cls.__name__}.{f.name} ({role(f)})"


def test_a_folder_prepared_with_the_other_noise_key_says_what_to_do(tmp_path, default_image_folder):
    """A work directory made with per-example noise (the paper's recipe, or the Python API before its default became
    the command line's) meets the default recipe: one line naming the folder, both keys and the flags that use it as
    it is; with those flags, or with --overwrite, the command goes on."""
    from unlearn_fast.cli import main
    from unlearn_fast.errors import SettingsError

    work = str(tmp_path / "work")
    main(["prepare", "--data", default_image_folder(range(360, 384)), "--work-dir", work, "--noise", "example",
          "--timesteps", "2", "--no-flips", "--quiet"])
    parser = build_parser()
    with pytest.raises(SettingsError, match=r"prepared with scoring noise 'example', the default recipe scores with "
                                            r"'shared': give --noise example \(or --recipe paper\)"):
        _prepare_settings(parser.parse_args(["attribute", "--work-dir", work, "--prompt", "x"]))
    for options in (["--noise", "example"], ["--recipe", "paper"]):
        assert _prepare_settings(parser.parse_args(["attribute", "--work-dir", work, "--prompt", "x", *options])
                                 ).scoring.noise == "example"
    overwrite = parser.parse_args(["attribute", "--work-dir", work, "--prompt", "x", "--overwrite"])
    assert _prepare_settings(overwrite).scoring.noise == "shared"
