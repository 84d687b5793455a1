"""Settings from the environment: PARLEY_LOG_LEVELS (one logger's level) and numbers within bounds,
with a clear error naming the setting for a bad value."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from webapp.settings import env_int_within, env_log_levels


def test_pairs_give_each_logger_its_level(monkeypatch):
    monkeypatch.setenv("PARLEY_LOG_LEVELS", "calls.pipeline.turns=debug, calls.agents=INFO")
    assert env_log_levels("PARLEY_LOG_LEVELS") == {"calls.pipeline.turns": "DEBUG", "calls.agents": "INFO"}


def test_unset_gives_none(monkeypatch):
    monkeypatch.delenv("PARLEY_LOG_LEVELS", raising=False)
    assert env_log_levels("PARLEY_LOG_LEVELS") == {}


@pytest.mark.parametrize("value", ["calls.pipeline.turns", "calls=LOUD", "=DEBUG"])
def test_a_bad_pair_names_the_setting_and_the_pair(monkeypatch, value):
    monkeypatch.setenv("PARLEY_LOG_LEVELS", value)
    with pytest.raises(ImproperlyConfigured, match=r"PARLEY_LOG_LEVELS takes logger=LEVEL pairs.*got"):
        env_log_levels("PARLEY_LOG_LEVELS")


@pytest.mark.parametrize("value", ["-1", "20", "five"])
def test_a_number_out_of_its_bounds_names_the_setting(monkeypatch, value):
    monkeypatch.setenv("PARLEY_WHISPER_NICENESS", value)
    with pytest.raises(ImproperlyConfigured, match=r"PARLEY_WHISPER_NICENESS must be"):
        env_int_within("PARLEY_WHISPER_NICENESS", 5, 0, 19)


def test_a_number_within_its_bounds_or_unset_is_taken(monkeypatch):
    monkeypatch.setenv("PARLEY_WHISPER_NICENESS", "19")
    assert env_int_within("PARLEY_WHISPER_NICENESS", 5, 0, 19) == 19
    monkeypatch.delenv("PARLEY_WHISPER_NICENESS")
    assert env_int_within("PARLEY_WHISPER_NICENESS", 5, 0, 19) == 5
