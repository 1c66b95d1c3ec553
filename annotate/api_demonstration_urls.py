"""REST API for demonstrations, mounted at /api/ (see annotate.api_demonstrations). Exempt from the login
redirect: DRF authenticates (session or token) and answers 401/403 itself."""

from django.contrib.auth.decorators import login_not_required
from django.urls import path

from annotate import api_demonstrations as api

urlpatterns = [
    path("demonstrations/next/", login_not_required(api.next_demonstration), name="api-demonstration-next"),
    path("demonstrations/<int:demonstration_id>/", login_not_required(api.demonstration_detail),
         name="api-demonstration"),
    path("demonstrations/<int:demonstration_id>/draft/", login_not_required(api.demonstration_draft),
         name="api-demonstration-draft"),
    path("demonstrations/<int:demonstration_id>/submit/", login_not_required(api.demonstration_submit),
         name="api-demonstration-submit"),
    path("demonstrations/<int:demonstration_id>/skip/", login_not_required(api.demonstration_skip),
         name="api-demonstration-skip"),
    path("demonstrations/<int:demonstration_id>/review/", login_not_required(api.demonstration_review),
         name="api-demonstration-review"),
    path("projects/<int:project_id>/demonstrations/", login_not_required(api.project_demonstrations),
         name="api-project-demonstrations"),
    path("projects/<int:project_id>/demonstrations/import/", login_not_required(api.project_demonstrations_import),
         name="api-project-demonstrations-import"),
]
