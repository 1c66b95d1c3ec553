"""Demonstration URLs (namespace "demos"): the editor, its autosave/submit/skip, the annotator's list, staff
review and import. Included from webapp/urls.py beside annotate.urls."""

from django.urls import path

from annotate import views_demonstrations as views

app_name = "demos"
urlpatterns = [
    path("projects/<int:project_id>/write/", views.start, name="start"),
    path("write/<int:demonstration_id>/", views.page, name="page"),
    path("write/<int:demonstration_id>/draft/", views.draft, name="draft"),
    path("write/<int:demonstration_id>/submit/", views.submit, name="submit"),
    path("write/<int:demonstration_id>/skip/", views.skip, name="skip"),
    path("demonstrations/mine/", views.mine, name="mine"),
    path("projects/<int:project_id>/demonstrations/review/", views.review_list, name="review_list"),
    path("demonstrations/<int:demonstration_id>/review/", views.review, name="review"),
    path("projects/<int:project_id>/demonstrations/import/", views.import_page, name="import"),
]
