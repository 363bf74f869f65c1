"""The training recipe is declared once: the `train` command's flags, a TrainRequest and every retraining job start
from TrainingConfig's defaults (they once said 4,000 and 6,000 diffusion steps, 1,500 and 2,000 VAE steps)."""
import dataclasses

import pytest

import unlearn_fast.training.run as training_run
from unlearn_fast.cli import main
from unlearn_fast.cli.main import build_parser
from unlearn_fast.settings import command_line_fields, default_of, dest_of, flag_of
from unlearn_fast.training.config import TrainingConfig
from unlearn_fast.training.run import TrainRequest


def _train_options(parser):
    """{dest: action} of the `train` verb."""
    verbs = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    return {action.dest: action for action in verbs.choices["train"]._actions}


def test_the_train_parser_s_defaults_are_the_config_s_defaults():
    options = _train_options(build_parser("train"))
    parsed = build_parser("train").parse_args(["train", "--out", "m"])
    for f in command_line_fields(TrainingConfig):
        action = options.get(dest_of(f))
        assert action is not None and flag_of(f) in action.option_strings, f.name
        assert action.default == default_of(f), f.name
        assert getattr(parsed, dest_of(f)) == default_of(f), f.name  # what `train` with no flags trains with
    assert {f.name for f in command_line_fields(TrainingConfig)} >= {"steps", "vae_steps", "batch_size", "lr", "seed"}


def test_the_train_help_shows_the_real_default_steps():
    steps = _train_options(build_parser("train"))["steps"]
    assert f"(default {default_of(TrainingConfig.__dataclass_fields__['steps'])})" in steps.help


def test_a_request_s_numbers_are_the_config_s():
    """A TrainRequest is a TrainingConfig (its numbers are declared there, once) plus where from and where to."""
    request = TrainRequest()
    for f in dataclasses.fields(TrainingConfig):
        assert getattr(request, f.name) == default_of(f), f.name
    assert request.training_config() == TrainingConfig()


def test_a_run_s_trainer_config_follows_the_adapter_and_the_added_tokens():
    config = TrainRequest(lora_rank=4, add_tokens=["<v1>", "<v2>"], train_text_encoder=False, steps=9).training_config()
    assert (config.unet_parameters, config.new_token_rows, config.steps) == ("lora", 2, 9)
    assert TrainRequest(add_tokens=["<v1>"]).training_config().new_token_rows == 0  # the whole encoder trains


@pytest.mark.parametrize("flags, expected", [
    ([], {}),
    (["--steps", "7", "--vae_steps", "3", "--freeze-text-encoder", "--lr", "0.5"],
     {"steps": 7, "vae_steps": 3, "train_text_encoder": False, "lr": 0.5}),
])
def test_train_asks_for_the_defaults_and_each_flag_given(tmp_path, monkeypatch, flags, expected):
    asked = []
    monkeypatch.setattr(training_run, "run_training", lambda request, quiet=False: asked.append(request) or {})
    main(["train", "--out", str(tmp_path / "m"), "--quiet", *flags])
    numbers = {f.name: getattr(asked[0], f.name) for f in dataclasses.fields(TrainingConfig)}
    assert numbers == dataclasses.asdict(TrainingConfig()) | expected
