"""Read-only queries for the dashboard and the API: runs, curves, samples, lineage, outputs, statistics."""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db.models import Max, Q, QuerySet

from training.intervals import percent_interval_text, proportion_text
from training.logs import tail_text
from training.models import Job, Metric, Sample, TrainingRun
from training.rm_report import is_rm_evaluation, rm_evaluation_view
from training.runkinds import run_kind

MAX_POINTS_PER_SERIES = 2000

# Headline figure per kind: the first of these found in the evaluation, then in the summary (last values).
HEADLINES = {
    TrainingRun.Kind.SFT: [
        ("evaluation", "after.perplexity", "held-out perplexity"),
        ("summary", "eval/perplexity", "held-out perplexity"),
        ("summary", "loss", "loss"),
    ],
    TrainingRun.Kind.RM: [
        ("evaluation", "heldout.accuracy", "held-out accuracy"),
        ("evaluation", "accuracy", "held-out accuracy"),
        ("summary", "eval/accuracy", "held-out accuracy"),
        ("summary", "accuracy", "train accuracy"),
        ("summary", "loss", "loss"),
    ],
    TrainingRun.Kind.PPO: [
        ("evaluation", "after.oracle_score", "oracle score after"),
        ("evaluation", "after.rm_score", "RM score after"),
        ("summary", "reward", "reward"),
        ("summary", "score", "RM score"),
        ("summary", "rm_score", "RM score"),
        ("summary", "kl", "KL"),
    ],
}

# Charts on a run page: a title and the words of the metric names it draws, so that one chart holds figures of
# one scale. A metric's name after its last "/" is split on "_"; a pattern matches one of those words, or, when
# it has a "_" itself, any part of the name ("grad_norm" in "grad_norm_actor"). The first group wins; the rest
# go to an "Other" chart. dashboard.js applies the same rule to metrics as they appear.
CHART_GROUPS = [
    ("Approx. KL", ("approx_kl",)),
    ("β", ("beta", "kl_coef")),
    ("Accuracy", ("accuracy", "win_rate", "agreement")),
    ("Margin", ("margin",)),
    ("Reward", ("reward", "score", "oracle")),
    ("KL", ("kl",)),
    ("Losses", ("loss",)),
    ("Perplexity", ("perplexity",)),
    ("Entropy", ("entropy",)),
    ("Clipping", ("clip",)),
    ("Ratio", ("ratio",)),
    ("Explained variance", ("explained_variance",)),
    ("Values", ("value_mean", "return_mean", "advantage")),
    ("Lengths", ("length",)),
    ("EOS rate", ("eos",)),
    ("Learning rate", ("lr", "learning_rate")),
    ("Gradient norm", ("grad_norm",)),
    ("Speed", ("per_s",)),
    ("Time", ("s", "seconds")),
]
# The same, for dashboard.js (which groups metrics as they appear while a run is live).
CHART_GROUPS_JSON = [
    {"id": re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "beta", "title": title, "patterns": list(patterns)}
    for title, patterns in CHART_GROUPS
]


def chart_group_of(name: str) -> str:
    """The id of the chart a metric is drawn on (the rule above; dashboard.js mirrors it)."""
    leaf = name.rsplit("/", 1)[-1].lower()
    words = leaf.split("_")
    for group in CHART_GROUPS_JSON:
        if any((p in leaf) if "_" in p else (p in words) for p in group["patterns"]):
            return group["id"]
    return "other"


