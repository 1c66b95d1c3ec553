"""Demonstration pages: the annotator's editor (autosave JSON, submit, skip), their list of demonstrations,
and staff review and import. Thin: the work is in annotate.services.demonstrations*."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate.models import Demonstration, Project
from annotate.rendering import render_markdown, render_model_output
from annotate.selectors import is_member
from annotate.services.demonstrations import (
    MAX_DEMONSTRATION_CHARS,
    StaleDemonstration,
    annotator_demonstrations,
    get_demonstration,
    lease_next_demonstration,
    review_demonstration,
    review_queue,
    save_demonstration_draft,
    skip_demonstration,
    starting_responses,
    submit_demonstration,
)
from annotate.services.demonstrations_import import (
    ImportFailed,
    RecordFileError,
    import_demonstrations_upload,
)
from annotate.services.errors import TaskConflict, TaskNotFound
from webapp.boundary import BoundaryError, read_json_body, scrub


def _own(request: HttpRequest, demonstration_id: int) -> Demonstration:
    try:
        return get_demonstration(annotator=request.user, demonstration_id=demonstration_id)
    except TaskNotFound as exc:
        raise Http404(str(exc)) from exc


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _page(request: HttpRequest, demonstration: Demonstration, *, errors: dict | None = None, text: str | None = None,
          status: int = 200) -> HttpResponse:
    project = demonstration.prompt.project
    responses = starting_responses(demonstration=demonstration)
    config = {
        "demonstration": demonstration.pk,
        "revision": demonstration.revision,
        "text": scrub(demonstration.text),
        "saved_at": demonstration.updated_at.isoformat() if demonstration.revision else None,
        "max_chars": MAX_DEMONSTRATION_CHARS,
        "started_from": demonstration.started_from_id,
        "seconds_spent": demonstration.seconds_spent,
        "responses": {str(r.pk): r.text for r in responses},
        "urls": {"draft": reverse("demos:draft", args=[demonstration.pk])},
    }
    context = {
        "demonstration": demonstration,
        "project": project,
        "prompt_html": render_model_output(demonstration.prompt.text, as_markdown=project.render_markdown),
        "responses": [{"id": r.pk, "label": chr(ord("A") + i),
                       "html": render_model_output(r.text, as_markdown=project.render_markdown)}
                      for i, r in enumerate(responses)],
        "text": demonstration.text if text is None else text,
        "config": config,
        "errors": errors or {},
        "editable": demonstration.status == Demonstration.Status.DRAFT,
        "guidelines_html": render_markdown(project.guidelines),
        "max_chars": MAX_DEMONSTRATION_CHARS,
    }
    return render(request, "annotate/demonstration.html", context, status=status)


def _next(request: HttpRequest, project: Project, *, flash: str) -> HttpResponse:
    messages.success(request, flash)
    nxt = lease_next_demonstration(annotator=request.user, project=project)
    if nxt is None:
        messages.info(request, f"Nothing in {project.name} needs a demonstration from you right now. Thank you!")
        return redirect("annotate:project", project_id=project.pk)
    return redirect("demos:page", demonstration_id=nxt.pk)


# --- the annotator -----------------------------------------------------------------------------------------------


@require_POST
def start(request: HttpRequest, project_id: int) -> HttpResponse:
    """Lease the user's next demonstration task in the project (or resume theirs) and open the editor."""
    project = get_object_or_404(Project, pk=project_id)
    if not is_member(user=request.user, project=project):
        if not request.user.is_staff:
            raise Http404("No such project.")
        messages.info(request, "You are not an annotator of this project yet: join it first.")
        return redirect("annotate:project", project_id=project.pk)
    if not project.wants_demonstrations:
        messages.info(request, f"{project.name} does not ask for demonstrations.")
        return redirect("annotate:project", project_id=project.pk)
    demonstration = lease_next_demonstration(annotator=request.user, project=project)
    if demonstration is None:
        messages.info(request, f"Nothing in {project.name} needs a demonstration from you right now. Thank you!")
        return redirect("annotate:project", project_id=project.pk)
    return redirect("demos:page", demonstration_id=demonstration.pk)


@never_cache
@require_GET
def page(request: HttpRequest, demonstration_id: int) -> HttpResponse:
    return _page(request, _own(request, demonstration_id))


@require_POST
def draft(request: HttpRequest, demonstration_id: int) -> JsonResponse:
    """Autosave (JSON ``{"revision": n, "text": "…", "started_from": id|null, "seconds_spent": s}``); 409 with the
    stored version when another tab saved meanwhile."""
    demonstration = _own(request, demonstration_id)
    try:
        body = read_json_body(request)
    except BoundaryError as exc:
        return JsonResponse({"errors": exc.as_dict()}, status=exc.status)
    if not isinstance(body, dict):
        return JsonResponse({"errors": {"body": ["The request body must be a JSON object."]}}, status=400)
    started = body.get("started_from")
    if started is not None and (isinstance(started, bool) or not isinstance(started, int)):
        return JsonResponse({"errors": {"started_from": ["must be a response id or null."]}}, status=400)
    try:
        saved = save_demonstration_draft(
            annotator=request.user, demonstration_id=demonstration.pk, text=body.get("text"),
            base_revision=body.get("revision"), started_from_id=started, seconds_spent=body.get("seconds_spent"),
        )
    except ValidationError as exc:
        return JsonResponse({"errors": exc.message_dict}, status=400)
    except StaleDemonstration as exc:
        stored = exc.demonstration
        return JsonResponse({"code": exc.code, "message": exc.message,
                             "draft": {"revision": stored.revision, "text": scrub(stored.text)}}, status=409)
    except TaskConflict as exc:
        return JsonResponse({"code": exc.code, "message": exc.message}, status=409)
    except TaskNotFound as exc:
        raise Http404(str(exc)) from exc
    return JsonResponse({"revision": saved.demonstration.revision, "updated_at": saved.demonstration.updated_at.isoformat(),
                         "lease_live": saved.lease_live})


