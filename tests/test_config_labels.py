from pathlib import Path

import pytest

from webapp.config import Settings
from webapp.vision.labels import LABELS, canonical_label


@pytest.mark.parametrize("name, expected", [
    ("with_mask", "with_mask"), ("without_mask", "without_mask"), ("mask_incorrect", "mask_incorrect"),
    ("mask_weared_incorrect", "mask_incorrect"), ("con_mascarilla", "with_mask"),
    ("mascarilla_mal_puesta", "mask_incorrect"), ("Mask_Weared_Incorrect ", "mask_incorrect"),
    ("with-mask", "with_mask"), ("helmet", None), ("", None),
])
def test_canonical_label(name, expected):
    assert canonical_label(name) == expected


def test_label_order_is_the_contract():
    assert LABELS == ("with_mask", "mask_incorrect", "without_mask")


def test_settings_env_then_overrides(tmp_path):
    env = {"MASKWATCH_DATA": str(tmp_path), "MASKWATCH_CLASSIFIER_THREADS": "2"}
    s = Settings.load(environ=env)
    assert s.data_dir == tmp_path and s.classifier_threads == 2
    s = Settings.load({"classifier_threads": 3, "data_dir": None}, environ=env)
    assert s.classifier_threads == 3 and s.data_dir == tmp_path
    assert Settings.load(environ={}).model_dir == Path(__file__).resolve().parent.parent / "model"


@pytest.mark.parametrize("env", [{"MASKWATCH_ALERTS": "loud"}, {"MASKWATCH_ASYNC_MODE": "asyncio"},
                                 {"MASKWATCH_PORT": "70000"}, {"MASKWATCH_THOROUGH_EVERY_S": "-1"}])
def test_settings_reject_values_out_of_range(env):
    with pytest.raises(ValueError, match="setting"):
        Settings.load(environ=env)


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="integer"):
        Settings.load(environ={"MASKWATCH_CLASSIFIER_THREADS": "two"})
    with pytest.raises(ValueError, match="unknown setting"):
        Settings.load({"colour": "red"}, environ={})


@pytest.mark.parametrize("word, expected", [("1", True), ("Yes", True), ("on", True), ("false", False),
                                            ("0", False), ("OFF", False)])
def test_boolean_settings_read_the_usual_words(word, expected):
    assert Settings.load(environ={"MASKWATCH_NO_AUTH": word}).no_auth is expected


@pytest.mark.parametrize("env, message", [({"MASKWATCH_NO_AUTH": "ture"}, "no_auth must be one of"),
                                          ({"MASKWATCH_COUNTS_INTERVAL": "fast"}, "must be a number"),
                                          ({"MASKWATCH_PORT": "5000.5"}, "must be an integer")])
def test_typos_are_refused_not_read_as_false(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.load(environ=env)


def test_typed_values_pass_through():
    s = Settings.load({"no_auth": True, "counts_interval": 1, "history_path": "~/h.db"}, environ={})
    assert s.no_auth is True and s.counts_interval == 1.0 and s.history_path == Path("~/h.db").expanduser()
