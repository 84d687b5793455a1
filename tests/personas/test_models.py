"""The persona model's own checks (`Persona.clean`), beyond the field types."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError


def test_an_idle_warning_not_shorter_than_the_idle_timeout_is_refused(persona_a):
    persona_a.idle_timeout_seconds = 30
    persona_a.idle_warning_seconds = 30
    with pytest.raises(ValidationError) as refused:
        persona_a.full_clean()
    assert "idle_warning_seconds" in refused.value.message_dict


@pytest.mark.parametrize(("idle_timeout", "idle_warning"), [(60, 15), (60, 0), (0, 15)])
def test_a_shorter_warning_no_warning_or_no_idle_timeout_is_accepted(persona_a, idle_timeout, idle_warning):
    persona_a.idle_timeout_seconds = idle_timeout
    persona_a.idle_warning_seconds = idle_warning
    persona_a.full_clean()