def _dig(data: dict, dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            # Keys may themselves contain dots ("eval/accuracy" never has, "after.x" might be flat).
            return data.get(dotted) if isinstance(data, dict) else None
        value = value[part]
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def headline(run: TrainingRun) -> tuple[str, float] | None:
    """(label, value) of the run's most telling figure, or None before it reported anything."""
    for source, key, label in HEADLINES.get(run.kind, []):
        value = _number(_dig(getattr(run, source) or {}, key))
        if value is not None:
            return label, value
    return None


def list_runs(*, kind: str | None = None, status: str | None = None) -> QuerySet[TrainingRun]:
    runs = TrainingRun.objects.select_related(
        "created_by", "snapshot", "snapshot__project", "project", "reward_model_run", "resumed_from"
    )
    if kind:
        runs = runs.filter(kind=kind)
    if status:
        runs = runs.filter(status=status)
    return runs


def metric_names(*, run: TrainingRun) -> list[str]:
    return list(Metric.objects.filter(run=run).values_list("name", flat=True).distinct().order_by("name"))


def _thin(points: list[list[float]], limit: int) -> list[list[float]]:
    """Keep at most `limit` points: an even stride over the series, always keeping the last point."""
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    thinned = points[::stride]
    if thinned[-1] is not points[-1]:
        thinned.append(points[-1])
    return thinned


def run_series(
    *, run: TrainingRun, after_id: int | None = None, names: list[str] | None = None,
    max_points: int = MAX_POINTS_PER_SERIES,
) -> tuple[dict[str, list[list[float]]], int | None]:
    """(metric name → [[step, value], …] in step order, cursor).

    `after_id` is the cursor of a previous call: only metric rows written since then are returned (a step
    reported twice, as a resumed run may do, comes back with its new value). The cursor is the largest
    Metric id seen, so a poll never misses an evaluation reported later for an earlier step.
    """
    rows = Metric.objects.filter(run=run)
    if after_id is not None:
        rows = rows.filter(pk__gt=after_id)
    if names:
        rows = rows.filter(name__in=names)
    series: dict[str, list[list[float]]] = defaultdict(list)
    cursor = after_id
    for pk, name, step, value in rows.order_by("name", "step").values_list("pk", "name", "step", "value"):
        cursor = pk if cursor is None else max(cursor, pk)
        if math.isfinite(value):
            series[name].append([step, value])
    return {name: _thin(points, max_points) for name, points in series.items()}, cursor


def run_samples(*, run: TrainingRun, step: int | None = None, limit: int = 50) -> tuple[int | None, list[Sample]]:
    """The sample table of one step (the latest when `step` is None): (step, rows)."""
    if step is None:
        step = Sample.objects.filter(run=run).aggregate(last=Max("step"))["last"]
    if step is None:
        return None, []
    return step, list(Sample.objects.filter(run=run, step=step).order_by("-reward", "id")[:limit])


def sample_steps(*, run: TrainingRun) -> list[int]:
    return list(Sample.objects.filter(run=run).values_list("step", flat=True).distinct().order_by("-step"))


def log_tail(*, run: TrainingRun, max_bytes: int = 12_000) -> str:
    return tail_text(run.log_path, max_bytes=max_bytes) if run.log_path else ""


def find_reward_model_run(directory: str | Path) -> TrainingRun | None:
    """The newest RM run that reported writing `directory`, if any."""
    resolved = str(Path(directory).expanduser().resolve())
    return (TrainingRun.objects.filter(kind=TrainingRun.Kind.RM, outputs__reward_model=resolved)
            .order_by("-created_at").first())


# The RM's calibration file of the project's accepted demonstrations, exported into the run's directory at launch.
CALIBRATION_DEMONSTRATIONS_FILE = "calibration_demonstrations.jsonl"


def calibration_source(run: TrainingRun) -> str | None:
    """Which set calibrated a reward-model run (its rewards shifted to mean 0 on it), in words."""
    if run.kind != TrainingRun.Kind.RM:
        return None
    chosen = (run.config or {}).get("calibration_set") or "heldout"
    n = ((run.evaluation or {}).get("calibration") or {}).get("n")
    count = f" ({n} responses)" if n else ""
    if chosen == "none":
        return "not calibrated"
    if chosen in ("heldout", "train"):
        return f"the {'held-out' if chosen == 'heldout' else 'training'} split's responses{count}"
    if Path(chosen).name == CALIBRATION_DEMONSTRATIONS_FILE:
        owner = f" of {run.project.name}" if run.project else ""
        return f"the accepted demonstrations{owner}{count} (InstructGPT §3.5)"
    return f"the file {Path(chosen).name}{count}"


def find_sft_run(directory: str | Path | None) -> TrainingRun | None:
    """The newest SFT run that reported writing the model `directory`, if any (the start of the loop)."""
    if not directory:
        return None
    resolved = str(Path(directory).expanduser().resolve())
    return (TrainingRun.objects.filter(kind=TrainingRun.Kind.SFT, outputs__model=resolved)
            .order_by("-created_at").first())


# Where a later run names the model it started from: RM → its backbone, PPO → its policy (and reference).
STARTED_FROM = {TrainingRun.Kind.RM: "model", TrainingRun.Kind.PPO: "policy"}


def model_outputs(*, kinds: tuple[str, ...]) -> list[tuple[TrainingRun, Path]]:
    """(run, model directory) of the succeeded runs of `kinds` whose reported model is still on disk."""
    found = []
    for run in TrainingRun.objects.filter(kind__in=kinds, status=TrainingRun.Status.SUCCEEDED):
        directory = run.output(run_kind(run.kind).model_output)
        if directory is not None:
            found.append((run, directory))
    return found


@dataclass
class LineageNode:
    label: str
    kind: str  # snapshot | sft | rm | ppo | round | run
    url: str = ""
    status: str = ""
    current: bool = False
    detail: str = ""


@dataclass
class Lineage:
    upstream: list[LineageNode] = field(default_factory=list)
    downstream: list[LineageNode] = field(default_factory=list)
    resumes: list[TrainingRun] = field(default_factory=list)


def lineage(*, run: TrainingRun) -> Lineage:
    """SFT run → snapshot → RM run → PPO run → new rounds sampled from it, around `run`."""
    from django.urls import reverse

    def node_for(r: TrainingRun, *, current: bool = False) -> LineageNode:
        return LineageNode(
            label=str(r), kind=r.kind, url=reverse("training:run_detail", args=[r.pk]), status=r.status,
            current=current,
        )

    def snapshot_node(snapshot) -> LineageNode:
        counts = snapshot.counts or {}
        detail = ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, int | float))
        return LineageNode(label=f"snapshot {snapshot.content_hash[:12]}", kind="snapshot", detail=detail)

    result = Lineage()
    started_from = STARTED_FROM.get(run.kind)
    sft = find_sft_run((run.config or {}).get(started_from)) if started_from else None
    if sft is not None:
        result.upstream.append(node_for(sft))
    rm = run.reward_model_run if run.kind == TrainingRun.Kind.PPO else None
    snapshot = (rm.snapshot if rm else run.snapshot) if (rm or run.snapshot) else None
    if snapshot is not None:
        result.upstream.append(snapshot_node(snapshot))
    if rm is not None:
        result.upstream.append(node_for(rm))
    result.upstream.append(node_for(run, current=True))
    if run.kind == TrainingRun.Kind.RM:
        for ppo in run.ppo_runs.order_by("created_at"):
            result.downstream.append(node_for(ppo))
    model = (run.outputs or {}).get("model") if run.kind == TrainingRun.Kind.SFT else None
    if model:  # the RM and PPO runs that started from this SFT model
        for kind, key in STARTED_FROM.items():
            for later in TrainingRun.objects.filter(kind=kind, **{f"config__{key}": model}).order_by("created_at"):
                result.downstream.append(node_for(later))
    rounds = (
        run.sampled_responses.values("prompt__project__name", "prompt__project_id", "round")
        .distinct()
        .order_by("round")
    )
    for row in rounds:
        result.downstream.append(
            LineageNode(
                label=f"{row['prompt__project__name']} round {row['round']}", kind="round",
                url=reverse("training:project_stats", args=[row["prompt__project_id"]]),
            )
        )
    for job in run.jobs.filter(kind=Job.Kind.NEW_ROUND).exclude(status=Job.Status.SUCCEEDED):
        result.downstream.append(
            LineageNode(label=f"new round ({job.get_status_display().lower()})", kind="round", status=job.status,
                        url=reverse("training:job_detail", args=[job.pk]))
        )
    chain, cursor = [], run.resumed_from
    while cursor is not None and len(chain) < 20:
        chain.append(cursor)
        cursor = cursor.resumed_from
    result.resumes = chain[::-1] + list(run.resumes.all())
    return result


