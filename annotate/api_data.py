"""Staff REST endpoints for data in and out: import records, agreement/quality statistics, dataset snapshots.

Session or token authentication; non-staff get 403 and anonymous requests 401/403 (never a login redirect:
the URLs are marked login_not_required and DRF checks the user).
"""

from __future__ import annotations

from django.conf import settings
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view, parser_classes, permission_classes
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response as ApiResponse

from annotate.models import DatasetSnapshot, Project
from annotate.services.exporting import FORMATS, GROUPS, ExportError, export_snapshot, snapshot_dir_for
from annotate.services.importing import ImportFailed, api_records, import_records
from annotate.services.stats import project_quality
from webapp import limits
from webapp.boundary import UploadJSONParser, json_size, max_record_bytes, parse_id, record_too_large

STAFF = [IsAuthenticated, IsAdminUser]


class ImportRequestSerializer(serializers.Serializer):
    project = serializers.CharField(max_length=200, help_text="Project name; created with defaults if missing.")
    records = serializers.ListField(
        child=serializers.JSONField(), allow_empty=False,
        help_text="Records: {prompt, id?, metadata?, responses?, ranking?, …} (see docs/architecture.md).",
    )
    round = serializers.IntegerField(required=False, min_value=1, max_value=limits.MAX_DB_INT, allow_null=True)
    source = serializers.CharField(required=False, max_length=200, default="api",
                                   help_text="Recorded as the prompts' source (default 'api').")
    strict = serializers.BooleanField(
        required=False, default=False,
        help_text="Reject a prompt repeated with other responses (default: merge them into its first copy).",
    )


class ImportSummarySerializer(serializers.Serializer):
    project = serializers.CharField()
    project_created = serializers.BooleanField()
    source = serializers.CharField()
    round = serializers.IntegerField()
    records = serializers.IntegerField()
    imported = serializers.IntegerField()
    responses = serializers.IntegerField()
    rankings = serializers.IntegerField()
    skipped = serializers.IntegerField()
    merged = serializers.IntegerField(help_text="Repeats of a prompt with other responses merged into its first copy.")
    merged_duplicates = serializers.IntegerField(help_text="Responses of those repeats already in the first copy.")
    rejected = serializers.IntegerField()
    errors = serializers.ListField(child=serializers.CharField())


@extend_schema(
    request=ImportRequestSerializer,
    responses={
        201: ImportSummarySerializer,
        400: OpenApiResponse(
            OpenApiTypes.OBJECT,
            description="Nothing was imported: {detail, errors: ['record 3, field ...: ...'], summary} when records "
            "were rejected, or {field: [message]} when the request itself is malformed (a field, invalid Unicode, "
            "nesting deeper than the limit).",
        ),
        413: OpenApiResponse(OpenApiTypes.OBJECT, description="The body is over WORKBENCH_MAX_UPLOAD_BYTES."),
    },
    summary="Import prompts (all or nothing)",
)
@api_view(["POST"])
@permission_classes(STAFF)
@parser_classes([UploadJSONParser])
def import_view(request: Request) -> ApiResponse:
    limit = settings.WORKBENCH_MAX_UPLOAD_BYTES
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        return ApiResponse(
            {"detail": f"The request body is {length} bytes; the limit is {limit} (WORKBENCH_MAX_UPLOAD_BYTES)."},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    body = ImportRequestSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    data = body.validated_data
    # The same per-record limit as a JSONL line or a CSV row of an imported file.
    limit = max_record_bytes()
    oversized = [
        f"record {number}: {record_too_large(limit)}"
        for number, record in enumerate(data["records"], start=1)
        if json_size(record) > limit
    ]
    if oversized:
        return ApiResponse(
            {"detail": f"Nothing was imported: {len(oversized)} of {len(data['records'])} records were rejected.",
             "errors": oversized[:50], "summary": None},
            status=status.HTTP_400_BAD_REQUEST,
        )
    try:
        summary = import_records(
            project_name=data["project"],
            records=api_records(data["records"]),
            source=data.get("source") or "api",
            created_by=request.user,
            round=data.get("round"),
            strict=data.get("strict", False),
        )
    except ImportFailed as exc:
        return ApiResponse(
            {
                "detail": str(exc).splitlines()[0],
                "errors": exc.errors,
                "summary": exc.summary.as_dict() if exc.summary else None,
            },
            status=status.HTTP_400_BAD_REQUEST,
        )
    return ApiResponse(summary.as_dict(), status=status.HTTP_201_CREATED)


@extend_schema(
    parameters=[
        OpenApiParameter("round", OpenApiTypes.INT, many=True, description="Only these rounds (repeatable)."),
        OpenApiParameter("consensus", OpenApiTypes.BOOL, description="Include every prompt's consensus tiers."),
    ],
    responses={200: OpenApiTypes.OBJECT},
    summary="Agreement and quality statistics of a project",
)
@api_view(["GET"])
@permission_classes(STAFF)
def quality_view(request: Request, project_id: int) -> ApiResponse:
    project = get_object_or_404(Project, pk=project_id)
    parsed = [parse_id(r) for r in request.query_params.getlist("round")]
    if any(r is None for r in parsed):
        return ApiResponse({"round": ["Rounds are whole numbers (1, 2, …)."]}, status=status.HTTP_400_BAD_REQUEST)
    rounds = sorted(set(parsed)) or None
    include = request.query_params.get("consensus", "").lower() in {"1", "true", "yes"}
    return ApiResponse(project_quality(project=project, rounds=rounds, include_consensus=include))


class SnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = DatasetSnapshot
        fields = ["id", "project", "path", "format", "params", "counts", "content_hash", "created_by", "created_at"]


class ExportRequestSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=100, help_text="Directory name under WORKBENCH_DATA_ROOT/snapshots/.")
    format = serializers.ChoiceField(choices=FORMATS, default="datasets")
    test_fraction = serializers.FloatField(min_value=0, max_value=0.95, default=0.1)
    seed = serializers.IntegerField(default=0)
    drop_flagged = serializers.BooleanField(default=False)
    drop_all_bad = serializers.BooleanField(default=False)
    group = serializers.ChoiceField(choices=GROUPS, default="per-annotator")
    rounds = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=limits.MAX_DB_INT),
                                   required=False, allow_null=True)


@extend_schema(
    methods=["GET"], responses={200: SnapshotSerializer(many=True)}, summary="The project's dataset snapshots"
)
@extend_schema(
    methods=["POST"], request=ExportRequestSerializer, responses={201: SnapshotSerializer},
    summary="Export a dataset snapshot now",
)
@api_view(["GET", "POST"])
@permission_classes(STAFF)
def snapshots_view(request: Request, project_id: int) -> ApiResponse:
    project = get_object_or_404(Project, pk=project_id)
    if request.method == "GET":
        snapshots = DatasetSnapshot.objects.filter(project=project)[:200]
        return ApiResponse(SnapshotSerializer(snapshots, many=True).data)
    body = ExportRequestSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    data = body.validated_data
    try:
        snapshot = export_snapshot(
            project=project,
            out_dir=snapshot_dir_for(project=project, name=data["name"]),
            format=data["format"],
            test_fraction=data["test_fraction"],
            seed=data["seed"],
            drop_flagged=data["drop_flagged"],
            drop_all_bad=data["drop_all_bad"],
            group=data["group"],
            rounds=data.get("rounds") or None,
            created_by=request.user,
        )
    except ExportError as exc:
        return ApiResponse({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    return ApiResponse(SnapshotSerializer(snapshot).data, status=status.HTTP_201_CREATED)
