"""Annotation data: projects, prompts, responses, leased assignments, immutable rankings, drafts, snapshots.

Ranking tiers and display orders store Response primary keys (ints), best tier first. A submitted Ranking
is never updated: a correction is a new Ranking from a new assignment.
"""

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import connection, models, transaction
from django.db.models import Q
from django.utils import timezone

K_MIN_LIMIT, K_MAX_LIMIT = 4, 9
LIKERT_MIN, LIKERT_MAX = 1, 7

# Per-response flags an annotator can set (key → label shown on the page).
RESPONSE_FLAGS = {
    "fails_instruction": "Fails the instruction",
    "harmful": "Harmful or unsafe",
    "made_up_facts": "Made-up facts",
    "unhelpful": "Unhelpful",
    "broken_text": "Broken or unreadable text",
}


def text_hash(text: str) -> str:
    """Stable key for de-duplicating prompts and responses (whitespace-normalised sha256)."""
    normalised = " ".join(text.split())
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


class TaskTypes(models.TextChoices):
    RANKINGS = "rankings", "Rankings"
    DEMONSTRATIONS = "demonstrations", "Demonstrations"
    BOTH = "both", "Rankings and demonstrations"


class DemonstrationStart(models.TextChoices):
    BLANK = "blank", "Write the ideal answer"
    EDIT_BEST = "edit_best", "Edit the best sampled response into the ideal answer"


class PromptFormat(models.TextChoices):
    # The values are training.rlhf.chat_format.PROMPT_FORMATS (the SFT/RM/PPO configs take the same strings).
    PLAIN = "plain", "Plain text"
    CHAT = "chat", "The model's chat template"


