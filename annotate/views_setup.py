"""Staff pages of the project wizard: create a project, then one page that walks through guidelines → import →
sample responses → preview → open for annotators, each step with its state and the next step marked.

Writes go through annotate.services.projects; the import and export pages are views_data; sampling is queued on
the dashboard (training.views.project_sample), whose job page links back here.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate.forms import AnnotatorsForm, GuidelinesForm, ProjectForm
from annotate.models import Project
from annotate.rendering import render_markdown, render_model_output
from annotate.services.projects import (
    create_project,
    open_for_annotators,
    project_setup,
    response_preview,
    set_guidelines,
)


def _require_staff(request: HttpRequest) -> None:
    if not request.user.is_staff:
        raise PermissionDenied("Only staff can set up projects.")


def _setup_url(project: Project, step: str = "") -> str:
    return reverse("annotate:project_setup", args=[project.pk]) + (f"#step-{step}" if step else "")


@require_http_methods(["GET", "POST"])
def project_new(request: HttpRequest) -> HttpResponse:
    _require_staff(request)
    form = ProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        project = create_project(**form.cleaned_data)
        messages.success(request, f"Created project {project.name}. Next: write its guidelines.")
        return redirect(_setup_url(project, "guidelines"))
    status = 400 if request.method == "POST" else 200
    return render(request, "annotate/setup/new.html", {"form": form}, status=status)


def _setup_page(request: HttpRequest, project: Project, *, guidelines_form=None, annotators_form=None,
                status: int = 200) -> HttpResponse:
    setup = project_setup(project=project)
    previews = response_preview(project=project, round=setup.round)
    for item in previews:
        item["prompt_html"] = render_model_output(item["prompt"].text, as_markdown=project.render_markdown)
        item["cards"] = [{"response": r, "html": render_model_output(r.text, as_markdown=project.render_markdown)}
                         for r in item["responses"]]
    context = {
        "project": project,
        "setup": setup,
        "next_key": setup.next_step.key if setup.next_step else None,
        "steps": {step.key: step for step in setup.steps},
        "guidelines_form": guidelines_form or GuidelinesForm(initial={"guidelines": project.guidelines}),
        "guidelines_html": render_markdown(project.guidelines),
        "annotators_form": annotators_form or AnnotatorsForm(project=project),
        "previews": previews,
    }
    return render(request, "annotate/setup/setup.html", context, status=status)


@require_GET
def project_setup_view(request: HttpRequest, project_id: int) -> HttpResponse:
    _require_staff(request)
    return _setup_page(request, get_object_or_404(Project, pk=project_id))


@require_POST
def project_setup_guidelines(request: HttpRequest, project_id: int) -> HttpResponse:
    _require_staff(request)
    project = get_object_or_404(Project, pk=project_id)
    form = GuidelinesForm(request.POST)
    if not form.is_valid():
        return _setup_page(request, project, guidelines_form=form, status=400)
    if set_guidelines(project=project, text=form.cleaned_data["guidelines"]):
        messages.success(request, f"Guidelines saved (version {project.guidelines_version}). Next: import prompts.")
    return redirect(_setup_url(project, "import"))


@require_POST
def project_setup_open(request: HttpRequest, project_id: int) -> HttpResponse:
    _require_staff(request)
    project = get_object_or_404(Project, pk=project_id)
    form = AnnotatorsForm(request.POST, project=project)
    if not form.is_valid():
        return _setup_page(request, project, annotators_form=form, status=400)
    added = open_for_annotators(project=project, users=form.cleaned_data["users"])
    setup = project_setup(project=project)
    messages.success(
        request,
        f"{added} annotator{'s' if added != 1 else ''} added; {setup.annotators} in all. "
        + (f"{setup.ready} prompts are ready for them." if setup.ready else "Nothing is ready to rank yet."),
    )
    return redirect(_setup_url(project, "open"))
