"""Annotator pages: home, project, guidelines and the ranking page (htmx partials for submit / skip)."""

from __future__ import annotations

import string

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate.forms import SKIP_REASONS, SkipForm, form_errors
from annotate.models import LIKERT_MAX, LIKERT_MIN, RESPONSE_FLAGS, Assignment, Draft, Project
from annotate.rendering import has_markup, is_long, render_markdown, render_model_output, render_model_text
from annotate.selectors import is_member, project_progress, projects_for_user
from annotate.services.drafts import StaleDraft, save_draft
from annotate.services.errors import TaskConflict, TaskNotFound
from annotate.services.queue import get_assignment, is_lease_live, lease_next_task, responses_in_display_order
from annotate.services.revisions import reopen_blocker
from annotate.services.submission import skip_task, submit_ranking
from webapp.boundary import BoundaryError, max_body_bytes, parse_json, read_json_body, scrub

SUBMIT_FIELDS = ("tiers", "ratings", "flags", "rationale", "all_bad", "seconds_spent")


# --- helpers ---------------------------------------------------------------------------------------------------


def _visible_project(request: HttpRequest, project_id: int) -> Project:
    """A project the user may see: staff see all, annotators their own (others are 404)."""
    project = get_object_or_404(Project, pk=project_id)
    if not request.user.is_staff and not is_member(user=request.user, project=project):
        raise Http404("No such project.")
    return project


def _own_assignment(request: HttpRequest, assignment_id: int) -> Assignment:
    try:
        return get_assignment(annotator=request.user, assignment_id=assignment_id)
    except TaskNotFound as exc:
        raise Http404(str(exc)) from exc


def _default_state(assignment: Assignment) -> dict:
    return {
        "tiers": [],  # every response starts unplaced: the shown order must not look like a ranking
        "ratings": {},
        "flags": {},
        "rationale": "",
        "all_bad": False,
        "seconds_spent": 0.0,
    }


def _task_context(request: HttpRequest, assignment: Assignment, *, flash: str = "") -> dict:
    project = assignment.prompt.project
    responses = responses_in_display_order(assignment=assignment)
    draft = Draft.objects.filter(assignment=assignment).first()
    state = _default_state(assignment)
    if draft is not None and isinstance(draft.state, dict):
        # scrub: a draft stored before the boundary checks may hold lone surrogates; U+FFFD lets the page render
        # and the next autosave store valid text, so the annotator is never stuck on this task.
        state.update({k: v for k, v in scrub(draft.state).items() if v is not None})
    labels = {r.pk: string.ascii_uppercase[i] for i, r in enumerate(responses)}
    cards = {
        r.pk: {
            "id": r.pk,
            "label": labels[r.pk],
            "html": render_model_output(r.text, as_markdown=project.render_markdown),
            "raw_html": render_model_text(r.text) if project.render_markdown and has_markup(r.text) else None,
            "long": is_long(r.text),
            "rating": state["ratings"].get(str(r.pk)),
            "flags": state["flags"].get(str(r.pk), []),
        }
        for r in responses
    }
    tiers = [[cards[rid] for rid in tier if rid in cards] for tier in state["tiers"]]
    tiers = [tier for tier in tiers if tier]
    placed = {card["id"] for tier in tiers for card in tier}
    unplaced = [cards[r.pk] for r in responses if r.pk not in placed]
    config = {
        "assignment": assignment.pk,
        "display_order": assignment.display_order,
        "labels": {str(k): v for k, v in labels.items()},
        "state": state,
        "revision": draft.revision if draft else 0,
        "draft_saved_at": draft.updated_at.isoformat() if draft else None,
        "urls": {
            "draft": reverse("annotate:draft", args=[assignment.pk]),
            "submit": reverse("annotate:submit", args=[assignment.pk]),
        },
    }
    return {
        "assignment": assignment,
        "project": project,
        "prompt": assignment.prompt,
        "prompt_html": render_model_output(assignment.prompt.text, as_markdown=project.render_markdown),
        "tiers": tiers,
        "unplaced": unplaced,
        "state": state,
        "draft": draft,
        "config": config,
        "likert": range(LIKERT_MIN, LIKERT_MAX + 1),
        "flag_choices": RESPONSE_FLAGS.items(),
        "lease_live": is_lease_live(assignment=assignment),
        "skip_form": SkipForm(),
        "skip_reasons": SKIP_REASONS,
        "flash": flash,
        "finished": assignment.state in (Assignment.State.SUBMITTED, Assignment.State.SKIPPED),
        "reopenable": reopen_blocker(annotator=request.user, assignment=assignment) is None,
    }