@dataclass
class OutputFile:
    relative: str
    size: int
    is_dir: bool


def output_files(*, run: TrainingRun, limit: int = 200) -> list[OutputFile]:
    """Entries of the run's output directory (two levels deep, checkpoints summarised as directories)."""
    if not run.output_dir:
        return []
    root = Path(run.output_dir)
    if not root.is_dir():
        return []
    entries: list[OutputFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames.sort()
        for name in dirnames:
            entries.append(OutputFile(str((here / name).relative_to(root)), 0, True))
        if depth >= 1:
            dirnames[:] = []
        for name in sorted(filenames):
            path = here / name
            try:
                size = path.stat().st_size
            except OSError:
                continue
            entries.append(OutputFile(str(path.relative_to(root)), size, False))
        if len(entries) >= limit:
            break
    entries.sort(key=lambda e: e.relative)
    return entries[:limit]


def runs_for_compare(*, run_ids: list[int]) -> list[TrainingRun]:
    runs = {r.pk: r for r in list_runs().filter(pk__in=run_ids)}
    return [runs[pk] for pk in run_ids if pk in runs]


def compare_series(*, runs: list[TrainingRun], max_points: int = 1000) -> dict[str, dict[int, list[list[float]]]]:
    """Metric name → run id → points, for the metrics at least one of the runs reported."""
    by_metric: dict[str, dict[int, list[list[float]]]] = defaultdict(dict)
    for run in runs:
        for name, points in run_series(run=run, max_points=max_points)[0].items():
            by_metric[name][run.pk] = points
    return dict(sorted(by_metric.items(), key=lambda item: (_group_rank(item[0]), item[0])))


# Compare shows what tells runs apart first: reward, accuracy, losses, KL, margin; then the run page's order.
COMPARE_FIRST = ["reward", "accuracy", "losses", "kl", "margin"]
KEY_METRIC_GROUPS = {"reward", "accuracy", "losses", "kl"}
MAX_KEY_METRICS = 6


def _group_rank(name: str) -> int:
    """Metrics in the compare order (COMPARE_FIRST, then the run page's chart groups), not A–Z."""
    ids = COMPARE_FIRST + [group["id"] for group in CHART_GROUPS_JSON if group["id"] not in COMPARE_FIRST]
    group = chart_group_of(name)
    return ids.index(group) if group in ids else len(ids)


def _key_rank(name: str) -> tuple[int, int, str]:
    """Within a group, a plain metric before its eval/… and …_std variants (reward before eval/reward_std)."""
    return (_group_rank(name), ("/" in name) + ("std" in name) + ("min" in name or "max" in name), name)


def compare_tables(*, runs: list[TrainingRun], series: dict[str, dict[int, list[list[float]]]]) -> dict[str, Any]:
    """One row per run (name, kind, status, steps, headline and its key final metrics), what differs between the
    runs' configs (output_dir aside), and each metric's final value side by side."""
    configs = [dict(run.config or {}) for run in runs]
    keys = sorted({key for config in configs for key in config} - {"output_dir"})
    diff = []
    for key in keys:
        values = [config.get(key) for config in configs]
        if len({repr(value) for value in values}) > 1:
            diff.append({"name": key, "values": values})
    summary = [{"name": name, "values": [per_run[run.pk][-1][1] if per_run.get(run.pk) else None for run in runs]}
               for name, per_run in series.items()]
    key_metrics: list[str] = []
    seen_groups: dict[str, int] = defaultdict(int)
    for name in sorted(series, key=_key_rank):
        group = chart_group_of(name)
        if group in KEY_METRIC_GROUPS and seen_groups[group] < 2 and len(key_metrics) < MAX_KEY_METRICS:
            key_metrics.append(name)
            seen_groups[group] += 1
    rows = []
    for run in runs:
        last_steps = [per_run[run.pk][-1][0] for per_run in series.values() if per_run.get(run.pk)]
        step = _int((run.summary or {}).get("step"))  # the trainer's own count, else the last metric's step
        rows.append({"run": run, "headline": headline(run),
                     "step": step if step is not None else int(max(last_steps)) if last_steps else None,
                     "finals": [series[name][run.pk][-1][1] if series[name].get(run.pk) else None
                                for name in key_metrics]})
    return {"config_diff": diff, "summary": summary, "same_config": not diff and len(runs) > 1,
            "runs": rows, "key_metrics": key_metrics}


def recent_jobs(*, project=None, run: TrainingRun | None = None, limit: int = 10) -> list[Job]:
    jobs = Job.objects.select_related("project", "training_run", "created_by")
    if project is not None:
        jobs = jobs.filter(project=project)
    if run is not None:
        jobs = jobs.filter(training_run=run)
    return list(jobs[:limit])


# --- Presentation helpers for the run page ------------------------------------------------------------------


def config_rows(run: TrainingRun) -> list[dict[str, Any]]:
    """The run's config as rows (name, value, help, whether it differs from the default)."""
    from training.rlhf.configs import describe_fields

    config = dict(run.config or {})
    rows = []
    for desc in describe_fields(run_kind(run.kind).config_class):
        if desc["name"] in config:
            value = config.pop(desc["name"])
            rows.append({"name": desc["name"], "value": value, "help": desc["help"],
                         "changed": value != desc["default"]})
    for name, value in sorted(config.items()):
        rows.append({"name": name, "value": value, "help": "", "changed": True})
    return rows


# Figures shown first, in this order (JSON from PostgreSQL's jsonb comes back with its keys re-ordered, so the
# page orders them itself); the rest alphabetically, numbers naturally ("4" < "9" < "10").
FIGURE_ORDER = ["accuracy", "oracle_score", "rm_score", "win_rate", "kl", "reward", "pairs", "rankings", "prompts",
                "mean_margin", "loss", "response_length", "eos_rate", "n_prompts"]


def _figure_key(key: Any) -> tuple:
    text = str(key)
    if text in FIGURE_ORDER:
        return (0, FIGURE_ORDER.index(text), 0, "")
    if text.isdigit():
        return (1, 0, int(text), "")
    return (2, 0, 0, text)


def _ordered(data: dict[str, Any]) -> list[tuple[str, Any]]:
    return sorted(data.items(), key=lambda item: _figure_key(item[0]))


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in _ordered(data):
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, name + ".")
        else:
            rows.append((name, value))
    return rows


