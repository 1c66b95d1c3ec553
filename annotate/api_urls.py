"""REST API of the annotate app, mounted at /api/. Views are exempt from the login redirect: DRF authenticates
(session or token) and answers 401/403 itself."""

from django.contrib.auth.decorators import login_not_required
from django.urls import path

from annotate import api

urlpatterns = [
    path("tasks/next/", login_not_required(api.next_task), name="api-task-next"),
    path("tasks/<int:assignment_id>/", login_not_required(api.task_detail), name="api-task"),
    path("tasks/<int:assignment_id>/draft/", login_not_required(api.task_draft), name="api-task-draft"),
    path("tasks/<int:assignment_id>/submit/", login_not_required(api.task_submit), name="api-task-submit"),
    path("tasks/<int:assignment_id>/skip/", login_not_required(api.task_skip), name="api-task-skip"),
    path("projects/", login_not_required(api.ProjectList.as_view()), name="api-projects"),
    path("projects/<int:project_id>/progress/", login_not_required(api.project_progress_view),
         name="api-project-progress"),
    path("projects/<int:project_id>/prompts/", login_not_required(api.PromptList.as_view()), name="api-prompts"),
    path("rankings/", login_not_required(api.RankingList.as_view()), name="api-rankings"),
]