class Project(models.Model):
    TaskTypes = TaskTypes
    DemonstrationStart = DemonstrationStart
    PromptFormat = PromptFormat

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    guidelines = models.TextField(blank=True, help_text="Markdown shown to annotators.")
    guidelines_version = models.PositiveIntegerField(
        default=1, help_text="Bump when the guidelines change; every ranking records the version it saw."
    )
    k_min = models.PositiveSmallIntegerField(
        default=4, validators=[MinValueValidator(K_MIN_LIMIT), MaxValueValidator(K_MAX_LIMIT)]
    )
    k_max = models.PositiveSmallIntegerField(
        default=9, validators=[MinValueValidator(K_MIN_LIMIT), MaxValueValidator(K_MAX_LIMIT)]
    )
    annotators_per_prompt = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1)], help_text="How many independent rankings each prompt needs."
    )
    lease_minutes = models.PositiveIntegerField(
        default=30, validators=[MinValueValidator(1)], help_text="How long a task stays reserved for an annotator."
    )
    annotators = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="annotation_projects", blank=True)
    render_markdown = models.BooleanField(
        default=True, help_text="Show prompts and model output as sanitised Markdown on the ranking page (off: as "
        "plain text). Annotators can always switch one response to its raw text."
    )
    task_types = models.CharField(
        max_length=16, choices=TaskTypes.choices, default=TaskTypes.RANKINGS,
        help_text="What annotators do: rank sampled responses, write demonstrations (ideal answers), or both.",
    )
    demonstration_start = models.CharField(
        max_length=16, choices=DemonstrationStart.choices, default=DemonstrationStart.BLANK,
        help_text="What a demonstration task starts from: an empty editor, or the sampled responses shown beside "
        "it so the annotator can edit one of them into the ideal answer.",
    )
    prompt_format = models.CharField(
        max_length=16, choices=PromptFormat.choices, default=PromptFormat.PLAIN,
        help_text="How a prompt becomes model input in sampling, SFT, the RM and PPO: the text as-is, or the "
        "model's chat template (user turn = the prompt).",
    )
    system_prompt = models.TextField(
        blank=True, help_text="System message put first under the chat template (empty: none; plain format: unused)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(k_min__lte=models.F("k_max")), name="project_k_min_le_k_max"),
            models.CheckConstraint(
                condition=Q(k_min__gte=K_MIN_LIMIT) & Q(k_max__lte=K_MAX_LIMIT), name="project_k_within_4_9"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        before = None
        if self.pk is not None:
            before = Project.objects.filter(pk=self.pk).values_list("k_min", "annotators_per_prompt").first()
        super().save(*args, **kwargs)
        if before is not None and before != (self.k_min, self.annotators_per_prompt):
            # Which prompts are rankable and which are complete depends on these two fields.
            refresh_queue_fields(prompt_ids=Prompt.objects.filter(project=self).values_list("pk", flat=True))

    def clean(self) -> None:
        if self.k_min > self.k_max:
            raise ValidationError({"k_min": "k_min must not exceed k_max."})

    @property
    def wants_rankings(self) -> bool:
        return self.task_types in (TaskTypes.RANKINGS, TaskTypes.BOTH)

    @property
    def wants_demonstrations(self) -> bool:
        return self.task_types in (TaskTypes.DEMONSTRATIONS, TaskTypes.BOTH)


# "Open since forever": the value of `Prompt.open_from` for a prompt with a free slot right now.
ALWAYS_OPEN = datetime(1970, 1, 1, tzinfo=UTC)


def refresh_queue_fields(*, prompt_ids: Iterable[int], now: datetime | None = None, chunk: int = 2000) -> None:
    """Recompute the queue's stored fields of these prompts from their rows: ``num_responses``,
    ``num_rankings`` and ``open_from`` (see `Prompt`). Call it in the transaction that changed their
    responses, rankings or leases.

    Each prompt row is locked before it is recounted, and the recount is a new statement: under READ COMMITTED
    it sees every change committed before the lock was granted, and every writer of those rows recounts after
    its own change while holding the lock, so the last recount in commit order has seen them all.
    (Plain SQL: it runs on every lease and submit, and the ORM's compilation of these subqueries cost more
    than running them.)
    """
    now = now or timezone.now()
    ids = sorted(set(prompt_ids))
    ops = connection.ops
    when = ops.adapt_datetimefield_value(now)
    always = ops.adapt_datetimefield_value(ALWAYS_OPEN)
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        marks = ", ".join(["%s"] * len(part))
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.features.has_select_for_update:
                # Lock order as in the queue (prompts by id); NO KEY: inserts that reference them go on.
                no_key = " NO KEY" if connection.features.has_select_for_no_key_update else ""
                cursor.execute(f"SELECT id FROM annotate_prompt WHERE id IN ({marks}) ORDER BY id FOR{no_key} UPDATE",
                               part)
            cursor.execute(_RECOUNT_SQL.format(marks=marks), part)
            cursor.execute(_OPEN_FROM_SQL.format(marks=marks), [when, always, when, *part])


_RECOUNT_SQL = """
UPDATE annotate_prompt SET
  num_responses = (SELECT COUNT(*) FROM annotate_response r WHERE r.prompt_id = annotate_prompt.id),
  num_rankings = (SELECT COUNT(*) FROM annotate_ranking k WHERE k.prompt_id = annotate_prompt.id)
WHERE id IN ({marks})
"""
# NULL: too few responses or complete; ALWAYS_OPEN: a slot is free now; else the first live lease's expiry.
_OPEN_FROM_SQL = """
UPDATE annotate_prompt SET open_from = CASE
  WHEN num_responses < (SELECT p.k_min FROM annotate_project p WHERE p.id = annotate_prompt.project_id)
    OR num_rankings >= (SELECT p.annotators_per_prompt FROM annotate_project p WHERE p.id = annotate_prompt.project_id)
    THEN NULL
  WHEN num_rankings + (SELECT COUNT(*) FROM annotate_assignment a WHERE a.prompt_id = annotate_prompt.id
                       AND a.state = 'leased' AND a.lease_expires_at > %s)
       < (SELECT p.annotators_per_prompt FROM annotate_project p WHERE p.id = annotate_prompt.project_id)
    THEN %s
  ELSE (SELECT MIN(a.lease_expires_at) FROM annotate_assignment a WHERE a.prompt_id = annotate_prompt.id
        AND a.state = 'leased' AND a.lease_expires_at > %s)
END
WHERE id IN ({marks})
"""


class _CountedQuerySet(models.QuerySet):
    """Bulk writes of responses and rankings keep their prompts' queue fields in step."""

    def bulk_create(self, objs, *args, **kwargs):
        created = super().bulk_create(objs, *args, **kwargs)
        refresh_queue_fields(prompt_ids={obj.prompt_id for obj in created})
        return created

    def delete(self):
        prompt_ids = set(self.values_list("prompt_id", flat=True))
        result = super().delete()
        refresh_queue_fields(prompt_ids=prompt_ids)
        return result


class Prompt(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    text = models.TextField()
    text_hash = models.CharField(max_length=64, editable=False)
    external_id = models.CharField(max_length=200, blank=True, help_text="The `id` from the imported record.")
    metadata = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=500, blank=True, help_text="File or API call it came from.")
    round = models.PositiveIntegerField(default=1, help_text="Annotation round (a new round per new policy).")
    created_at = models.DateTimeField(auto_now_add=True)
    # The queue's index (kept by `refresh_queue_fields` in the transactions that change them; the recount under
    # the prompt's lock in annotate.services.queue stays the source of truth):
    num_responses = models.PositiveIntegerField(default=0, editable=False)
    num_rankings = models.PositiveIntegerField(default=0, editable=False)
    num_demonstrations = models.PositiveIntegerField(
        default=0, editable=False,
        help_text="Submitted + accepted demonstrations (kept by Demonstration.save; the demonstration queue's index).",
    )
    open_from = models.DateTimeField(
        null=True, blank=True, editable=False,
        help_text="When the prompt may next have a free slot: ALWAYS_OPEN when it has one now; the earliest "
        "expiry of its live leases when they fill it; NULL when it is complete or has too few responses.",
    )

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "round", "text_hash"], name="prompt_unique_text_per_round")
        ]
        indexes = [
            models.Index(fields=["project", "round"]),
            # Fewest rankings first, oldest round first, lowest id: the next task is the first row of this index
            # whose open_from has passed; complete and unrankable prompts are not in it.
            models.Index(
                fields=["project", "num_rankings", "round", "id", "open_from"],
                condition=Q(open_from__isnull=False),
                name="prompt_queue_order",
            ),
            # The demonstration queue walks this from its start (fewest demonstrations, oldest round, lowest id).
            models.Index(fields=["project", "num_demonstrations", "round", "id"], name="prompt_demo_queue_order"),
        ]

    def __str__(self) -> str:
        return self.text[:80]

    def save(self, *args, **kwargs):
        self.text_hash = text_hash(self.text)
        super().save(*args, **kwargs)