DETAIL_PREFIXES = ("calibration",)


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, dict) for v in value.values())


def _collect(data: dict[str, Any], prefix: str, view: dict[str, Any]) -> None:
    """Scalars as dotted rows; dicts of dicts (per annotator, per K…) as tables; lists only when short."""
    for key, value in _ordered(data):
        name = f"{prefix}{key}"
        if _is_table(value):
            columns: list[str] = []
            for inner in value.values():
                columns += [c for c in inner if c not in columns and not isinstance(inner[c], dict | list)]
            columns.sort(key=_figure_key)
            rows = [{"key": k, "cells": [v.get(c) for c in columns]} for k, v in _ordered(value)]
            if "accuracy" in columns and "pairs" in columns:  # every proportion with its n and an interval
                columns.append("95 % interval (Wilson)")
                for row, (_, inner) in zip(rows, _ordered(value), strict=True):
                    row["cells"].append(proportion_text(_number(inner.get("accuracy")), _int(inner.get("pairs"))))
            view["tables"].append({"title": name.replace("_", " "), "columns": columns, "rows": rows})
        elif isinstance(value, dict):
            _collect(value, name + ".", view)
        elif not isinstance(value, list) or len(value) <= 20:
            # Internals (calibration fit, raw sums) go under "All figures", not beside the headline ones.
            target = "details" if name.split(".")[0] in DETAIL_PREFIXES else "rows"
            view[target].append({"name": name, "value": value})
            if key == "accuracy" and _int(data.get("pairs")) is not None:
                view[target].append({"name": f"{name} (95 % interval, Wilson)",
                                     "value": proportion_text(_number(value), _int(data.get("pairs")))})


