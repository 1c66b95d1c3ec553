from django.contrib import admin

from training.models import Checkpoint, Job, Metric, Sample, TrainingRun


class CheckpointInline(admin.TabularInline):
    model = Checkpoint
    extra = 0
    readonly_fields = ("step", "path", "created_at")


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "name", "status", "created_by", "created_at", "started_at", "finished_at", "host")
    list_filter = ("kind", "status")
    search_fields = ("name", "output_dir", "host")
    raw_id_fields = ("project", "snapshot", "reward_model_run", "resumed_from", "created_by")
    readonly_fields = ("created_at", "heartbeat_at", "task_id", "command", "exit_code", "pid")
    inlines = [CheckpointInline]


@admin.register(Metric)
class MetricAdmin(admin.ModelAdmin):
    list_display = ("run", "name", "step", "value")
    list_filter = ("name",)
    raw_id_fields = ("run",)


@admin.register(Sample)
class SampleAdmin(admin.ModelAdmin):
    list_display = ("run", "step", "reward", "score", "kl")
    raw_id_fields = ("run",)


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "status", "project", "training_run", "created_by", "created_at", "finished_at")
    list_filter = ("kind", "status")
    raw_id_fields = ("project", "training_run", "created_by")
    readonly_fields = ("created_at", "heartbeat_at", "task_id")
