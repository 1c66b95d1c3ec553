from django.apps import AppConfig


class WebappConfig(AppConfig):
    """The project itself, as an app only to register its system checks (webapp/checks.py)."""

    name = "webapp"
    verbose_name = "Web application"

    def ready(self) -> None:
        from webapp import checks  # noqa: F401  (registers the checks)
