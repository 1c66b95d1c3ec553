"""REST API of the dashboard (mounted at /api/): list and inspect runs, read their curves and samples, launch
RM and PPO runs, cancel and resume them, sample a new round, queue an RM check. Staff only (session or
token); the launch endpoints validate exactly as the dashboard's forms do (same form classes), so paths are
limited to the configured roots here too.
"""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.models import Project
from training import forms as launch_forms
from training import jobs, launching, selectors
from training.models import Job, TrainingRun

STAFF = [IsAdminUser]


class RunSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    headline = serializers.SerializerMethodField()
    duration_seconds = serializers.SerializerMethodField()

    class Meta:
        model = TrainingRun
        fields = [
            "id", "kind", "name", "status", "created_by", "created_at", "started_at", "finished_at",
            "duration_seconds", "heartbeat_at", "host", "pid", "exit_code", "cancel_requested", "project",
            "snapshot", "reward_model_run", "resumed_from", "output_dir", "task_id", "headline", "summary",
        ]

    def get_headline(self, run: TrainingRun) -> dict | None:
        found = selectors.headline(run)
        return {"label": found[0], "value": found[1]} if found else None

    def get_duration_seconds(self, run: TrainingRun) -> float | None:
        return run.duration.total_seconds() if run.duration is not None else None


class RunDetailSerializer(RunSerializer):
    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "config", "evaluation", "outputs", "error", "log_path", "command"]


class JobSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Job
        fields = [
            "id", "kind", "status", "project", "training_run", "params", "result", "error", "created_by",
            "created_at", "started_at", "finished_at", "heartbeat_at", "host", "pid",
        ]


class SampleSerializer(serializers.Serializer):
    step = serializers.IntegerField()
    prompt = serializers.CharField()
    response = serializers.CharField()
    reward = serializers.FloatField(allow_null=True)
    score = serializers.FloatField(allow_null=True)
    kl = serializers.FloatField(allow_null=True)
    extra = serializers.JSONField()


class RunList(generics.ListAPIView):
    """Training runs, newest first; filter with ?kind=sft|rm|ppo and ?status=…."""

    serializer_class = RunSerializer
    permission_classes = STAFF

    def get_queryset(self):
        kind = self.request.query_params.get("kind") or None
        status_ = self.request.query_params.get("status") or None
        return selectors.list_runs(kind=kind, status=status_)

    @extend_schema(parameters=[
        OpenApiParameter("kind", OpenApiTypes.STR, enum=TrainingRun.Kind.values),
        OpenApiParameter("status", OpenApiTypes.STR, enum=TrainingRun.Status.values),
    ])
    def get(self, request, *args, **kwargs):
        jobs.reap_stale_runs()
        return super().get(request, *args, **kwargs)


class RunDetail(generics.RetrieveAPIView):
    serializer_class = RunDetailSerializer
    permission_classes = STAFF
    queryset = TrainingRun.objects.select_related("created_by")
    lookup_url_kwarg = "run_id"


@extend_schema(
    parameters=[
        OpenApiParameter("after_id", OpenApiTypes.INT, description="The `cursor` of a previous answer: only the "
                                                                   "values written since."),
        OpenApiParameter("name", OpenApiTypes.STR, many=True, description="Only these metrics."),
    ],
    responses={200: OpenApiTypes.OBJECT},
)
@api_view(["GET"])
@permission_classes(STAFF)
def run_metrics(request: Request, run_id: int) -> Response:
    """Curves: {"run", "status", "series": {name: [[step, value], …]}, "cursor"}; poll with ?after_id=cursor."""
    run = get_object_or_404(TrainingRun, pk=run_id)
    after = request.query_params.get("after_id")
    try:
        after_id = int(after) if after not in (None, "") else None
    except ValueError:
        return Response({"after_id": ["must be an integer"]}, status=status.HTTP_400_BAD_REQUEST)
    series, cursor = selectors.run_series(
        run=run, after_id=after_id, names=request.query_params.getlist("name") or None
    )
    return Response({"run": run.pk, "status": run.status, "series": series, "cursor": cursor})


