"""REST API for demonstrations (mounted at /api/ by annotate/api_demonstration_urls.py): the annotator's next /
draft / submit / skip (the services the editor calls) and staff review, listing and import. Errors as in the
ranking API: 400 naming the field, 404 for other people's demonstrations, 409 for state conflicts (a stale draft
carries the stored version)."""

from __future__ import annotations

import functools
from typing import Any

from django.core.exceptions import ValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response as ApiResponse

from annotate.models import Demonstration, Project
from annotate.services.demonstrations import (
    StaleDemonstration,
    get_demonstration,
    lease_next_demonstration,
    review_demonstration,
    review_queue,
    save_demonstration_draft,
    skip_demonstration,
    submit_demonstration,
)
from annotate.services.demonstrations_import import import_demonstrations
from annotate.services.errors import TaskConflict, TaskNotFound
from annotate.services.importing import ImportFailed, RecordSource, api_records
from webapp.boundary import scrub

MAX_LIST = 200


def demonstration_data(demo: Demonstration, *, staff: bool = False) -> dict[str, Any]:
    data = {
        "id": demo.pk, "project": demo.prompt.project_id, "prompt_id": demo.prompt_id,
        "prompt": scrub(demo.prompt.text), "text": scrub(demo.text), "status": demo.status,
        "revision": demo.revision, "started_from": demo.started_from_id, "seconds_spent": demo.seconds_spent,
        "lease_expires_at": demo.lease_expires_at, "review_note": demo.review_note, "source": demo.source,
        "submitted_at": demo.submitted_at, "updated_at": demo.updated_at,
    }
    if staff:
        data.update(annotator=demo.annotator.username if demo.annotator_id else None,
                    submitted_text=scrub(demo.submitted_text), source_detail=demo.source_detail,
                    reviewer=demo.reviewer.username if demo.reviewer_id else None)
    return data


def _body(request: Request) -> dict:
    return request.data if isinstance(request.data, dict) else {}


def _bad(exc: ValidationError) -> ApiResponse:
    errors = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
    return ApiResponse(errors, status=status.HTTP_400_BAD_REQUEST)


def _conflict(exc: TaskConflict) -> ApiResponse:
    return ApiResponse({"detail": exc.message, "code": exc.code}, status=status.HTTP_409_CONFLICT)


def _int_or_none(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError({field: ["must be an integer id or null."]})
    return value


def service_errors(view):
    """The services' errors as answers: TaskNotFound 404, ValidationError 400 naming the field, a stale draft 409
    with the stored version, any other TaskConflict 409 with its code."""

    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except TaskNotFound as exc:
            return ApiResponse({"detail": str(exc)}, status=status.HTTP_404_NOT_FOUND)
        except ValidationError as exc:
            return _bad(exc)
        except StaleDemonstration as exc:
            stored = exc.demonstration
            return ApiResponse({"detail": exc.message, "code": exc.code,
                                "draft": {"revision": stored.revision, "text": scrub(stored.text)}},
                               status=status.HTTP_409_CONFLICT)
        except TaskConflict as exc:
            return _conflict(exc)

    return wrapped


@extend_schema(request=OpenApiTypes.OBJECT,
               responses={200: OpenApiTypes.OBJECT, 204: OpenApiResponse(description="Nothing needs you now.")},
               summary="Lease your next demonstration task (or get back the draft you hold)")
@api_view(["POST"])
def next_demonstration(request: Request) -> ApiResponse:
    body = _body(request)
    project = None
    if body.get("project") is not None:
        project_id = body["project"]
        if isinstance(project_id, bool) or not isinstance(project_id, int):
            return ApiResponse({"project": ["must be a project id."]}, status=status.HTTP_400_BAD_REQUEST)
        project = Project.objects.filter(pk=project_id, annotators=request.user).first()
        if project is None:
            return ApiResponse({"project": ["No such project among yours."]}, status=status.HTTP_400_BAD_REQUEST)
    demo = lease_next_demonstration(annotator=request.user, project=project)
    if demo is None:
        return ApiResponse(status=status.HTTP_204_NO_CONTENT)
    return ApiResponse(demonstration_data(get_demonstration(annotator=request.user, demonstration_id=demo.pk)))


@extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="One of your demonstrations")
@api_view(["GET"])
@service_errors
def demonstration_detail(request: Request, demonstration_id: int) -> ApiResponse:
    return ApiResponse(demonstration_data(get_demonstration(annotator=request.user,
                                                            demonstration_id=demonstration_id)))


@extend_schema(request=OpenApiTypes.OBJECT,
               responses={200: OpenApiTypes.OBJECT, 400: OpenApiTypes.OBJECT, 409: OpenApiTypes.OBJECT},
               summary="Autosave the text ({revision, text, started_from, seconds_spent}); 409 with the stored "
               "version when it changed since your revision")
