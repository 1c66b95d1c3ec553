"""System checks for running in production (`manage.py check --deploy`)."""

from pathlib import Path

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.staticfiles, deploy=True)
def static_files_collected(app_configs, **kwargs):
    """With the manifest storage (DJANGO_DEBUG=0) every page names its CSS and JS through STATIC_ROOT's
    manifest; without `collectstatic` each page would be a 500 ("Missing staticfiles manifest entry")."""
    backend = settings.STORAGES.get("staticfiles", {}).get("BACKEND", "")
    if "Manifest" not in backend:
        return []
    manifest = Path(settings.STATIC_ROOT) / "staticfiles.json"
    if manifest.is_file():
        return []
    return [
        Error(
            f"No static files manifest at {manifest}: every page would answer 500.",
            hint="Run `python manage.py collectstatic --noinput` (`make serve` does), or point DJANGO_STATIC_ROOT "
            "at the folder it wrote.",
            id="webapp.E001",
        )
    ]