def _comparison_interval(name: str, after_value: Any, after: dict[str, Any], intervals: dict[str, Any]) -> str:
    """The 95 % interval beside a before/after figure: the paired-difference t interval of a gain over prompts
    (ppo_eval.paired_mean_ci), the Wilson interval of the win rate over the held-out prompts; else ''."""
    n_prompts = _int(after.get("n_prompts"))
    if name == "win_rate" and _number(after_value) is not None:
        return proportion_text(_number(after_value), n_prompts) + (" prompts" if n_prompts and n_prompts >= 10 else "")
    gain = intervals.get(name)
    if not isinstance(gain, dict):
        return ""
    low, high, n = _number(gain.get("low")), _number(gain.get("high")), _int(gain.get("n_prompts"))
    if low is None or high is None:
        return f"too few (n = {n or 0})"
    return f"change [{low:+.3g}, {high:+.3g}], n = {n} prompts"


def evaluation_view(evaluation: dict[str, Any], *, annotator_names: dict[str, str] | None = None) -> dict[str, Any]:
    """Shape a run's evaluation for display.

    - rm: a reward model's report in words (training.rm_report), its raw figures under `details`;
    - comparison: when it holds "before" and "after" dicts (PPO), one row per figure with both and the change;
    - tables: dicts of dicts (accuracy per annotator, per K…) as tables with the union of inner keys as columns;
    - rows: every other figure, flattened to dotted names.
    """
    evaluation = dict(evaluation or {})
    view: dict[str, Any] = {"comparison": [], "tables": [], "rows": [], "details": [], "empty": not evaluation}
    if is_rm_evaluation(evaluation):
        view["rm"] = rm_evaluation_view(evaluation, annotator_names=annotator_names)
        view["details"] = [{"name": name, "value": value} for name, value in _flatten(evaluation)
                           if not isinstance(value, list) or len(value) <= 20]
        return view
    before, after = evaluation.get("before"), evaluation.get("after")
    if isinstance(before, dict) and isinstance(after, dict):
        evaluation.pop("before")
        evaluation.pop("after")
        evaluation.pop("delta", None)  # the comparison has a change column
        intervals = evaluation.pop("delta_ci", None) or {}
        flat_before, flat_after = dict(_flatten(before)), dict(_flatten(after))
        names = sorted({*flat_before, *flat_after}, key=_figure_key)
        for name in names:
            b, a = flat_before.get(name), flat_after.get(name)
            delta = a - b if _number(a) is not None and _number(b) is not None else None
            view["comparison"].append({"name": name, "before": b, "after": a, "delta": delta,
                                       "interval": _comparison_interval(name, a, after, intervals)})
    _collect(evaluation, "", view)
    return view


