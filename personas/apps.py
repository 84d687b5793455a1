"""App config for personas."""

from django.apps import AppConfig


class PersonasConfig(AppConfig):
    name = "personas"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from personas import schema  # noqa: F401  (registers the OpenAPI auth extension)
