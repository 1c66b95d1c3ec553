"""Data in and out: staff pages and API. Mounted by webapp/urls.py at the root, before annotate.urls.

Pages: /projects/<id>/import/ (upload prompts), /projects/<id>/export/ (export a snapshot).
API (staff, session or token auth): /api/data/import/, /api/data/projects/<id>/quality/,
/api/data/projects/<id>/snapshots/.
"""

from django.contrib.auth.decorators import login_not_required
from django.urls import path

from annotate import api_data, views_data

app_name = "annotate_data"
urlpatterns = [
    path("projects/<int:project_id>/import/", views_data.import_upload_view, name="import_upload"),
    path("projects/<int:project_id>/export/", views_data.export_view, name="export"),
    path("api/data/import/", login_not_required(api_data.import_view), name="api_import"),
    path(
        "api/data/projects/<int:project_id>/quality/", login_not_required(api_data.quality_view), name="api_quality"
    ),
    path(
        "api/data/projects/<int:project_id>/snapshots/",
        login_not_required(api_data.snapshots_view),
        name="api_snapshots",
    ),
]