def annotator_names(*, project) -> dict[str, str]:
    """Pseudonym (as the exports write it) → username, or the imported file, of everyone who ranked in
    `project`: the dashboard is staff only, so staff see who an "a3f9c2d1" is. One row per annotator."""
    from annotate.models import Ranking
    from annotate.services.exporting import annotator_pseudonym

    if project is None:
        return {}
    names = {"consensus": "consensus (one ranking per prompt)"}
    rows = (Ranking.objects.filter(prompt__project=project).values_list("annotator_id", "annotator__username")
            .exclude(annotator_id=None).distinct())
    for user_id, username in rows:
        names[annotator_pseudonym(f"user:{user_id}")] = username
    imported = (Ranking.objects.filter(prompt__project=project, annotator_id=None, source=Ranking.Source.IMPORTED)
                .values_list("source_detail", flat=True).distinct()[:200])
    for detail in imported:
        names[annotator_pseudonym(f"imported:{detail}")] = f"imported: {detail}" if detail else "imported"
    return names


def project_training(*, project) -> dict[str, Any]:
    """The training side of a project's statistics page: its RM checks, the RM runs to check with, round jobs."""
    rm_runs = TrainingRun.objects.filter(kind=TrainingRun.Kind.RM, status=TrainingRun.Status.SUCCEEDED).filter(
        Q(project=project) | Q(snapshot__project=project)
    )
    jobs = Job.objects.filter(project=project).select_related("training_run")
    return {
        "rm_checks": list(jobs.filter(kind=Job.Kind.RM_EVAL)[:10]),
        "rm_runs": list(rm_runs[:20]),
        "rounds_jobs": list(jobs.filter(kind=Job.Kind.NEW_ROUND)[:10]),
    }


# --- Phase, progress and ETA of a run (fed by the RunReporter: on_start, the progress metric) ----------------


