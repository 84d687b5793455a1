"""A live session's face: the persona's uploaded portrait reaches the video track's configuration."""

from __future__ import annotations

import pytest

from calls.live import _build_config

pytestmark = pytest.mark.django_db


def test_the_session_config_carries_the_portrait_file_path(persona_a, make_call, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    assert _build_config(make_call(persona_a)).avatar_portrait == ""

    persona_a.avatar_portrait.name = "portraits/mara.png"
    persona_a.save()
    config = _build_config(make_call(persona_a))
    assert config.avatar_portrait == str(tmp_path / "portraits" / "mara.png")