def _next_task_response(request: HttpRequest, project: Project, *, flash: str) -> HttpResponse:
    """After a submit or skip: the next task of the same project, swapped in by htmx (or a redirect)."""
    assignment = lease_next_task(annotator=request.user, project=project)
    if not request.htmx:
        messages.success(request, flash)
        if assignment is None:
            return redirect("annotate:project", project_id=project.pk)
        return redirect("annotate:rank", assignment_id=assignment.pk)
    progress = project_progress(project=project, user=request.user)
    if assignment is None:
        response = render(
            request, "annotate/_done.html", {"project": project, "progress": progress, "flash": flash, "oob": True}
        )
        response["HX-Push-Url"] = reverse("annotate:project", args=[project.pk])
        return response
    context = _task_context(request, assignment, flash=flash) | {"progress": progress, "oob": True}
    response = render(request, "annotate/_task.html", context)
    response["HX-Push-Url"] = reverse("annotate:rank", args=[assignment.pk])
    return response


def _problem(request: HttpRequest, assignment: Assignment | None, errors: dict, *, status: int, target: str,
             code: str = "") -> HttpResponse:
    project = assignment.prompt.project if assignment else None
    response = render(
        request,
        "annotate/_problem.html",
        {"errors": errors, "code": code, "project": project, "assignment": assignment},
        status=status,
    )
    response["HX-Retarget"] = target
    response["HX-Reswap"] = "innerHTML"
    return response


# --- pages ----------------------------------------------------------------------------------------------------------


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    rows = []
    for project in projects_for_user(user=request.user):
        progress = project_progress(project=project, user=request.user, now=now)
        live = (
            Assignment.objects.filter(annotator=request.user, prompt__project=project, state=Assignment.State.LEASED,
                                      lease_expires_at__gt=now)
            .order_by("leased_at")
            .first()
        )
        rows.append({"project": project, "progress": progress, "live": live})
    return render(request, "annotate/home.html", {"rows": rows})


@require_GET
def project_detail(request: HttpRequest, project_id: int) -> HttpResponse:
    project = _visible_project(request, project_id)
    context = {
        "project": project,
        "progress": project_progress(project=project, user=request.user),
        "guidelines_html": render_markdown(project.guidelines),
    }
    if request.user.is_staff:
        context["members"] = project.annotators.order_by("username")
    return render(request, "annotate/project.html", context)


@require_POST
def project_join(request: HttpRequest, project_id: int) -> HttpResponse:
    """Staff add themselves to a project's annotators (to try the ranking page)."""
    if not request.user.is_staff:
        raise PermissionDenied("Only staff can join projects themselves; ask an admin to add you.")
    project = get_object_or_404(Project, pk=project_id)
    project.annotators.add(request.user)
    messages.success(request, f"You are now an annotator of {project.name}.")
    return redirect("annotate:project", project_id=project.pk)


@require_GET
def guidelines(request: HttpRequest, project_id: int) -> HttpResponse:
    project = _visible_project(request, project_id)
    return render(
        request, "annotate/guidelines.html", {"project": project, "guidelines_html": render_markdown(project.guidelines)}
    )


@require_POST
def start(request: HttpRequest, project_id: int) -> HttpResponse:
    """Lease the user's next task in the project (or resume theirs) and open the ranking page."""
    project = _visible_project(request, project_id)
    if not is_member(user=request.user, project=project):
        messages.info(request, "You are not an annotator of this project yet: join it first.")
        return redirect("annotate:project", project_id=project.pk)
    assignment = lease_next_task(annotator=request.user, project=project)
    if assignment is None:
        messages.info(request, f"Nothing in {project.name} needs your ranking right now. Thank you!")
        return redirect("annotate:project", project_id=project.pk)
    return redirect("annotate:rank", assignment_id=assignment.pk)


