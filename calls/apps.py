"""App config for calls."""

from django.apps import AppConfig
from django.conf import settings


class CallsConfig(AppConfig):
    name = "calls"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from webapp.logging import loguru_forward

        loguru_forward(settings.PIPECAT_LOG_LEVEL)

        from calls.agents.hooks import hooks_load

        hooks_load()

        import calls.review.recordings  # noqa: F401 (a deleted recording's file goes with it)