@extend_schema(
    parameters=[OpenApiParameter("step", OpenApiTypes.INT, description="Default: the latest sample table.")],
    responses={200: SampleSerializer(many=True)},
)
@api_view(["GET"])
@permission_classes(STAFF)
def run_samples(request: Request, run_id: int) -> Response:
    run = get_object_or_404(TrainingRun, pk=run_id)
    step = request.query_params.get("step")
    try:
        step_value = int(step) if step not in (None, "") else None
    except ValueError:
        return Response({"step": ["must be an integer"]}, status=status.HTTP_400_BAD_REQUEST)
    _, samples = selectors.run_samples(run=run, step=step_value, limit=500)
    return Response(SampleSerializer(samples, many=True).data)


def _form_errors(form) -> Response:
    errors = {name: [str(e) for e in errs] for name, errs in form.errors.items()}
    if "__all__" in errors:
        errors["non_field_errors"] = errors.pop("__all__")
    return Response(errors, status=status.HTTP_400_BAD_REQUEST)


def _launch_failed(form, exc: launching.LaunchError) -> Response:
    """The pipeline's refusal, as a form error on the field of the option it names."""
    form.launch_failed(exc)
    return _form_errors(form)


def _launch(request: Request, form_class, *, kind: str, sources, initial_from: tuple[str, ...] = ()) -> Response:
    """The dashboard's launch form on the JSON body: 201 with the queued run, or 400 naming the fields.
    `sources(cleaned_data, form)` gives the kind's inputs for the run pipeline; options left out take the
    form's defaults as a form started from the request's `initial_from` fields would show them."""
    defaults = form_class(initial={name: request.data.get(name) for name in initial_from})
    form = form_class(data=launch_forms.api_form_data(defaults, request.data))
    if not form.is_valid():
        return _form_errors(form)
    data = form.cleaned_data
    try:
        run = launching.launch_run(kind=kind, options=form.options, name=data.get("name", ""),
                                   created_by=request.user, **sources(data, form))
    except launching.LaunchError as exc:
        return _launch_failed(form, exc)
    return Response(RunDetailSerializer(run).data, status=status.HTTP_201_CREATED)


@extend_schema(
    request=OpenApiTypes.OBJECT, responses={201: RunDetailSerializer},
    description="Fields as on the dashboard's form: `snapshot` (the id of a demonstrations snapshot; its prompt "
                "format is used) or `project` (id: export its accepted demonstrations now, `export_test_fraction`), "
                "`base_model` (a model directory under the model roots), `name`, and any SFTConfig option by name.",
)
@api_view(["POST"])
@permission_classes(STAFF)
def launch_sft(request: Request) -> Response:
    return _launch(request, launch_forms.SFTLaunchForm, kind="sft", sources=lambda data, form: {
        "snapshot": data.get("snapshot"), "export_project": data.get("project"),
        "export_options": form.export_options()})


@extend_schema(
    request=OpenApiTypes.OBJECT, responses={201: RunDetailSerializer},
    description="Fields as on the dashboard's form: `snapshot` (id) or `project` (id, export now), `base_model` "
                "(a model directory under the model roots), `name`, export options, and any RewardModelConfig "
                "option by name.",
)
@api_view(["POST"])
@permission_classes(STAFF)
def launch_rm(request: Request) -> Response:
    # options left out take the form's defaults, the prompt format that of the chosen snapshot or project
    return _launch(request, launch_forms.RMLaunchForm, kind="rm", sources=lambda data, form: {
        "snapshot": data.get("snapshot"), "export_project": data.get("project"),
        "export_options": form.export_options()},
                   initial_from=("snapshot", "project"))


@extend_schema(
    request=OpenApiTypes.OBJECT, responses={201: RunDetailSerializer},
    description="Fields as on the dashboard's form: `policy` (a model directory under the model roots or a "
                "finished PPO run's output), `reward_model_run` (id), `prompt_project` (id) or `prompt_file` "
                "(under the data root), `name`, and any PPOConfig option by name.",
)
@api_view(["POST"])
@permission_classes(STAFF)
def launch_ppo(request: Request) -> Response:
    # options left out take the form's defaults, the prompt format that of the chosen reward-model run
    return _launch(request, launch_forms.PPOLaunchForm, kind="ppo", sources=lambda data, form: {
        "reward_model_run": data["reward_model_run"], "prompt_project": data.get("prompt_project")},
                   initial_from=("reward_model_run", "prompt_project"))


