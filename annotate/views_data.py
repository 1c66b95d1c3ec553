"""Staff pages for data in and out: upload prompts into a project, export a dataset snapshot.

Both call the same services as the commands and the API (annotate.services.importing / exporting).
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from annotate.models import DatasetSnapshot, Project
from annotate.services.exporting import FORMATS, GROUPS, ExportError, export_snapshot, snapshot_dir_for
from annotate.services.importing import UPLOAD_FORMATS, ImportFailed, import_upload


def _staff_project(request: HttpRequest, project_id: int) -> Project:
    if not request.user.is_staff:
        raise PermissionDenied("Only staff can import and export data.")
    return get_object_or_404(Project, pk=project_id)


def upload_too_large(request: HttpRequest) -> str | None:
    """The error for a request body over WORKBENCH_MAX_UPLOAD_BYTES (checked before the body is parsed)."""
    limit = settings.WORKBENCH_MAX_UPLOAD_BYTES
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        return (
            f"The upload is {filesizeformat(length)}; the limit is {filesizeformat(limit)} "
            "(WORKBENCH_MAX_UPLOAD_BYTES). Import larger files with `manage.py import_prompts`."
        )
    return None


class UploadForm(forms.Form):
    file = forms.FileField(
        help_text="JSONL, CSV or Parquet: one record per line/row with a 'prompt', optionally 'id', 'metadata', "
        "'responses' and 'ranking'."
    )
    round = forms.IntegerField(
        required=False, min_value=1, help_text="Round of the imported prompts (default: the project's latest)."
    )
    strict = forms.BooleanField(
        required=False, label="Strict: refuse repeated prompts with other responses",
        help_text="By default a prompt that appears twice with different responses gets them merged "
        "(de-duplicated, counted in the report); strict refuses the whole file instead.",
    )

    def clean_file(self):
        uploaded = self.cleaned_data["file"]
        limit = settings.WORKBENCH_MAX_UPLOAD_BYTES
        if uploaded.size > limit:
            raise forms.ValidationError(
                f"The file is {filesizeformat(uploaded.size)}; the limit is {filesizeformat(limit)} "
                "(WORKBENCH_MAX_UPLOAD_BYTES)."
            )
        if not uploaded.name.lower().endswith(UPLOAD_FORMATS):
            raise forms.ValidationError(f"Upload a {', '.join(UPLOAD_FORMATS)} file.")
        return uploaded


@require_http_methods(["GET", "POST"])
def import_upload_view(request: HttpRequest, project_id: int) -> HttpResponse:
    project = _staff_project(request, project_id)
    errors: list[str] = []
    summary = None
    if request.method == "POST":
        too_large = upload_too_large(request)
        if too_large:
            form = UploadForm()
            errors = [too_large]
        else:
            form = UploadForm(request.POST, request.FILES)
            if form.is_valid():
                try:
                    summary = import_upload(
                        uploaded_file=form.cleaned_data["file"],
                        project_name=project.name,
                        created_by=request.user,
                        round=form.cleaned_data["round"],
                        strict=form.cleaned_data["strict"],
                    )
                except ImportFailed as exc:
                    errors = exc.errors
                    # A file-level problem (no 'prompt' column, not CSV…) rejects no record: no "0 of 0" count.
                    summary = exc.summary if exc.summary is not None and exc.summary.rejected else None
                else:
                    messages.success(request, str(summary))
                    return redirect("annotate_data:import_upload", project_id=project.pk)
    else:
        form = UploadForm()
    status = 400 if errors or (request.method == "POST" and not form.is_valid()) else 200
    return render(
        request,
        "annotate/data/import.html",
        {
            "project": project,
            "form": form,
            "errors": errors,
            "summary": summary,
            "max_upload": settings.WORKBENCH_MAX_UPLOAD_BYTES,
        },
        status=status,
    )


class ExportForm(forms.Form):
    name = forms.SlugField(
        max_length=100, help_text="Directory name under WORKBENCH_DATA_ROOT/snapshots/ (letters, digits, - and _)."
    )
    format = forms.ChoiceField(choices=[(f, f) for f in FORMATS], initial="datasets")
    test_fraction = forms.FloatField(min_value=0, max_value=0.95, initial=0.1, help_text="Share of prompts held out.")
    seed = forms.IntegerField(initial=0, help_text="Seed of the train/test split.")
    group = forms.ChoiceField(
        choices=[(g, g) for g in GROUPS], initial="per-annotator",
        help_text="One record per annotator's ranking, or one Borda consensus ranking per prompt.",
    )
    drop_flagged = forms.BooleanField(required=False, help_text="Leave out rankings with any flag.")
    drop_all_bad = forms.BooleanField(required=False, help_text="Leave out rankings marked 'all bad'.")
    rounds = forms.CharField(required=False, help_text="Only these rounds, e.g. '1, 2' (default: all).")

    def clean_rounds(self):
        text = self.cleaned_data["rounds"].strip()
        if not text:
            return None
        try:
            rounds = sorted({int(part) for part in text.replace(",", " ").split()})
        except ValueError:
            raise forms.ValidationError("Rounds are whole numbers separated by commas.") from None
        if any(r < 1 for r in rounds):
            raise forms.ValidationError("Rounds start at 1.")
        return rounds


@require_http_methods(["GET", "POST"])
def export_view(request: HttpRequest, project_id: int) -> HttpResponse:
    project = _staff_project(request, project_id)
    errors: list[str] = []
    if request.method == "POST":
        form = ExportForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
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
                    rounds=data["rounds"],
                    created_by=request.user,
                )
            except ExportError as exc:
                errors = [str(exc)]
            else:
                counts = snapshot.counts
                messages.success(
                    request,
                    f"Exported {counts['kwise']['train'] + counts['kwise']['test']} rankings "
                    f"({counts['pairwise']['train'] + counts['pairwise']['test']} pairs) to {snapshot.path}; "
                    f"content hash {snapshot.content_hash[:12]}.",
                )
                return redirect("annotate_data:export", project_id=project.pk)
    else:
        form = ExportForm(initial={"name": timezone.now().strftime("%Y%m%d-%H%M%S")})
    snapshots = DatasetSnapshot.objects.filter(project=project).select_related("created_by")[:50]
    return render(
        request,
        "annotate/data/export.html",
        {"project": project, "form": form, "errors": errors, "snapshots": snapshots},
        status=400 if errors or (request.method == "POST" and not form.is_valid()) else 200,
    )