class Response(models.Model):
    class Origin(models.TextChoices):
        IMPORTED = "imported", "Imported"
        MODEL = "model", "Sampled from a model"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="responses")
    text = models.TextField()
    text_hash = models.CharField(max_length=64, editable=False)
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.IMPORTED)
    model_path = models.CharField(max_length=500, blank=True, help_text="Model path or hub id it was sampled from.")
    model_revision = models.CharField(max_length=128, blank=True, help_text="Hub revision or content hash.")
    sampling_params = models.JSONField(default=dict, blank=True)
    round = models.PositiveIntegerField(default=1)
    training_run = models.ForeignKey(
        "training.TrainingRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="sampled_responses"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = _CountedQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.text[:80]

    def save(self, *args, **kwargs):
        self.text_hash = text_hash(self.text)
        with transaction.atomic():
            super().save(*args, **kwargs)
            refresh_queue_fields(prompt_ids=[self.prompt_id])

    def delete(self, *args, **kwargs):
        with transaction.atomic():
            result = super().delete(*args, **kwargs)
            refresh_queue_fields(prompt_ids=[self.prompt_id])
        return result


class Assignment(models.Model):
    """One annotator's lease on one prompt. At most one per (prompt, annotator)."""

    class State(models.TextChoices):
        LEASED = "leased", "Leased"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"
        EXPIRED = "expired", "Expired"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    state = models.CharField(max_length=16, choices=State.choices, default=State.LEASED)
    display_order = models.JSONField(default=list, help_text="Response ids in the order shown to this annotator.")
    leased_at = models.DateTimeField()
    lease_expires_at = models.DateTimeField()
    skip_reason = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-leased_at"]
        constraints = [
            models.UniqueConstraint(fields=["prompt", "annotator"], name="assignment_unique_prompt_annotator")
        ]
        indexes = [models.Index(fields=["state", "lease_expires_at"]), models.Index(fields=["annotator", "state"])]

    def __str__(self) -> str:
        return f"{self.annotator} · prompt {self.prompt_id} · {self.state}"


class Ranking(models.Model):
    """An immutable ranking of one prompt's responses: tiers of Response ids, best tier first."""

    class Source(models.TextChoices):
        HUMAN = "human", "Human annotator"
        SIMULATED = "simulated", "Simulated annotator"
        IMPORTED = "imported", "Imported"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="rankings")
    assignment = models.OneToOneField(
        Assignment, null=True, blank=True, on_delete=models.PROTECT, related_name="ranking"
    )
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="rankings"
    )
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.HUMAN)
    source_detail = models.CharField(max_length=500, blank=True, help_text="Where an imported ranking came from.")
    tiers = models.JSONField(help_text="Lists of Response ids, best tier first; a tier of several is a tie.")
    display_order = models.JSONField(default=list)
    ratings = models.JSONField(default=dict, blank=True, help_text="Response id → Likert 1–7.")
    flags = models.JSONField(default=dict, blank=True, help_text="Response id → list of flag keys.")
    rationale = models.TextField(blank=True)
    all_bad = models.BooleanField(default=False)
    seconds_spent = models.FloatField(default=0)
    guideline_version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = _CountedQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["prompt", "created_at"])]

    def __str__(self) -> str:
        return f"ranking {self.pk} of prompt {self.prompt_id}"

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.pop("_allow_update", False):
            raise ValidationError("A submitted ranking is immutable.")
        with transaction.atomic():
            super().save(*args, **kwargs)
            refresh_queue_fields(prompt_ids=[self.prompt_id])

    def delete(self, *args, **kwargs):
        with transaction.atomic():
            result = super().delete(*args, **kwargs)
            refresh_queue_fields(prompt_ids=[self.prompt_id])
        return result


