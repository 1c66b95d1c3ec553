"""REST serializers: output shapes, and input shapes for the OpenAPI schema. Validation of rankings and drafts is
the services' job (one set of rules and messages for the browser and the API)."""

import string

from rest_framework import serializers

from annotate.models import (
    LIKERT_MAX,
    LIKERT_MIN,
    RESPONSE_FLAGS,
    Assignment,
    Project,
    Prompt,
    Ranking,
    Response,
)
from annotate.services.queue import responses_in_display_order
from webapp.limits import MAX_DB_INT


class ProjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["id", "name", "description", "guidelines", "guidelines_version", "k_min", "k_max",
                  "annotators_per_prompt", "lease_minutes", "created_at"]


class ProjectProgressSerializer(serializers.Serializer):
    prompts = serializers.IntegerField()
    rankings_needed = serializers.IntegerField()
    rankings_done = serializers.IntegerField()
    left = serializers.IntegerField()
    mine = serializers.IntegerField()
    mine_today = serializers.IntegerField()
    available_to_me = serializers.IntegerField()
    is_member = serializers.BooleanField()


class DraftSerializer(serializers.Serializer):
    revision = serializers.IntegerField(min_value=0, help_text="The revision your edit is based on (0: no draft yet).")
    state = serializers.JSONField(
        help_text="Any of tiers, ratings, flags, rationale, all_bad, seconds_spent (same shapes as a submission)."
    )
    updated_at = serializers.DateTimeField(read_only=True, allow_null=True)


class TaskSerializer(serializers.ModelSerializer):
    """An assignment as its annotator sees it: the prompt and the responses in their display order."""

    project = serializers.SerializerMethodField()
    prompt = serializers.SerializerMethodField()
    responses = serializers.SerializerMethodField()
    draft = serializers.SerializerMethodField()
    flags = serializers.SerializerMethodField()

    class Meta:
        model = Assignment
        fields = ["id", "state", "project", "prompt", "responses", "display_order", "leased_at", "lease_expires_at",
                  "draft", "flags"]

    def get_project(self, obj: Assignment) -> dict:
        project = obj.prompt.project
        return {"id": project.pk, "name": project.name, "guidelines_version": project.guidelines_version}

    def get_prompt(self, obj: Assignment) -> dict:
        return {"id": obj.prompt.pk, "text": obj.prompt.text, "round": obj.prompt.round}

    def get_responses(self, obj: Assignment) -> list[dict]:
        return [
            {"id": r.pk, "label": string.ascii_uppercase[i], "text": r.text}
            for i, r in enumerate(responses_in_display_order(assignment=obj))
        ]

    def get_draft(self, obj: Assignment) -> dict | None:
        draft = getattr(obj, "draft", None)
        if draft is None:
            return None
        return {"revision": draft.revision, "state": draft.state, "updated_at": draft.updated_at}

    def get_flags(self, obj: Assignment) -> dict[str, str]:
        return dict(RESPONSE_FLAGS)


class NextTaskRequestSerializer(serializers.Serializer):
    project = serializers.IntegerField(required=False, min_value=1, max_value=MAX_DB_INT,
                                       help_text="Project id; any of your projects when omitted.")


class SubmitSerializer(serializers.Serializer):
    tiers = serializers.ListField(
        child=serializers.ListField(child=serializers.IntegerField()),
        help_text="Response ids, best tier first; a tier of several is a tie. Exactly the displayed responses.",
    )
    ratings = serializers.DictField(
        child=serializers.IntegerField(min_value=LIKERT_MIN, max_value=LIKERT_MAX, allow_null=True),
        required=False, help_text="Response id → Likert 1–7.",
    )
    flags = serializers.DictField(
        child=serializers.ListField(child=serializers.ChoiceField(choices=list(RESPONSE_FLAGS))),
        required=False, help_text="Response id → flag keys.",
    )
    rationale = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    all_bad = serializers.BooleanField(required=False, default=False)
    seconds_spent = serializers.FloatField(required=False, min_value=0, allow_null=True)


class SkipSerializer(serializers.Serializer):
    reason = serializers.CharField(help_text="Why this prompt is skipped (required).", allow_blank=True)


class ResponseSerializer(serializers.ModelSerializer):
    class Meta:
        model = Response
        fields = ["id", "text", "origin", "model_path", "model_revision", "sampling_params", "round", "created_at"]


class PromptSerializer(serializers.ModelSerializer):
    responses = ResponseSerializer(many=True, read_only=True)
    ranking_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Prompt
        fields = ["id", "project", "text", "external_id", "metadata", "source", "round", "created_at",
                  "ranking_count", "responses"]


class RankingSerializer(serializers.ModelSerializer):
    annotator = serializers.CharField(source="annotator.username", default=None, read_only=True)
    project = serializers.IntegerField(source="prompt.project_id", read_only=True)

    class Meta:
        model = Ranking
        fields = ["id", "project", "prompt", "assignment", "annotator", "source", "source_detail", "tiers",
                  "display_order", "ratings", "flags", "rationale", "all_bad", "seconds_spent", "guideline_version",
                  "created_at"]