@extend_schema(request=None, responses={200: RunDetailSerializer, 409: OpenApiTypes.OBJECT})
@api_view(["POST"])
@permission_classes(STAFF)
def cancel_run(request: Request, run_id: int) -> Response:
    """Graceful stop: the trainer checkpoints and ends as cancelled (a queued run is cancelled at once)."""
    run = get_object_or_404(TrainingRun, pk=run_id)
    try:
        launching.cancel_run(run=run)
    except launching.RunConflict as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    return Response(RunDetailSerializer(run).data)


@extend_schema(request=None, responses={200: RunDetailSerializer, 201: RunDetailSerializer,
                                        400: OpenApiTypes.OBJECT, 409: OpenApiTypes.OBJECT})
@api_view(["POST"])
@permission_classes(STAFF)
def resume_run(request: Request, run_id: int) -> Response:
    """Queue this run again, continuing from its last checkpoint (a retry from scratch when it has none): the
    same run, its metrics appended from the resumed step. While it is queued or running after a resume, it is
    answered as it is (200): a repeated request queues one job. A run that is active (never resumed) or
    succeeded cannot be resumed (409, with the reason)."""
    run = get_object_or_404(TrainingRun, pk=run_id)
    already = run.is_active
    try:
        new_run = launching.resume_run(run=run, created_by=request.user)
    except launching.RunConflict as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    except launching.LaunchError as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    if already:
        return Response(RunDetailSerializer(new_run).data)
    return Response(RunDetailSerializer(new_run).data, status=status.HTTP_201_CREATED)


@extend_schema(
    request=OpenApiTypes.OBJECT, responses={201: JobSerializer},
    description="Fields as on the dashboard's form: `project` (id), `model` (a model directory under the roots), "
                "`k`, sampling options, `from_round`, `max_prompts`, `baseline_model`, `baseline_k`; "
                "`training_run` (id of a succeeded PPO run) links the round to the run.",
)
@api_view(["POST"])
@permission_classes(STAFF)
def new_round(request: Request) -> Response:
    run = None
    if request.data.get("training_run") not in (None, ""):
        run = get_object_or_404(TrainingRun, pk=request.data["training_run"], kind=TrainingRun.Kind.PPO,
                                status=TrainingRun.Status.SUCCEEDED)
    data = launch_forms.api_form_data(launch_forms.NewRoundForm(run=run), request.data)
    form = launch_forms.NewRoundForm(data=data, run=run)
    if not form.is_valid():
        return _form_errors(form)
    cleaned = form.cleaned_data
    try:
        job = jobs.launch_new_round(
            project=cleaned["project"], model_path=cleaned["model"], training_run=run, k=cleaned["k"],
            sampling=form.sampling_params(), from_round=cleaned.get("from_round"),
            max_prompts=cleaned.get("max_prompts"), baseline_model_path=cleaned.get("baseline_model") or None,
            baseline_k=cleaned.get("baseline_k") or 0, created_by=request.user,
        )
    except launching.LaunchError as exc:
        return Response({"non_field_errors": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
    return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)


@extend_schema(request=OpenApiTypes.OBJECT, responses={201: JobSerializer},
               description="`rm_run`: id of a succeeded reward-model run.")
@api_view(["POST"])
@permission_classes(STAFF)
def rm_check(request: Request, project_id: int) -> Response:
    """Queue scoring the project's rankings made after the RM's data snapshot with that RM."""
    project = get_object_or_404(Project, pk=project_id)
    data = launch_forms.api_form_data(launch_forms.RMCheckForm(project=project), request.data)
    form = launch_forms.RMCheckForm(data=data, project=project)
    if not form.is_valid():
        return _form_errors(form)
    try:
        job = jobs.launch_rm_check(project=project, rm_run=form.cleaned_data["rm_run"], created_by=request.user)
    except launching.LaunchError as exc:
        return Response({"non_field_errors": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
    return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)


class JobDetail(generics.RetrieveAPIView):
    serializer_class = JobSerializer
    permission_classes = STAFF
    queryset = Job.objects.select_related("created_by")
    lookup_url_kwarg = "job_id"