@require_GET
def rank(request: HttpRequest, assignment_id: int) -> HttpResponse:
    assignment = _own_assignment(request, assignment_id)
    project = assignment.prompt.project
    context = _task_context(request, assignment) | {
        "progress": project_progress(project=project, user=request.user),
        "guidelines_html": render_markdown(project.guidelines),
    }
    return render(request, "annotate/rank.html", context)


@require_http_methods(["GET", "POST"])
def draft(request: HttpRequest, assignment_id: int) -> JsonResponse:
    """GET: the saved draft. POST (JSON ``{"revision": n, "state": {…}}``): autosave; 409 when stale."""
    assignment = _own_assignment(request, assignment_id)
    if request.method == "GET":
        saved = Draft.objects.filter(assignment=assignment).first()
        return JsonResponse(_draft_json(saved))
    try:
        body = read_json_body(request)
    except BoundaryError as exc:
        return JsonResponse({"errors": exc.as_dict()}, status=exc.status)
    if not isinstance(body, dict):
        return JsonResponse({"errors": {"body": ["The request body must be a JSON object."]}}, status=400)
    try:
        saved = save_draft(
            annotator=request.user, assignment_id=assignment.pk, state=body.get("state"),
            base_revision=body.get("revision"),
        )
    except ValidationError as exc:
        return JsonResponse({"errors": exc.message_dict}, status=400)
    except StaleDraft as exc:
        return JsonResponse({"code": exc.code, "message": exc.message, "draft": _draft_json(exc.draft)}, status=409)
    except TaskConflict as exc:
        return JsonResponse({"code": exc.code, "message": exc.message}, status=409)
    except TaskNotFound as exc:
        raise Http404(str(exc)) from exc
    return JsonResponse({
        **_draft_json(saved.draft),
        "lease_live": saved.lease_live,
        "lease_expires_at": saved.lease_expires_at.isoformat(),
    })


def _draft_json(saved: Draft | None) -> dict:
    if saved is None:
        return {"revision": 0, "state": None, "updated_at": None}
    return {"revision": saved.revision, "state": scrub(saved.state), "updated_at": saved.updated_at.isoformat()}


@require_POST
def submit(request: HttpRequest, assignment_id: int) -> HttpResponse:
    """The ranking form (htmx): ``payload`` holds the JSON of tiers, ratings, flags, rationale, all_bad…"""
    assignment = _own_assignment(request, assignment_id)
    target = f"#submit-status-{assignment.pk}"
    try:
        payload = parse_json(request.POST.get("payload") or "", max_bytes=max_body_bytes())
    except BoundaryError as exc:
        if exc.field == "body":
            errors = {"payload": [f"The ranking could not be read (it {exc.message.rstrip('.')}); reload the page."]}
        else:
            errors = exc.as_dict()
        return _problem(request, assignment, errors, status=exc.status, target=target)
    if not isinstance(payload, dict):
        return _problem(request, assignment, {"payload": ["The ranking could not be read; reload the page."]},
                        status=400, target=target)
    try:
        result = submit_ranking(
            annotator=request.user, assignment_id=assignment.pk, **{k: payload.get(k) for k in SUBMIT_FIELDS}
        )
    except ValidationError as exc:
        return _problem(request, assignment, exc.message_dict, status=400, target=target)
    except TaskConflict as exc:
        return _problem(request, assignment, {"__all__": [exc.message]}, status=409, target=target, code=exc.code)
    except TaskNotFound as exc:
        raise Http404(str(exc)) from exc
    flash = "Ranking submitted." if result.created else "This ranking was already submitted."
    return _next_task_response(request, assignment.prompt.project, flash=flash)


@require_POST
def skip(request: HttpRequest, assignment_id: int) -> HttpResponse:
    assignment = _own_assignment(request, assignment_id)
    target = f"#skip-status-{assignment.pk}"
    form = SkipForm(request.POST)
    if not form.is_valid():
        return _problem(request, assignment, form_errors(form), status=400, target=target)
    try:
        skip_task(annotator=request.user, assignment_id=assignment.pk, reason=form.reason())
    except ValidationError as exc:
        return _problem(request, assignment, exc.message_dict, status=400, target=target)
    except TaskConflict as exc:
        return _problem(request, assignment, {"__all__": [exc.message]}, status=409, target=target, code=exc.code)
    except TaskNotFound as exc:
        raise Http404(str(exc)) from exc
    return _next_task_response(request, assignment.prompt.project, flash="Prompt skipped.")
