from django.urls import path

from annotate import views

app_name = "annotate"
urlpatterns = [
    path("", views.home, name="home"),
    path("projects/<int:project_id>/", views.project_detail, name="project"),
    path("projects/<int:project_id>/join/", views.project_join, name="project_join"),
    path("projects/<int:project_id>/start/", views.start, name="start"),
    path("projects/<int:project_id>/guidelines/", views.guidelines, name="guidelines"),
    path("rank/<int:assignment_id>/", views.rank, name="rank"),
    path("rank/<int:assignment_id>/draft/", views.draft, name="draft"),
    path("rank/<int:assignment_id>/submit/", views.submit, name="submit"),
    path("rank/<int:assignment_id>/skip/", views.skip, name="skip"),
]
