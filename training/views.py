"""The dashboard: runs list, run page (live curves, samples, evaluation, config, log, lineage, outputs),
compare, launch forms, new round, and annotation statistics per project. Staff only; requests never train.
"""

from __future__ import annotations

import json
import mimetypes
from functools import wraps
from pathlib import Path

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate.models import Project
from annotate.services.project_stats import project_overview, project_statistics
from annotate.services.rounds import latest_round
from training import forms as launch_forms
from training import jobs, launching, selectors
from training.models import Job, TrainingRun

POLL_SECONDS = 3
HTMX_STOP_POLLING = 286  # htmx stops polling an element whose request is answered with this status


def staff_required(view):
    """Staff only: anonymous users go to the login page, everyone else gets 403. Every dashboard request
    also marks runs whose worker went silent (`jobs.reap_stale_runs`: a couple of cheap queries), so nothing
    shows "running" forever even when no cron runs `manage.py reap_stale_runs`."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_staff:
            raise PermissionDenied("The dashboard is for staff.")
        jobs.reap_stale_runs()
        return view(request, *args, **kwargs)

    return wrapped


def _json_for_script(data) -> str:
    """JSON safe to embed in <script type="application/json"> (json_script escapes the same way)."""
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace(
        "&", "\\u0026"
    )


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- Runs list -------------------------------------------------------------------------------------------


@staff_required
@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    kind = request.GET.get("kind") or ""
    status = request.GET.get("status") or ""
    if kind not in TrainingRun.Kind.values:
        kind = ""
    if status not in TrainingRun.Status.values:
        status = ""
    runs = selectors.list_runs(kind=kind or None, status=status or None)
    page = Paginator(runs, 50).get_page(request.GET.get("page"))
    rows = [{"run": run, "headline": selectors.headline(run)} for run in page.object_list]
    any_active = any(row["run"].is_active for row in rows)
    context = {
        "page": page, "rows": rows, "kind": kind, "status": status, "any_active": any_active,
        "kinds": TrainingRun.Kind.choices, "statuses": TrainingRun.Status.choices, "poll_seconds": POLL_SECONDS * 2,
        "recent_jobs": selectors.recent_jobs(limit=5),
    }
    if request.htmx and request.htmx.target == "runs-table":
        response = render(request, "training/_runs_table.html", context)
        if not any_active:
            response.status_code = HTMX_STOP_POLLING
        return response
    return render(request, "training/run_list.html", context)


# --- Run page ----------------------------------------------------------------------------------------------


def _live_context(request: HttpRequest, run: TrainingRun, *, series: dict | None = None, cursor=None) -> dict:
    """What the polled region shows. The poll sends `after_id` (the metric cursor it has) and gets the
    metric rows written since, for the charts to append."""
    if series is None:
        series, cursor = selectors.run_series(run=run, after_id=_int_or_none(request.GET.get("after_id")))
    samples_step = selectors.run_samples(run=run, limit=0)[0]
    return {
        "run": run,
        "headline": selectors.headline(run),
        "live_data": _json_for_script(
            {"series": series, "cursor": cursor, "samples_step": samples_step, "active": run.is_active,
             "status": run.status}
        ),
        "log_tail": selectors.log_tail(run=run),
        "progress": selectors.run_progress(run),
        "summary_values": selectors.summary_values(run),
        "evaluation": selectors.evaluation_view(
            run.evaluation or {},
            annotator_names=selectors.annotator_names(project=run.snapshot.project if run.snapshot else run.project)
            if run.kind == TrainingRun.Kind.RM and run.evaluation else None,
        ),
        "outputs": selectors.output_files(run=run),
        "checkpoints": list(run.checkpoints.order_by("step")),
        "can_resume": launching.can_resume(run),
        "calibration_source": selectors.calibration_source(run),
        "poll_seconds": POLL_SECONDS,
    }


def _run_page(request: HttpRequest, run: TrainingRun, *, status: int = 200) -> HttpResponse:
    all_series, cursor = selectors.run_series(run=run)
    # The charts start from the full curves; the live region's first data block carries nothing new.
    context = _live_context(request, run, series={}, cursor=cursor)
    step, samples = selectors.run_samples(run=run)
    context.update(
        {
            "chart_data": _json_for_script(
                {"series": all_series, "cursor": cursor, "groups": selectors.CHART_GROUPS_JSON, "run": run.pk}
            ),
            "config_rows": selectors.config_rows(run),
            "lineage": selectors.lineage(run=run),
            "resumes": (run.summary or {}).get("resumes", []),
            "samples": samples,
            "samples_step": step,
            "sample_steps": selectors.sample_steps(run=run),
            "jobs": selectors.recent_jobs(run=run),
            "compare_candidates": selectors.list_runs(kind=run.kind).exclude(pk=run.pk)[:20],
        }
    )
    return render(request, "training/run_detail.html", context, status=status)


@staff_required
@require_GET
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    return _run_page(request, get_object_or_404(selectors.list_runs(), pk=run_id))


@staff_required
@require_GET
def run_live(request: HttpRequest, run_id: int) -> HttpResponse:
    """The polled part of the run page; answers 286 (stop polling) once the run has ended."""
    run = get_object_or_404(selectors.list_runs(), pk=run_id)
    context = _live_context(request, run)
    context["oob"] = True
    response = render(request, "training/_run_live.html", context)
    known_samples = _int_or_none(request.GET.get("samples_step"))
    latest_samples = selectors.run_samples(run=run, limit=0)[0]
    if latest_samples is not None and latest_samples != known_samples:
        response["HX-Trigger"] = "samples-updated"
    if not run.is_active:
        response.status_code = HTMX_STOP_POLLING
    return response


@staff_required
@require_GET
def run_samples(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(TrainingRun, pk=run_id)
    step, samples = selectors.run_samples(run=run, step=_int_or_none(request.GET.get("step")))
    return render(
        request, "training/_samples.html",
        {"run": run, "samples": samples, "samples_step": step, "sample_steps": selectors.sample_steps(run=run),
         "chosen": request.GET.get("step") or ""},
    )


@staff_required
@require_GET
def run_log(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(TrainingRun, pk=run_id)
    if not run.log_path or not Path(run.log_path).is_file():
        raise Http404("This run has no log yet.")
    return FileResponse(open(run.log_path, "rb"), content_type="text/plain; charset=utf-8")


@staff_required
@require_GET
def run_file(request: HttpRequest, run_id: int, relative: str) -> HttpResponse:
    """Download one file of the run's output directory (nothing outside it)."""
    run = get_object_or_404(TrainingRun, pk=run_id)
    if not run.output_dir:
        raise Http404("This run has no output directory.")
    root = Path(run.output_dir).resolve()
    target = (root / relative).resolve()
    if root not in target.parents or not target.is_file():
        raise Http404("No such output file.")
    content_type, _ = mimetypes.guess_type(target.name)
    text_like = target.suffix in {".json", ".jsonl", ".txt", ".log", ".md", ".yaml", ".yml", ".csv"}
    return FileResponse(
        open(target, "rb"), as_attachment=not text_like,
        content_type="text/plain; charset=utf-8" if text_like else (content_type or "application/octet-stream"),
    )


