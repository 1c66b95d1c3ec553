"""The dashboard, mounted at /dashboard/ (staff only)."""

from django.urls import path

from training import views

app_name = "training"
urlpatterns = [
    path("", views.run_list, name="run_list"),
    path("runs/<int:run_id>/", views.run_detail, name="run_detail"),
    path("runs/<int:run_id>/live/", views.run_live, name="run_live"),
    path("runs/<int:run_id>/samples/", views.run_samples, name="run_samples"),
    path("runs/<int:run_id>/log/", views.run_log, name="run_log"),
    path("runs/<int:run_id>/files/<path:relative>", views.run_file, name="run_file"),
    path("runs/<int:run_id>/cancel/", views.run_cancel, name="run_cancel"),
    path("runs/<int:run_id>/resume/", views.run_resume, name="run_resume"),
    path("runs/<int:run_id>/new-round/", views.new_round, name="run_new_round"),
    path("compare/", views.compare, name="compare"),
    path("launch/sft/", views.launch_sft, name="launch_sft"),
    path("launch/rm/", views.launch_rm, name="launch_rm"),
    path("launch/ppo/", views.launch_ppo, name="launch_ppo"),
    path("launch/<str:kind>/defaults/", views.launch_defaults, name="launch_defaults"),
    path("new-round/", views.new_round, name="new_round"),
    path("jobs/<int:job_id>/", views.job_detail, name="job_detail"),
    path("projects/", views.project_list, name="project_list"),
    path("projects/<int:project_id>/", views.project_stats, name="project_stats"),
    path("projects/<int:project_id>/rm-check/", views.project_rm_check, name="project_rm_check"),
    path("projects/<int:project_id>/sample/", views.project_sample, name="project_sample"),
]
