"""Django admin for every annotation model. Rankings are immutable: shown read-only."""

from django.contrib import admin
from django.utils import timezone

from annotate.models import (
    Assignment,
    DatasetSnapshot,
    Demonstration,
    Draft,
    Project,
    Prompt,
    Ranking,
    Response,
)


class ResponseInline(admin.TabularInline):
    model = Response
    extra = 0
    fields = ("text", "origin", "model_path", "round")
    show_change_link = True


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "k_min", "k_max", "annotators_per_prompt", "lease_minutes", "guidelines_version",
                    "prompt_count", "created_at")
    search_fields = ("name", "description")
    filter_horizontal = ("annotators",)
    readonly_fields = ("created_at",)

    @admin.display(description="prompts")
    def prompt_count(self, obj: Project) -> int:
        return obj.prompts.count()


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ("id", "short_text", "project", "round", "external_id", "response_count", "created_at")
    list_filter = ("project", "round")
    search_fields = ("text", "external_id")
    readonly_fields = ("text_hash", "created_at")
    inlines = [ResponseInline]
    list_select_related = ("project",)

    @admin.display(description="text")
    def short_text(self, obj: Prompt) -> str:
        return obj.text[:80]

    @admin.display(description="responses")
    def response_count(self, obj: Prompt) -> int:
        return obj.responses.count()


@admin.register(Response)
class ResponseAdmin(admin.ModelAdmin):
    list_display = ("id", "short_text", "prompt_id", "origin", "model_path", "round", "created_at")
    list_filter = ("origin", "round", "prompt__project")
    search_fields = ("text", "model_path")
    readonly_fields = ("text_hash", "created_at")
    raw_id_fields = ("prompt", "training_run")

    @admin.display(description="text")
    def short_text(self, obj: Response) -> str:
        return obj.text[:80]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ("id", "annotator", "prompt_id", "project", "state", "lease_live", "leased_at", "lease_expires_at",
                    "finished_at")
    list_filter = ("state", "prompt__project")
    search_fields = ("annotator__username", "skip_reason")
    raw_id_fields = ("prompt", "annotator")
    list_select_related = ("annotator", "prompt__project")
    date_hierarchy = "leased_at"

    @admin.display(description="project")
    def project(self, obj: Assignment):
        return obj.prompt.project

    @admin.display(boolean=True, description="lease live")
    def lease_live(self, obj: Assignment) -> bool:
        return obj.state == Assignment.State.LEASED and obj.lease_expires_at > timezone.now()


@admin.register(Ranking)
class RankingAdmin(admin.ModelAdmin):
    list_display = ("id", "prompt_id", "project", "annotator", "source", "all_bad", "seconds_spent",
                    "guideline_version", "created_at")
    list_filter = ("source", "all_bad", "prompt__project")
    search_fields = ("annotator__username", "rationale", "source_detail")
    list_select_related = ("annotator", "prompt__project")

    @admin.display(description="project")
    def project(self, obj: Ranking):
        return obj.prompt.project

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        # Viewing is allowed (read-only page); a submitted ranking is never edited.
        return False


@admin.register(Draft)
class DraftAdmin(admin.ModelAdmin):
    list_display = ("id", "assignment", "revision", "updated_at")
    readonly_fields = ("updated_at",)
    raw_id_fields = ("assignment",)
    search_fields = ("assignment__annotator__username",)


@admin.register(Demonstration)
class DemonstrationAdmin(admin.ModelAdmin):
    list_display = ("id", "prompt", "annotator", "status", "source", "revision", "reviewer", "updated_at")
    list_filter = ("status", "source", "prompt__project")
    search_fields = ("text", "annotator__username", "source_detail")
    raw_id_fields = ("prompt", "annotator", "reviewer", "started_from")
    readonly_fields = ("submitted_text", "created_at", "updated_at")
    list_select_related = ("prompt", "annotator", "reviewer")


@admin.register(DatasetSnapshot)
class DatasetSnapshotAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "kind", "format", "short_hash", "path", "created_by", "created_at")
    list_filter = ("kind", "format", "project")
    search_fields = ("path", "content_hash")
    readonly_fields = ("content_hash", "counts", "params", "created_at")

    @admin.display(description="hash")
    def short_hash(self, obj: DatasetSnapshot) -> str:
        return obj.content_hash[:12]
