"""REST API of the training app, mounted at /api/. Views are exempt from the login redirect: DRF authenticates
(session or token) and answers 401/403 itself; every endpoint is staff only."""

from django.contrib.auth.decorators import login_not_required
from django.urls import path

from training import api

urlpatterns = [
    path("runs/", login_not_required(api.RunList.as_view()), name="api-runs"),
    path("runs/sft/", login_not_required(api.launch_sft), name="api-launch-sft"),
    path("runs/rm/", login_not_required(api.launch_rm), name="api-launch-rm"),
    path("runs/ppo/", login_not_required(api.launch_ppo), name="api-launch-ppo"),
    path("runs/<int:run_id>/", login_not_required(api.RunDetail.as_view()), name="api-run"),
    path("runs/<int:run_id>/metrics/", login_not_required(api.run_metrics), name="api-run-metrics"),
    path("runs/<int:run_id>/samples/", login_not_required(api.run_samples), name="api-run-samples"),
    path("runs/<int:run_id>/cancel/", login_not_required(api.cancel_run), name="api-run-cancel"),
    path("runs/<int:run_id>/resume/", login_not_required(api.resume_run), name="api-run-resume"),
    path("rounds/", login_not_required(api.new_round), name="api-new-round"),
    path("projects/<int:project_id>/rm-check/", login_not_required(api.rm_check), name="api-rm-check"),
    path("jobs/<int:job_id>/", login_not_required(api.JobDetail.as_view()), name="api-job"),
]
