"""The setup record of an evaluation's output folder (setup.json): another setup is refused, the free fields are not,
and an older record either loads or stops the run with one line that says what to do."""
import dataclasses
import json

import pytest

from unlearn_fast.errors import SettingsError
from unlearn_fast.evaluate.counterfactual import CounterfactualSetup
from unlearn_fast.evaluate.setup_record import SETUP_RECORD, record_setup


def recorded(out_dir) -> dict:
    return json.loads((out_dir / SETUP_RECORD).read_text())


def one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_the_same_setup_is_accepted_and_free_fields_take_their_new_value(tmp_path):
    record_setup(CounterfactualSetup(methods=("abu",)), tmp_path)
    record_setup(CounterfactualSetup(methods=("abu",)), tmp_path)
    record_setup(CounterfactualSetup(methods=("abu", "pixel")), tmp_path)
    assert recorded(tmp_path)["methods"] == ["abu", "pixel"]
    assert recorded(tmp_path) == json.loads(json.dumps(dataclasses.asdict(CounterfactualSetup(methods=("abu",
                                                                                                     "pixel")))))
    assert sorted(p.name for p in tmp_path.iterdir()) == [SETUP_RECORD]  # no lock, temp file or sidecar left


def test_another_setup_is_refused_naming_each_setting_and_both_values(tmp_path):
    record_setup(CounterfactualSetup(steps=300), tmp_path)
    before = (tmp_path / SETUP_RECORD).read_bytes()
    with pytest.raises(SettingsError) as error:
        record_setup(CounterfactualSetup(steps=100, lr=0.01), tmp_path)
    assert "made with other settings (steps: was 300, now 100; lr: was 0.001, now 0.01); use another folder" \
        in one_line(error)
    assert (tmp_path / SETUP_RECORD).read_bytes() == before


def test_a_record_from_before_runs_named_a_device_loads_as_a_cpu_folder(tmp_path):
    old = json.loads(json.dumps(dataclasses.asdict(CounterfactualSetup())))
    del old["device"]
    (tmp_path / SETUP_RECORD).write_text(json.dumps(old, indent=1))
    record_setup(CounterfactualSetup(), tmp_path)
    assert recorded(tmp_path)["device"] == "cpu"  # the record now says it
    (tmp_path / SETUP_RECORD).write_text(json.dumps(old, indent=1))
    with pytest.raises(SettingsError) as error:
        record_setup(CounterfactualSetup(device="cuda"), tmp_path)
    assert "device: was 'cpu', now 'cuda'" in one_line(error)


def test_a_record_without_a_field_of_todays_setups_names_it_and_says_what_to_do(tmp_path):
    old = json.loads(json.dumps(dataclasses.asdict(CounterfactualSetup())))
    del old["loss_timesteps"], old["guidance"], old["methods"]  # methods is free: never asked for
    (tmp_path / SETUP_RECORD).write_text(json.dumps(old, indent=1))
    with pytest.raises(SettingsError) as error:
        record_setup(CounterfactualSetup(), tmp_path)
    text = one_line(error)
    assert "does not record guidance, loss_timesteps (written by an earlier version of unlearn_fast)" in text
    assert "use another output folder, or add the values this folder was made with to setup.json" in text


@pytest.mark.parametrize("content, says", [('{"steps": 300, "lr"', "not valid JSON"),
                                           ("[300, 0.001]", "a JSON list, not an object")])
def test_an_unreadable_record_is_named_with_what_to_do(tmp_path, content, says):
    (tmp_path / SETUP_RECORD).write_text(content)
    with pytest.raises(SettingsError) as error:
        record_setup(CounterfactualSetup(), tmp_path)
    text = one_line(error)
    assert str(tmp_path / SETUP_RECORD) in text and says in text and "use another output folder" in text
    assert (tmp_path / SETUP_RECORD).read_text() == content
