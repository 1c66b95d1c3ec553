"""REST API for scripts and tools: the annotator's next-task / draft / submit / skip operations (the same services
the ranking page calls) and staff listings. Session or token authentication; anonymous requests get 401/403."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db.models import Count, Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.decorators import api_view
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response as ApiResponse

from annotate.models import Assignment, Project, Prompt, Ranking, Response
from annotate.selectors import project_progress, projects_for_user
from annotate.serializers import (
    DraftSerializer,
    NextTaskRequestSerializer,
    ProjectProgressSerializer,
    ProjectSerializer,
    PromptSerializer,
    RankingSerializer,
    SkipSerializer,
    SubmitSerializer,
    TaskSerializer,
)
from annotate.services.drafts import StaleDraft, get_draft, save_draft
from annotate.services.errors import TaskConflict, TaskNotFound
from annotate.services.queue import get_assignment, lease_next_task
from annotate.services.submission import skip_task, submit_ranking
from webapp.boundary import parse_id

SUBMIT_FIELDS = ("tiers", "ratings", "flags", "rationale", "all_bad", "seconds_spent")


def _errors(exc: ValidationError) -> dict:
    return exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}


def _conflict(exc: TaskConflict) -> ApiResponse:
    return ApiResponse({"detail": exc.message, "code": exc.code}, status=status.HTTP_409_CONFLICT)


def _not_found(exc: TaskNotFound) -> ApiResponse:
    return ApiResponse({"detail": str(exc)}, status=status.HTTP_404_NOT_FOUND)


def _task(request: Request, assignment_id: int) -> Assignment:
    return get_assignment(annotator=request.user, assignment_id=assignment_id, with_draft=True)


# --- annotator operations ---------------------------------------------------------------------------------------


@extend_schema(
    request=NextTaskRequestSerializer,
    responses={200: TaskSerializer, 204: OpenApiResponse(description="Nothing needs you right now.")},
    summary="Lease your next task (or get back the one you hold)",
)
@api_view(["POST"])
def next_task(request: Request) -> ApiResponse:
    body = NextTaskRequestSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    project = None
    if "project" in body.validated_data:
        project = Project.objects.filter(pk=body.validated_data["project"], annotators=request.user).first()
        if project is None:
            return ApiResponse({"project": ["No such project among yours."]}, status=status.HTTP_400_BAD_REQUEST)
    assignment = lease_next_task(annotator=request.user, project=project)
    if assignment is None:
        return ApiResponse(status=status.HTTP_204_NO_CONTENT)
    return ApiResponse(TaskSerializer(_task(request, assignment.pk)).data)


@extend_schema(responses={200: TaskSerializer}, summary="One of your tasks")
@api_view(["GET"])
def task_detail(request: Request, assignment_id: int) -> ApiResponse:
    try:
        return ApiResponse(TaskSerializer(_task(request, assignment_id)).data)
    except TaskNotFound as exc:
        return _not_found(exc)


@extend_schema(
    methods=["GET"], responses={200: DraftSerializer}, summary="The saved draft of your task (revision 0: none)"
)
@extend_schema(
    methods=["PUT"],
    request=DraftSerializer,
    responses={200: DraftSerializer, 400: OpenApiTypes.OBJECT, 409: OpenApiTypes.OBJECT},
    summary="Autosave a draft; 409 with the stored draft when it changed since your revision",
)
@api_view(["GET", "PUT"])
def task_draft(request: Request, assignment_id: int) -> ApiResponse:
    try:
        if request.method == "GET":
            draft = get_draft(annotator=request.user, assignment_id=assignment_id)
            if draft is None:
                return ApiResponse({"revision": 0, "state": None, "updated_at": None})
            return ApiResponse(DraftSerializer(draft).data)
        data = request.data if isinstance(request.data, dict) else {}
        saved = save_draft(
            annotator=request.user, assignment_id=assignment_id, state=data.get("state"),
            base_revision=data.get("revision"),
        )
    except TaskNotFound as exc:
        return _not_found(exc)
    except ValidationError as exc:
        return ApiResponse(_errors(exc), status=status.HTTP_400_BAD_REQUEST)
    except StaleDraft as exc:
        return ApiResponse(
            {"detail": exc.message, "code": exc.code, "draft": DraftSerializer(exc.draft).data},
            status=status.HTTP_409_CONFLICT,
        )
    except TaskConflict as exc:
        return _conflict(exc)
    return ApiResponse(
        {**DraftSerializer(saved.draft).data, "lease_live": saved.lease_live, "lease_expires_at": saved.lease_expires_at}
    )


@extend_schema(
    request=SubmitSerializer,
    responses={201: RankingSerializer, 200: RankingSerializer, 400: OpenApiTypes.OBJECT, 409: OpenApiTypes.OBJECT},
    summary="Submit your ranking (idempotent: a retry returns the same ranking with 200)",
)
@api_view(["POST"])
def task_submit(request: Request, assignment_id: int) -> ApiResponse:
    data = request.data if isinstance(request.data, dict) else {}
    if "tiers" not in data:
        return ApiResponse({"tiers": ["This field is required."]}, status=status.HTTP_400_BAD_REQUEST)
    try:
        result = submit_ranking(
            annotator=request.user, assignment_id=assignment_id, **{k: data.get(k) for k in SUBMIT_FIELDS if k in data}
        )
    except TaskNotFound as exc:
        return _not_found(exc)
    except ValidationError as exc:
        return ApiResponse(_errors(exc), status=status.HTTP_400_BAD_REQUEST)
    except TaskConflict as exc:
        return _conflict(exc)
    return ApiResponse(
        _own_ranking_data(result.ranking), status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
    )


def _own_ranking_data(ranking: Ranking) -> dict:
    return RankingSerializer(Ranking.objects.select_related("annotator", "prompt").get(pk=ranking.pk)).data


@extend_schema(request=SkipSerializer, responses={200: TaskSerializer}, summary="Skip your task with a reason")
@api_view(["POST"])
def task_skip(request: Request, assignment_id: int) -> ApiResponse:
    data = request.data if isinstance(request.data, dict) else {}
    try:
        skip_task(annotator=request.user, assignment_id=assignment_id, reason=data.get("reason"))
        return ApiResponse(TaskSerializer(_task(request, assignment_id)).data)
    except TaskNotFound as exc:
        return _not_found(exc)
    except ValidationError as exc:
        return ApiResponse(_errors(exc), status=status.HTTP_400_BAD_REQUEST)
    except TaskConflict as exc:
        return _conflict(exc)


# --- listings ------------------------------------------------------------------------------------------------------


class ProjectList(generics.ListAPIView):
    """Projects: staff see all, annotators the ones they belong to."""

    serializer_class = ProjectSerializer
    permission_classes = [IsAuthenticated]

    def get_queryset(self):
        return projects_for_user(user=self.request.user).order_by("name")


@extend_schema(responses={200: ProjectProgressSerializer}, summary="Progress of a project (and yours in it)")
@api_view(["GET"])
def project_progress_view(request: Request, project_id: int) -> ApiResponse:
    project = get_object_or_404(projects_for_user(user=request.user), pk=project_id)
    progress = project_progress(project=project, user=request.user)
    data = {name: getattr(progress, name) for name in ProjectProgressSerializer().fields}
    return ApiResponse(ProjectProgressSerializer(data).data)


class PromptList(generics.ListAPIView):
    """Staff: a project's prompts with their responses and ranking counts."""

    serializer_class = PromptSerializer
    permission_classes = [IsAdminUser]

    def get_queryset(self):
        project = get_object_or_404(Project, pk=self.kwargs["project_id"])
        return (
            Prompt.objects.filter(project=project)
            .annotate(ranking_count=Count("rankings", distinct=True))
            .prefetch_related(Prefetch("responses", queryset=Response.objects.order_by("pk")))
            .order_by("pk")
        )


@extend_schema(
    parameters=[
        OpenApiParameter("project", int, description="Only rankings of this project."),
        OpenApiParameter("annotator", str, description="Only rankings by this username."),
        OpenApiParameter("source", str, enum=[c for c, _ in Ranking.Source.choices]),
    ]
)
class RankingList(generics.ListAPIView):
    """Staff: submitted rankings, newest last."""

    serializer_class = RankingSerializer
    permission_classes = [IsAdminUser]

    def get_queryset(self):
        qs = Ranking.objects.select_related("annotator", "prompt").order_by("pk")
        params = self.request.query_params
        if params.get("project"):
            project_id = parse_id(params["project"])
            qs = qs.filter(prompt__project_id=project_id) if project_id is not None else qs.none()
        if params.get("annotator"):
            qs = qs.filter(annotator__username=params["annotator"])
        if params.get("source"):
            qs = qs.filter(source=params["source"])
        return qs