def _refused(request: HttpRequest, run: TrainingRun, exc: launching.RunConflict) -> HttpResponse:
    """The run page again, with the reason, answered 409 Conflict (the run's state refused the action)."""
    messages.error(request, str(exc))
    run.refresh_from_db()
    return _run_page(request, run, status=409)


@staff_required
@require_POST
def run_cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(selectors.list_runs(), pk=run_id)
    try:
        launching.cancel_run(run=run)
    except launching.RunConflict as exc:
        return _refused(request, run, exc)
    if run.status == TrainingRun.Status.CANCELLED:
        messages.success(request, f"{run} was cancelled before it started.")
    else:
        messages.success(request, f"Stopping {run}: it will write a checkpoint and stop.")
    return redirect("training:run_detail", run_id=run.pk)


@staff_required
@require_POST
def run_resume(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(selectors.list_runs(), pk=run_id)
    try:
        new_run = launching.resume_run(run=run, created_by=request.user)
    except launching.RunConflict as exc:
        return _refused(request, run, exc)
    except launching.LaunchError as exc:
        messages.error(request, str(exc))
        return redirect("training:run_detail", run_id=run.pk)
    if run.is_active:  # a repeated click: already queued again
        return redirect("training:run_detail", run_id=new_run.pk)
    verb = "Resuming" if new_run.config.get("resume") else "Retrying"
    step = (new_run.summary or {}).get("step") if new_run.config.get("resume") else None
    messages.success(request, f"{verb} {new_run}" + (f" from step {step}" if step is not None else " from scratch")
                     + "; it is queued. Its curves continue on this page.")
    return redirect("training:run_detail", run_id=new_run.pk)


# --- Compare -----------------------------------------------------------------------------------------------


@staff_required
@require_GET
def compare(request: HttpRequest) -> HttpResponse:
    ids = [i for i in (_int_or_none(v) for v in request.GET.getlist("runs")) if i is not None][:12]
    runs = selectors.runs_for_compare(run_ids=ids)
    series = selectors.compare_series(runs=runs)
    payload = {
        "runs": [{"id": r.pk, "label": f"#{r.pk} {r.name or r.get_kind_display()}"} for r in runs],
        "metrics": series,
    }
    return render(
        request, "training/compare.html",
        {"runs": runs, "compare_data": _json_for_script(payload), "metric_names": list(series),
         "tables": selectors.compare_tables(runs=runs, series=series),
         "choices": selectors.list_runs()[:100], "chosen": {r.pk for r in runs}},
    )


# --- Launch ------------------------------------------------------------------------------------------------


def _sft_run(request: HttpRequest) -> TrainingRun | None:
    """`?sft_run=N`: SFT run N when it succeeded (the SFT run page's "train PPO / an RM / a round from it")."""
    run_id = _int_or_none(request.GET.get("sft_run"))
    return TrainingRun.objects.filter(pk=run_id, kind=TrainingRun.Kind.SFT, status=TrainingRun.Status.SUCCEEDED
                                      ).select_related("snapshot").first() if run_id else None


def _sft_model(request: HttpRequest) -> str | None:
    """The model that `?sft_run=N` saved."""
    run = _sft_run(request)
    model = run.output("model") if run is not None else None
    return str(model) if model is not None else None


def _again(request: HttpRequest, *, kind: str, form_class) -> dict:
    """`?again=N`: the form prefilled with run N's config ("Launch again with this config")."""
    run_id = _int_or_none(request.GET.get("again"))
    run = selectors.list_runs(kind=kind).filter(pk=run_id).first() if run_id else None
    return launch_forms.initial_from_run(form_class, run) if run is not None else {}


def _queue(request: HttpRequest, form, *, kind: str, **sources) -> HttpResponse | None:
    """Queue the valid launch form's run: the redirect to its page, or None with the refusal on the form."""
    try:
        run = launching.launch_run(kind=kind, options=form.options, name=form.cleaned_data.get("name", ""),
                                   created_by=request.user, **sources)
    except launching.LaunchError as exc:
        form.launch_failed(exc)
        return None
    messages.success(request, f"{run} is queued; a worker will pick it up.")
    return redirect("training:run_detail", run_id=run.pk)


@staff_required
@require_http_methods(["GET", "POST"])
def launch_sft(request: HttpRequest) -> HttpResponse:
    initial = {}
    if snapshot_id := _int_or_none(request.GET.get("snapshot")):
        initial["snapshot"] = snapshot_id
    if project_id := _int_or_none(request.GET.get("project")):
        initial["project"] = project_id
    initial.update(_again(request, kind="sft", form_class=launch_forms.SFTLaunchForm))
    form = launch_forms.SFTLaunchForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        if queued := _queue(request, form, kind="sft", snapshot=data.get("snapshot"),
                            export_project=data.get("project"), export_options=form.export_options()):
            return queued
    return render(request, "training/launch.html",
                  {"form": form, "kind": "sft", "title": "Fine-tune a model on demonstrations (SFT)"})


@staff_required
@require_http_methods(["GET", "POST"])
def launch_rm(request: HttpRequest) -> HttpResponse:
    initial = {}
    if snapshot_id := _int_or_none(request.GET.get("snapshot")):
        initial["snapshot"] = snapshot_id
    if project_id := _int_or_none(request.GET.get("project")):
        initial["project"] = project_id
    if sft_model := _sft_model(request):
        initial["base_model"] = sft_model
    initial.update(_again(request, kind="rm", form_class=launch_forms.RMLaunchForm))
    form = launch_forms.RMLaunchForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        if queued := _queue(request, form, kind="rm", snapshot=data.get("snapshot"),
                            export_project=data.get("project"), export_options=form.export_options()):
            return queued
    return render(request, "training/launch.html", {"form": form, "kind": "rm", "title": "Train a reward model"})


@staff_required
@require_http_methods(["GET", "POST"])
def launch_ppo(request: HttpRequest) -> HttpResponse:
    initial = {}
    if rm_id := _int_or_none(request.GET.get("reward_model_run")):
        initial["reward_model_run"] = rm_id
    if sft_model := _sft_model(request):
        initial["policy_model"] = sft_model
        if ptx := launch_forms.sft_train_file(_sft_run(request).snapshot):  # PPO-ptx on its demonstrations
            initial["ptx_file"] = ptx
    initial.update(_again(request, kind="ppo", form_class=launch_forms.PPOLaunchForm))
    form = launch_forms.PPOLaunchForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        if queued := _queue(request, form, kind="ppo", reward_model_run=data["reward_model_run"],
                            prompt_project=data.get("prompt_project")):
            return queued
    return render(request, "training/launch.html", {"form": form, "kind": "ppo", "title": "Train a policy with PPO"})


LAUNCH_FORMS = {"rm": launch_forms.RMLaunchForm, "ppo": launch_forms.PPOLaunchForm}


@staff_required
@require_GET
def launch_defaults(request: HttpRequest, kind: str) -> HttpResponse:
    """htmx, on picking another model or data source: the suggestion line and, out of band, the derived
    fields with the options that fit the new choice (the other fields keep what the user typed)."""
    form_class = LAUNCH_FORMS.get(kind)
    if form_class is None:
        raise Http404("No such run kind.")
    form = form_class(initial={name: request.GET.get(name) for name in form_class.source_fields})
    return render(request, "training/_launch_defaults.html", {"form": form, "oob": True})


@staff_required
@require_http_methods(["GET", "POST"])
def new_round(request: HttpRequest, run_id: int | None = None) -> HttpResponse:
    """Sample a new annotation round from a finished PPO run's policy (or any model under the roots)."""
    run = get_object_or_404(TrainingRun, pk=run_id) if run_id is not None else None
    if run is not None and (run.kind != TrainingRun.Kind.PPO or run.status != TrainingRun.Status.SUCCEEDED):
        messages.error(request, "A new round samples from a PPO run that succeeded.")
        return redirect("training:run_detail", run_id=run.pk)
    initial = {}
    if project_id := _int_or_none(request.GET.get("project")):
        initial["project"] = project_id
    elif run is not None and run.project_id:
        initial["project"] = run.project_id
    if run is None and (sft_model := _sft_model(request)):
        initial["model"] = sft_model
    form = launch_forms.NewRoundForm(request.POST or None, run=run, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            job = jobs.launch_new_round(
                project=data["project"], model_path=data["model"], training_run=run, k=data["k"],
                sampling=form.sampling_params(), from_round=data.get("from_round"),
                max_prompts=data.get("max_prompts"), created_by=request.user,
            )
        except (launching.LaunchError, ValueError) as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Sampling a new round of {data['project']} is queued.")
            return redirect("training:job_detail", job_id=job.pk)
    return render(request, "training/new_round.html", {"form": form, "run": run})


@staff_required
@require_http_methods(["GET", "POST"])
def project_sample(request: HttpRequest, project_id: int) -> HttpResponse:
    """The project wizard's sampling step: K responses per prompt of the latest round, sampled in place."""
    project = get_object_or_404(Project, pk=project_id)
    current = latest_round(project=project)
    form = launch_forms.SampleResponsesForm(request.POST or None, project=project)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            if current is None:
                raise launching.LaunchError(f"Project {project} has no prompts yet: import some first.")
            job = jobs.launch_new_round(
                project=project, model_path=data["model"], k=data["k"], sampling=form.sampling_params(),
                from_round=current, round=current, created_by=request.user,
            )
        except (launching.LaunchError, ValueError) as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Sampling responses for round {current} of {project} is queued.")
            return redirect("training:job_detail", job_id=job.pk)
    status = 400 if request.method == "POST" else 200
    return render(request, "training/project_sample.html", {"form": form, "project": project, "round": current},
                  status=status)


# --- Jobs --------------------------------------------------------------------------------------------------


@staff_required
@require_GET
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(Job.objects.select_related("project", "training_run", "created_by"), pk=job_id)
    template = "training/_job_live.html" if request.htmx else "training/job_detail.html"
    response = render(request, template, {"job": job, "poll_seconds": POLL_SECONDS})
    if request.htmx and not job.is_active:
        response.status_code = HTMX_STOP_POLLING
    return response


# --- Annotation statistics ---------------------------------------------------------------------------------


@staff_required
@require_GET
def project_list(request: HttpRequest) -> HttpResponse:
    return render(request, "training/project_list.html", {"rows": project_overview()})


@staff_required
@require_GET
def project_stats(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    context = {**project_statistics(project=project), **selectors.project_training(project=project)}
    context["policy_ab"] = selectors.policy_ab_rows(context.get("policy_ab") or [])
    context["rm_check_form"] = launch_forms.RMCheckForm(project=project)
    context["chart_data"] = _json_for_script(context.pop("charts"))
    return render(request, "training/project_stats.html", context)


@staff_required
@require_POST
def project_rm_check(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    form = launch_forms.RMCheckForm(request.POST, project=project)
    if form.is_valid():
        try:
            job = jobs.launch_rm_check(project=project, rm_run=form.cleaned_data["rm_run"], created_by=request.user)
        except launching.LaunchError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Scoring the new rankings with {job.training_run} is queued.")
    else:
        messages.error(request, "; ".join(e for errors in form.errors.values() for e in errors))
    return redirect(reverse("training:project_stats", args=[project.pk]) + "#rm-check")