def eta_seconds(*, steps_done: int, seconds: float, steps_left: int) -> float | None:
    """Time left at the rate measured so far: `steps_left / (steps_done / seconds)` — the constant-rate
    extrapolation progress bars use (tqdm's `remaining = (total - n) / rate`). None until a rate is known."""
    if steps_done <= 0 or seconds <= 0 or steps_left < 0:
        return None
    return steps_left * seconds / steps_done


@dataclass(frozen=True)
class Progress:
    phase: str
    step: int | None = None
    total: int | None = None
    unit: str = "step"
    rate: float | None = None  # steps per second
    eta: float | None = None  # seconds

    @property
    def percent(self) -> int | None:
        if self.step is None or not self.total:
            return None
        return max(0, min(100, round(100 * self.step / self.total)))


def run_progress(run: TrainingRun, *, now: float | None = None) -> Progress:
    """What the run is doing now, in words, with step/total, rate and ETA once two progress reports arrived."""
    from django.utils import timezone

    kind = run_kind(run.kind)
    summary = run.summary or {}
    total = summary.get("total_steps")
    progress = summary.get("progress") or {}
    step = progress.get("step", summary.get("step"))
    if run.status == TrainingRun.Status.QUEUED:
        return Progress(phase="Waiting for a worker", step=step, total=total, unit=kind.progress_unit)
    if run.status != TrainingRun.Status.RUNNING:
        return Progress(phase=run.get_status_display(), step=step, total=total, unit=kind.progress_unit)
    if not progress:
        return Progress(phase="Loading the model and data…", unit=kind.progress_unit)
    if "first_step" not in progress:
        evaluating = run.kind == "ppo" and (run.config or {}).get("evaluate", True) and \
            "before" not in (run.evaluation or {})
        phase = "Evaluating the start policy…" if evaluating else "Starting the first step…"
        return Progress(phase=phase, step=progress.get("start_step"), total=total, unit=kind.progress_unit)
    if total and step is not None and step >= total:
        phase = "Evaluating the final policy and saving…" if run.kind == "ppo" else "Evaluating and saving…"
        return Progress(phase=phase, step=step, total=total, unit=kind.progress_unit)
    now = timezone.now().timestamp() if now is None else now
    done, seconds = step - progress["first_step"], progress["at"] - progress["first_at"]
    rate = done / seconds if done > 0 and seconds > 0 else None
    eta = eta_seconds(steps_done=done, seconds=seconds, steps_left=(total or step) - step)
    if eta is not None:
        eta = max(0.0, eta - (now - progress["at"]))
    phase = "PPO iterations" if run.kind == "ppo" else "Training"
    return Progress(phase=phase, step=step, total=total, unit=kind.progress_unit, rate=rate, eta=eta)


def summary_values(run: TrainingRun) -> list[tuple[str, Any]]:
    """The run's latest scalar values (not the bookkeeping entries: progress, resumes)."""
    return [(name, value) for name, value in (run.summary or {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)]


def model_label(path: str) -> str:
    """A model directory by the run that wrote it ("SFT run 3", "PPO run 7 (name)"), or whose start policy it was;
    else its last two path parts. For tables that would otherwise show file paths."""
    if not path or path == "imported":
        return path or "–"
    if (sft := find_sft_run(path)) is not None:
        return str(sft)
    for run in TrainingRun.objects.filter(kind=TrainingRun.Kind.PPO).only("pk", "kind", "name", "outputs", "config"):
        if (run.outputs or {}).get("policy") == path:
            return str(run)
        if (run.config or {}).get("policy") == path:
            return f"start policy of {run}"
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else path


def _interval_and_n(p: float | None, n: int | None) -> str:
    """'16.3–56.3 %, n = 18' (Wilson 95 %) or 'too few (n = 3)', beside a column that shows p itself."""
    text = percent_interval_text(p, n)
    return text if text.startswith(("too few", "–")) else f"{text}, n = {n}"


def policy_ab_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The head-to-head rows with run names for the models and A's win rate with its n and Wilson interval."""
    labels: dict[str, str] = {}
    out = []
    for row in rows:
        for side in ("a", "b"):
            labels.setdefault(row[side], model_label(row[side]))
        out.append({**row, "a_label": labels[row["a"]], "b_label": labels[row["b"]],
                    "a_win_text": _interval_and_n(row.get("a_win_rate"), row.get("pairs"))})
    return out