@api_view(["PUT"])
@service_errors
def demonstration_draft(request: Request, demonstration_id: int) -> ApiResponse:
    body = _body(request)
    saved = save_demonstration_draft(
        annotator=request.user, demonstration_id=demonstration_id, text=body.get("text"),
        base_revision=body.get("revision"), started_from_id=_int_or_none(body.get("started_from"), "started_from"),
        seconds_spent=body.get("seconds_spent"),
    )
    return ApiResponse({**demonstration_data(saved.demonstration), "lease_live": saved.lease_live})


@extend_schema(request=OpenApiTypes.OBJECT,
               responses={201: OpenApiTypes.OBJECT, 200: OpenApiTypes.OBJECT, 400: OpenApiTypes.OBJECT,
                          409: OpenApiTypes.OBJECT},
               summary="Submit your demonstration ({text, seconds_spent}); idempotent: a retry gets 200")
@api_view(["POST"])
@service_errors
def demonstration_submit(request: Request, demonstration_id: int) -> ApiResponse:
    body = _body(request)
    if "text" not in body:
        return ApiResponse({"text": ["This field is required."]}, status=status.HTTP_400_BAD_REQUEST)
    result = submit_demonstration(annotator=request.user, demonstration_id=demonstration_id, text=body["text"],
                                  seconds_spent=body.get("seconds_spent"))
    return ApiResponse(demonstration_data(result.demonstration),
                       status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)


@extend_schema(request=OpenApiTypes.OBJECT, responses={200: OpenApiTypes.OBJECT, 409: OpenApiTypes.OBJECT},
               summary="Skip your demonstration task ({reason})")
@api_view(["POST"])
@service_errors
def demonstration_skip(request: Request, demonstration_id: int) -> ApiResponse:
    demo = skip_demonstration(annotator=request.user, demonstration_id=demonstration_id,
                              reason=_body(request).get("reason", ""))
    return ApiResponse(demonstration_data(demo))


# --- staff ------------------------------------------------------------------------------------------------------


@extend_schema(request=OpenApiTypes.OBJECT, responses={200: OpenApiTypes.OBJECT, 400: OpenApiTypes.OBJECT},
               summary="Review a demonstration ({action: accept | reject | edit, text, note}; staff)")
@api_view(["POST"])
@permission_classes([IsAdminUser])
@service_errors
def demonstration_review(request: Request, demonstration_id: int) -> ApiResponse:
    body = _body(request)
    demo = review_demonstration(reviewer=request.user, demonstration_id=demonstration_id,
                                action=body.get("action"), text=body.get("text"), note=body.get("note", ""))
    demo = Demonstration.objects.select_related("prompt", "annotator", "reviewer").get(pk=demo.pk)
    return ApiResponse(demonstration_data(demo, staff=True))


STATUSES = [s for s, _ in Demonstration.Status.choices]


@extend_schema(parameters=[OpenApiParameter("status", str, enum=STATUSES, description="default: submitted")],
               responses={200: OpenApiTypes.OBJECT}, summary="A project's demonstrations by status (staff)")
@api_view(["GET"])
@permission_classes([IsAdminUser])
def project_demonstrations(request: Request, project_id: int) -> ApiResponse:
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return ApiResponse({"detail": "No such project."}, status=status.HTTP_404_NOT_FOUND)
    wanted = request.query_params.get("status", Demonstration.Status.SUBMITTED)
    if wanted not in STATUSES:
        return ApiResponse({"status": [f"must be one of {', '.join(STATUSES)}."]}, status=status.HTTP_400_BAD_REQUEST)
    rows = [demonstration_data(d, staff=True) for d in review_queue(project=project, status=wanted)[:MAX_LIST]]
    return ApiResponse({"count": len(rows), "results": rows})


@extend_schema(request=OpenApiTypes.OBJECT, responses={201: OpenApiTypes.OBJECT, 400: OpenApiTypes.OBJECT},
               summary="Import demonstrations ({records: [{prompt, response, …}], needs_review, round}; all or "
               "nothing; staff)")
@api_view(["POST"])
@permission_classes([IsAdminUser])
def project_demonstrations_import(request: Request, project_id: int) -> ApiResponse:
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return ApiResponse({"detail": "No such project."}, status=status.HTTP_404_NOT_FOUND)
    body = _body(request)
    records = body.get("records")
    if not isinstance(records, list) or not records:
        return ApiResponse({"records": ["a non-empty list of records."]}, status=status.HTTP_400_BAD_REQUEST)
    rnd = body.get("round", 1)
    source = RecordSource("api", "api", len(records), "records", lambda advance: api_records(records))
    try:
        summary = import_demonstrations(project=project, source=source, round=rnd,
                                        needs_review=body.get("needs_review") is True)
    except ImportFailed as exc:
        return ApiResponse({"records": exc.errors}, status=status.HTTP_400_BAD_REQUEST)
    return ApiResponse(summary.as_dict(), status=status.HTTP_201_CREATED)