class Draft(models.Model):
    """Autosaved partial work on an assignment (tiers, ratings, flags, rationale…), restored on reload."""

    assignment = models.OneToOneField(Assignment, on_delete=models.CASCADE, related_name="draft")
    state = models.JSONField(default=dict)
    revision = models.PositiveIntegerField(default=0, help_text="Bumped on every save; stale saves are refused.")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"draft of {self.assignment_id}"


class _DemonstrationQuerySet(models.QuerySet):
    def bulk_create(self, objs, *args, **kwargs):
        created = super().bulk_create(objs, *args, **kwargs)
        refresh_demonstration_counts(prompt_ids={obj.prompt_id for obj in created})
        return created

    def update(self, **kwargs):
        prompt_ids = set(self.values_list("prompt_id", flat=True)) if "status" in kwargs else set()
        result = super().update(**kwargs)
        if prompt_ids:
            refresh_demonstration_counts(prompt_ids=prompt_ids)
        return result

    def delete(self):
        prompt_ids = set(self.values_list("prompt_id", flat=True))
        result = super().delete()
        refresh_demonstration_counts(prompt_ids=prompt_ids)
        return result


class Demonstration(models.Model):
    """One annotator's ideal answer to one prompt (the SFT data), from draft to review.

    The row is its own draft and lease: ``status = draft`` while the annotator writes (autosaves bump
    ``revision``; a save built on an older revision is refused, as ranking drafts are), then ``submitted``
    (immutable for its author), then ``accepted`` or ``rejected`` by staff. Only accepted ones are exported.
    A prompt needs ``project.annotators_per_prompt`` demonstrations; submitted, accepted and live-leased drafts
    fill its slots, rejected and skipped ones free them.
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SUBMITTED = "submitted", "Submitted, awaiting review"
        ACCEPTED = "accepted", "Accepted"
        REJECTED = "rejected", "Rejected"
        SKIPPED = "skipped", "Skipped"

    class Source(models.TextChoices):
        HUMAN = "human", "Human annotator"
        SIMULATED = "simulated", "Simulated annotator"
        IMPORTED = "imported", "Imported"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="demonstrations")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="demonstrations"
    )
    text = models.TextField(blank=True)
    submitted_text = models.TextField(blank=True, help_text="The text as its author submitted it (before review edits).")
    started_from = models.ForeignKey(
        Response, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The sampled response the annotator started editing from, if any.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    revision = models.PositiveIntegerField(default=0, help_text="Bumped on every autosave; stale saves are refused.")
    leased_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    skip_reason = models.TextField(blank=True)
    seconds_spent = models.FloatField(default=0)
    guideline_version = models.PositiveIntegerField(default=1)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.HUMAN)
    source_detail = models.CharField(max_length=500, blank=True, help_text="File or call an import came from.")
    review_note = models.TextField(blank=True)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = _DemonstrationQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["prompt", "annotator"], condition=Q(annotator__isnull=False),
                name="demonstration_unique_prompt_annotator",
            )
        ]
        indexes = [models.Index(fields=["prompt", "status"]), models.Index(fields=["annotator", "status"]),
                   models.Index(fields=["status", "submitted_at"])]

    def __str__(self) -> str:
        return f"demonstration {self.pk} of prompt {self.prompt_id} · {self.status}"

    def save(self, *args, **kwargs):
        # Autosaves leave the status alone and skip the recount; a status change recounts its prompt.
        changed = self.pk is None or getattr(self, "_loaded_status", None) != self.status
        with transaction.atomic():
            super().save(*args, **kwargs)
            if changed:
                refresh_demonstration_counts(prompt_ids=[self.prompt_id])
        self._loaded_status = self.status

    def delete(self, *args, **kwargs):
        with transaction.atomic():
            result = super().delete(*args, **kwargs)
            refresh_demonstration_counts(prompt_ids=[self.prompt_id])
        return result

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        instance._loaded_status = instance.__dict__.get("status")
        return instance


def refresh_demonstration_counts(*, prompt_ids: Iterable[int], chunk: int = 2000) -> None:
    """Recount ``Prompt.num_demonstrations`` (submitted + accepted) of these prompts, in the caller's transaction."""
    ids = sorted(set(prompt_ids))
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        marks = ", ".join(["%s"] * len(part))
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE annotate_prompt SET num_demonstrations = (SELECT COUNT(*) FROM annotate_demonstration d "
                f"WHERE d.prompt_id = annotate_prompt.id AND d.status IN ('submitted', 'accepted')) WHERE id IN ({marks})",
                part,
            )


class DatasetSnapshot(models.Model):
    """An exported dataset on disk (manifest.json beside the data), named by its content hash: a ranking (RM)
    snapshot or an SFT (demonstrations) snapshot."""

    class Kind(models.TextChoices):
        RANKINGS = "rankings", "Rankings (reward model)"
        SFT = "sft", "Demonstrations (SFT)"

    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="snapshots")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.RANKINGS, db_index=True)
    path = models.CharField(max_length=1000)
    format = models.CharField(max_length=16)
    params = models.JSONField(default=dict)
    counts = models.JSONField(default=dict)
    content_hash = models.CharField(max_length=64, db_index=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.project or 'external'} · {self.content_hash[:12]}"