@require_POST
def submit(request: HttpRequest, demonstration_id: int) -> HttpResponse:
    demonstration = _own(request, demonstration_id)
    text = request.POST.get("text", "")
    try:
        result = submit_demonstration(annotator=request.user, demonstration_id=demonstration.pk, text=text,
                                      seconds_spent=_seconds(request.POST.get("seconds_spent")))
    except ValidationError as exc:
        return _page(request, demonstration, errors=exc.message_dict, text=text, status=400)
    except TaskConflict as exc:
        demonstration.refresh_from_db()
        return _page(request, demonstration, errors={"__all__": [exc.message]}, text=text, status=409)
    flash = "Demonstration submitted for review." if result.created else "This demonstration was already submitted."
    return _next(request, demonstration.prompt.project, flash=flash)


@require_POST
def skip(request: HttpRequest, demonstration_id: int) -> HttpResponse:
    demonstration = _own(request, demonstration_id)
    try:
        skip_demonstration(annotator=request.user, demonstration_id=demonstration.pk,
                           reason=request.POST.get("reason", ""))
    except ValidationError as exc:
        return _page(request, demonstration, errors=exc.message_dict, status=400)
    except TaskConflict as exc:
        return _page(request, demonstration, errors={"__all__": [exc.message]}, status=409)
    return _next(request, demonstration.prompt.project, flash="Prompt skipped.")


@require_GET
def mine(request: HttpRequest) -> HttpResponse:
    return render(request, "annotate/demonstration_history.html",
                  {"demonstrations": annotator_demonstrations(annotator=request.user)})


# --- staff ---------------------------------------------------------------------------------------------------------


@staff_member_required
@require_GET
def review_list(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    status = request.GET.get("status", Demonstration.Status.SUBMITTED)
    if status not in (Demonstration.Status.SUBMITTED, Demonstration.Status.ACCEPTED, Demonstration.Status.REJECTED):
        status = Demonstration.Status.SUBMITTED
    items = list(review_queue(project=project, status=status)[:50])
    counts = {s: review_queue(project=project, status=s).count()
              for s in (Demonstration.Status.SUBMITTED, Demonstration.Status.ACCEPTED, Demonstration.Status.REJECTED)}
    return render(request, "annotate/demonstration_review.html", {
        "project": project, "items": items, "status": status, "counts": counts, "max_chars": MAX_DEMONSTRATION_CHARS,
    })


@staff_member_required
@require_POST
def review(request: HttpRequest, demonstration_id: int) -> HttpResponse:
    demonstration = get_object_or_404(Demonstration.objects.select_related("prompt"), pk=demonstration_id)
    project_id = demonstration.prompt.project_id
    action = request.POST.get("action", "")
    text = request.POST.get("text")
    if text is not None and text == demonstration.text and action != "edit":
        text = None  # unchanged: keep the text as it is
    try:
        reviewed = review_demonstration(reviewer=request.user, demonstration_id=demonstration.pk,
                                        action=action, text=text, note=request.POST.get("note", ""))
    except ValidationError as exc:
        for field, problems in exc.message_dict.items():
            messages.error(request, f"Demonstration {demonstration.pk}, {field}: {' '.join(problems)}")
        return redirect(f"{reverse('demos:review_list', args=[project_id])}#demo-{demonstration.pk}")
    except TaskConflict as exc:
        messages.error(request, exc.message)
        return redirect("demos:review_list", project_id=project_id)
    messages.success(request, f"Demonstration {reviewed.pk}: {reviewed.get_status_display().lower()}.")
    return redirect("demos:review_list", project_id=project_id)


@staff_member_required
@require_http_methods(["GET", "POST"])
def import_page(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    context = {"project": project, "errors": [], "summary": None}
    status = 200
    if request.method == "POST":
        uploaded = request.FILES.get("file")
        if uploaded is None:
            context["errors"], status = ["file: choose a .jsonl, .csv or .parquet file to upload."], 400
        else:
            try:
                context["summary"] = import_demonstrations_upload(
                    project=project, uploaded=uploaded, needs_review=bool(request.POST.get("needs_review")))
            except RecordFileError as exc:
                context["errors"], status = [str(exc)], 400
            except ImportFailed as exc:
                context["errors"], status = str(exc).splitlines(), 400
    return render(request, "annotate/demonstration_import.html", context, status=status)

