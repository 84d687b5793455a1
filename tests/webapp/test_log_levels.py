"""PARLEY_LOG_LEVELS: one logger's level from the environment, and a clear error for a bad pair."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from webapp.settings import env_log_levels


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
