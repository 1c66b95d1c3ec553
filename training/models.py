"""Training runs and what they report: metrics, sample tables, checkpoints, outputs."""

from pathlib import Path

from django.conf import settings
from django.db import models
from django.utils import timezone


class TrainingRun(models.Model):
    class Kind(models.TextChoices):
        SFT = "sft", "SFT"
        RM = "rm", "Reward model"
        PPO = "ppo", "PPO"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)

    kind = models.CharField(max_length=8, choices=Kind.choices)
    name = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    config = models.JSONField(default=dict, help_text="The trainer's dataclass config, as run.")
    project = models.ForeignKey(
        "annotate.Project", null=True, blank=True, on_delete=models.SET_NULL, related_name="training_runs"
    )
    snapshot = models.ForeignKey(
        "annotate.DatasetSnapshot", null=True, blank=True, on_delete=models.SET_NULL, related_name="training_runs"
    )
    reward_model_run = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="ppo_runs",
        help_text="For PPO: the RM run whose model scores the rollouts.",
    )
    resumed_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="resumes"
    )
    output_dir = models.CharField(max_length=1000, blank=True)
    log_path = models.CharField(max_length=1000, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    host = models.CharField(max_length=255, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    command = models.JSONField(default=list, blank=True, help_text="The argv the worker ran for this run.")
    exit_code = models.IntegerField(null=True, blank=True, help_text="Exit status of the trainer process.")
    task_id = models.CharField(max_length=64, blank=True, help_text="django-tasks result id of the queued job.")
    cancel_requested = models.BooleanField(default=False)
    error = models.TextField(blank=True, help_text="Traceback of a failed run.")
    evaluation = models.JSONField(default=dict, blank=True)
    summary = models.JSONField(default=dict, blank=True, help_text="Headline figures (last loss, accuracy…).")
    outputs = models.JSONField(
        default=dict, blank=True,
        help_text="What the trainer reported it wrote, by name: reward_model, or policy, value_model, policy_adapter.",
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} run {self.pk}" + (f" ({self.name})" if self.name else "")

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    def output(self, name: str) -> Path | None:
        """A directory the trainer reported writing (`outputs[name]`), when it is still there."""
        value = (self.outputs or {}).get(name)
        return Path(value) if value and Path(value).exists() else None

    @property
    def duration(self):
        """Wall time from start to finish (or to now while running); None before it started."""
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at


class Metric(models.Model):
    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="metrics")
    step = models.IntegerField()
    name = models.CharField(max_length=100)
    value = models.FloatField()

    class Meta:
        ordering = ["run", "name", "step"]
        indexes = [models.Index(fields=["run", "name", "step"])]
        constraints = [models.UniqueConstraint(fields=["run", "name", "step"], name="metric_unique_run_name_step")]

    def __str__(self) -> str:
        return f"{self.name}@{self.step}={self.value:g}"


class Sample(models.Model):
    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="samples")
    step = models.IntegerField()
    prompt = models.TextField()
    response = models.TextField()
    reward = models.FloatField(null=True, blank=True, help_text="Total reward (RM score − β·KL …).")
    score = models.FloatField(null=True, blank=True, help_text="Reward-model score.")
    kl = models.FloatField(null=True, blank=True)
    extra = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["run", "step", "id"]
        indexes = [models.Index(fields=["run", "step"])]

    def __str__(self) -> str:
        return f"sample {self.pk} of run {self.run_id} at step {self.step}"


class Checkpoint(models.Model):
    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.IntegerField()
    path = models.CharField(max_length=1000)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "step"]

    def __str__(self) -> str:
        return f"checkpoint of run {self.run_id} at step {self.step}: {self.path}"


class Job(models.Model):
    """A queued background job that is not a training run: sampling a new round from a policy, or scoring the
    newest rankings with a reward model. Executed by the same django-tasks worker, never in a request."""

    class Kind(models.TextChoices):
        NEW_ROUND = "new_round", "New annotation round"
        RM_EVAL = "rm_eval", "Reward model on new rankings"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)

    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    project = models.ForeignKey(
        "annotate.Project", null=True, blank=True, on_delete=models.SET_NULL, related_name="training_jobs"
    )
    training_run = models.ForeignKey(
        TrainingRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs",
        help_text="The PPO run sampled from (new round) or the RM run evaluated.",
    )
    params = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    host = models.CharField(max_length=255, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} job {self.pk}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES
