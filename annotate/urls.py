from django.urls import path
from django.views.decorators.cache import never_cache

from annotate import views, views_history, views_setup

app_name = "annotate"
urlpatterns = [
    path("", views.home, name="home"),
    path("projects/<int:project_id>/", views.project_detail, name="project"),
    # The project wizard (staff): create, then guidelines -> import -> sample -> open on one page.
    path("projects/new/", views_setup.project_new, name="project_new"),
    path("projects/<int:project_id>/setup/", views_setup.project_setup_view, name="project_setup"),
    path("projects/<int:project_id>/setup/guidelines/", views_setup.project_setup_guidelines,
         name="project_setup_guidelines"),
    path("projects/<int:project_id>/setup/open/", views_setup.project_setup_open, name="project_setup_open"),
    path("projects/<int:project_id>/join/", views.project_join, name="project_join"),
    path("projects/<int:project_id>/start/", views.start, name="start"),
    path("projects/<int:project_id>/guidelines/", views.guidelines, name="guidelines"),
    # never_cache (no-store): Back after a submit reloads the page, which then says it was submitted.
    path("rank/<int:assignment_id>/", never_cache(views.rank), name="rank"),
    path("rank/<int:assignment_id>/reopen/", views_history.reopen, name="reopen"),
    path("rankings/mine/", views_history.my_rankings, name="history"),
    path("favicon.ico", views_history.favicon, name="favicon"),
    path("rank/<int:assignment_id>/draft/", views.draft, name="draft"),
    path("rank/<int:assignment_id>/submit/", views.submit, name="submit"),
    path("rank/<int:assignment_id>/skip/", views.skip, name="skip"),
]
