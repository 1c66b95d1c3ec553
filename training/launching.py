"""The run pipeline: every launch — the dashboard's forms, the API, the train_rm / train_ppo commands, the demo,
a resume or retry — comes through `launch_run` (queued for a worker) or `record_run` (recorded, then trained
in the calling process by a command). One pass, in this order:

1. the kind's inputs (`INPUTS`): SFT — a recorded demonstrations snapshot or a dataset path (the prompt format
   taken from its manifest); RM — a recorded rankings snapshot, or a project exported now (a new snapshot), or a
   dataset path;
   PPO — the reward model a succeeded RM run reported (`outputs["reward_model"]`), and prompts from a file or
   a project (exported by `annotate.services.exporting.export_prompts` into the run's directory);
2. the run row (queued) and its output directory: the one given (a command may name one; a resume re-queues the
   same row in its own directory, see `resume_run`), else `services.output_dir_of` — the only default;
3. the config dataclass, built once from the options and the inputs; a `ConfigError` becomes a `LaunchError`
   naming the field, and nothing is left behind (the transaction rolls back, exported files are removed);
4. enqueued for the worker (django-tasks), which runs `manage.py <kind's command> --run-id N`.

Also here: the actions on an existing run — cancel, resume/retry — checked against the run's state on the
server (a refused action is a `RunConflict`, 409 on the API).
"""

from __future__ import annotations

import logging
import secrets
import shutil
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from training.logs import run_log_path
from training.models import TrainingRun
from training.rlhf.configs import ConfigError, config_to_dict
from training.runkinds import run_kind
from training.selectors import CALIBRATION_DEMONSTRATIONS_FILE, find_reward_model_run
from training.services import create_run, output_dir_of, request_cancel
from training.tasks import execute_training_run

logger = logging.getLogger("training.launching")

PROMPTS_FILE = "prompts.jsonl"
# Launch-level calibration choices for a reward model, resolved here into a file or the config's "heldout".
CALIBRATION_AUTO = "auto"
CALIBRATION_DEMONSTRATIONS = "demonstrations"
LAUNCH_CALIBRATION_SETS = (CALIBRATION_AUTO, CALIBRATION_DEMONSTRATIONS)


class LaunchError(ValueError):
    """The launch cannot go ahead (bad source, invalid option…); the message is for the user, `field` names the
    option or input at fault when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RunConflict(LaunchError):
    """An action that the run's state refuses (resume a succeeded run, cancel a finished one…): 409."""


# --- 1. inputs, per kind ---------------------------------------------------------------------------------


def _check_snapshot_kind(snapshot, *, kind: str, trainer: str) -> None:
    """A ranking snapshot trains a reward model, an SFT snapshot the SFT model; the other way round is refused."""
    if snapshot is not None and snapshot.kind != kind:
        raise LaunchError(f"Snapshot {snapshot.pk} ({Path(snapshot.path).name}) holds {snapshot.get_kind_display()}"
                          f"; {trainer} needs a {'rankings' if kind == 'rankings' else 'demonstrations (SFT)'} "
                          "snapshot.", field="snapshot")


def _export_now(export, *, project, prefix: str, field: str | None, written: list[Path], **params: Any):
    """`export(project=…, out_dir=…, **params)` (an annotate export service) into a new snapshot directory under
    the data root, named `<prefix>-<time>-<random>`; recorded in `written` so a refused launch removes it."""
    from annotate.services.exporting import ExportError, snapshot_dir_for

    stamp = timezone.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
    try:
        snapshot = export(project=project, out_dir=snapshot_dir_for(project=project, name=f"{prefix}-{stamp}"),
                          **params)
    except ExportError as exc:
        raise LaunchError(str(exc), field=field) from exc
    written.append(Path(snapshot.path))
    return snapshot


def _sft_inputs(*, options: dict[str, Any], snapshot=None, export_project=None, export_options=None,
                project=None, created_by=None, written: list[Path], **_: Any) -> dict[str, Any]:
    """SFT: a recorded demonstrations snapshot, a project's accepted demonstrations exported now (a new SFT
    snapshot), or a dataset path. The prompt format is the data's (its manifest's, written from the project's)
    unless the launch names one; a format that contradicts the snapshot's is refused (the SFT model's format is
    the one every later stage must use)."""
    from training.rlhf.chat_format import PromptFormat, PromptFormatError
    from training.rlhf.data import DatasetError
    from training.rlhf.sft_data import read_sft_manifest

    sources = (snapshot is not None) + (export_project is not None)
    if sources > 1 or (sources == 0 and not options.get("dataset")):
        raise LaunchError("Choose a demonstrations (SFT) snapshot, or a project to export now (not both), or a "
                          "dataset path.", field="snapshot")
    _check_snapshot_kind(snapshot, kind="sft", trainer="SFT")
    if export_project is not None:
        from annotate.services.export_sft import export_sft_snapshot

        snapshot = _export_now(export_sft_snapshot, project=export_project, prefix="sft", field="project",
                               written=written, created_by=created_by, **(export_options or {}))
    dataset = snapshot.path if snapshot is not None else options["dataset"]
    config: dict[str, Any] = {"dataset": dataset} if snapshot is not None else {}
    try:
        declared = (read_sft_manifest(dataset) or {}).get("prompt_format") if Path(dataset).exists() else None
    except DatasetError as exc:
        raise LaunchError(str(exc), field="snapshot" if snapshot is not None else "dataset") from exc
    if isinstance(declared, dict) and declared.get("format"):
        try:
            data_format = PromptFormat(kind=str(declared["format"]),
                                       system_prompt=str(declared.get("system_prompt") or ""))
        except PromptFormatError as exc:
            raise LaunchError(f"{dataset}: manifest prompt_format: {exc}", field="prompt_format") from exc
        if options.get("prompt_format") is None and options.get("system_prompt") is None:
            config.update(prompt_format=data_format.kind, system_prompt=data_format.system_prompt)
        else:  # what the launch names, the rest as the data says
            kind = options.get("prompt_format") or data_format.kind
            system = data_format.system_prompt if kind == data_format.kind else ""
            try:
                asked = PromptFormat(kind=kind, system_prompt=options.get("system_prompt", system) or "")
            except PromptFormatError as exc:
                raise LaunchError(str(exc), field="system_prompt") from exc
            if asked != data_format:
                raise LaunchError(f"The demonstrations were written for {data_format.describe()}, but this run "
                                  f"asks for {asked.describe()}; leave the prompt format to the data (or export "
                                  "them again after changing the project's format).", field="prompt_format")
    return {"config": config, "snapshot": snapshot,
            "project": snapshot.project if snapshot is not None else project}


def _rm_inputs(*, options: dict[str, Any], snapshot=None, export_project=None, export_options=None, project=None,
               created_by=None, written: list[Path], **_: Any) -> dict[str, Any]:
    _check_snapshot_kind(snapshot, kind="rankings", trainer="a reward model")
    sources = (snapshot is not None) + (export_project is not None)
    if sources > 1 or (sources == 0 and not options.get("dataset")):
        raise LaunchError("Choose a snapshot, or a project to export now (not both).", field="snapshot")
    if export_project is not None:
        from annotate.services.exporting import export_snapshot

        snapshot = _export_now(export_snapshot, project=export_project, prefix="rm", field=None, written=written,
                               created_by=created_by, **(export_options or {}))
    if snapshot is not None:
        inputs = {"config": {"dataset": snapshot.path}, "snapshot": snapshot, "project": snapshot.project}
    else:
        inputs = {"config": {}, "project": project}
    return _rm_calibration(options=options, inputs=inputs)


def _rm_calibration(*, options: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """The RM's calibration set (InstructGPT §3.5: a bias so that the labelers' demonstrations score 0 on
    average). A launch that names no set, or "auto", calibrates on the project's accepted demonstrations when it
    has any (exported into the run's directory, see `_create`), else on the held-out split; "demonstrations"
    insists on them. Any other value (heldout, train, none, a file) is the config's own."""
    asked = options.get("calibration_set")
    if asked not in (None, CALIBRATION_AUTO, CALIBRATION_DEMONSTRATIONS):
        return inputs
    project = inputs.get("project")
    if project is not None and accepted_demonstrations(project=project) > 0:
        inputs["calibration_project"] = project
    elif asked == CALIBRATION_DEMONSTRATIONS:
        raise LaunchError(f"{'Project ' + repr(project.name) if project else 'This launch names no project; it'} "
                          "has no accepted demonstrations to calibrate on; choose another calibration set.",
                          field="calibration_set")
    else:
        inputs["config"]["calibration_set"] = "heldout"
    return inputs


def accepted_demonstrations(*, project) -> int:
    from annotate.models import Demonstration

    return Demonstration.objects.filter(prompt__project=project, status=Demonstration.Status.ACCEPTED).count()


def export_calibration_demonstrations(*, project, path: Path) -> Path:
    """The project's accepted demonstrations as prompt + response JSON lines (what the RM's calibration reads),
    through the SFT export's record builder (one definition of which demonstrations count)."""
    import json

    from annotate.services.export_sft import build_sft_records

    records = build_sft_records(project=project, test_fraction=0.0, seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for split in ("train", "test"):
            for row in records.rows[split]:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _ppo_inputs(*, options: dict[str, Any], reward_model_run=None, prompt_project=None, project=None,
                snapshot=None, **_: Any) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if reward_model_run is not None:
        if reward_model_run.kind != TrainingRun.Kind.RM or reward_model_run.status != TrainingRun.Status.SUCCEEDED:
            raise LaunchError("The reward model must come from a reward-model run that succeeded.",
                              field="reward_model_run")
        directory = reward_model_run.output("reward_model")
        if directory is None:
            raise LaunchError(f"{reward_model_run} left no reward model in {reward_model_run.output_dir}.",
                              field="reward_model_run")
        config["reward_model"] = str(directory)
    elif options.get("reward_model"):
        reward_model_run = find_reward_model_run(options["reward_model"])  # link the run that wrote it
    if prompt_project is not None and options.get("prompts"):
        raise LaunchError("Choose a project or a prompt file (not both).", field="prompt_project")
    if reward_model_run is not None:
        _check_rm_format(options=options, reward_model_run=reward_model_run)
    links = {"reward_model_run": reward_model_run,
             "project": prompt_project or project or getattr(reward_model_run, "project", None)}
    return {"config": config, "prompt_project": prompt_project, **links}


def source_prompt_format(*, snapshot=None, project=None, reward_model_run=None) -> dict[str, str]:
    """The prompt format a launch form starts from: a reward-model run's (PPO must use the format its RM
    trained on), else the one a snapshot was exported with (older snapshots: their project's), else the
    project's; {} when none is known (the dataclass default, plain, stays). The commands take theirs from
    the input files instead (`cli.default_prompt_format`)."""
    if reward_model_run is not None:
        config = reward_model_run.config or {}
        return {"prompt_format": config.get("prompt_format") or "plain", "system_prompt": config.get("system_prompt") or ""}
    if snapshot is not None:
        recorded = (snapshot.params or {}).get("prompt_format")
        if isinstance(recorded, dict):
            kind = recorded.get("kind", recorded.get("format")) or "plain"
            return {"prompt_format": kind, "system_prompt": (recorded.get("system_prompt") or "") if kind == "chat" else ""}
        project = snapshot.project
    if project is not None:
        chat = project.prompt_format == "chat"
        return {"prompt_format": project.prompt_format, "system_prompt": project.system_prompt if chat else ""}
    return {}


def _check_rm_format(*, options: dict[str, Any], reward_model_run: TrainingRun) -> None:
    """PPO reads prompts in one format, which must be the one its reward model trained on (the trainer checks
    the saved model again): refused here, on the prompt_format field, before anything is queued."""
    from training.rlhf.chat_format import PromptFormat, PromptFormatError, check_same_format

    try:
        requested = PromptFormat(kind=options.get("prompt_format") or "plain",
                                 system_prompt=options.get("system_prompt") or "")
    except PromptFormatError:
        return  # an invalid value: build_config names the field
    rm_config = reward_model_run.config or {}
    trained = PromptFormat.from_dict({"kind": rm_config.get("prompt_format") or "plain",
                                      "system_prompt": rm_config.get("system_prompt") or ""})
    try:
        check_same_format(trained=trained, requested=requested, what=f"the reward model of {reward_model_run}")
    except PromptFormatError as exc:
        raise LaunchError(str(exc), field="prompt_format") from exc


INPUTS = {"sft": _sft_inputs, "rm": _rm_inputs, "ppo": _ppo_inputs}


# --- 2–4. the run, its directory, its config, the queue ---------------------------------------------------


def build_config(*, kind: str, values: dict[str, Any]) -> Any:
    """The kind's config dataclass from option values — the one place a launch builds it."""
    try:
        return run_kind(kind).config_class(**values)
    except ConfigError as exc:
        raise LaunchError(str(exc).split(": ", 1)[-1], field=exc.field) from exc
    except TypeError as exc:  # an option the config does not have
        raise LaunchError(str(exc)) from exc


def _create(*, kind: str, options: dict[str, Any], name: str = "", created_by=None, resumed_from=None,
            output_dir: str | Path | None = None, enqueue: bool, **sources: Any) -> tuple[TrainingRun, Any]:
    written: list[Path] = []
    try:
        with transaction.atomic():
            inputs = INPUTS[kind](options=options, created_by=created_by, written=written, **sources)
            run = create_run(
                kind=kind, config={}, name=name, created_by=created_by, project=inputs.get("project"),
                snapshot=inputs.get("snapshot"), reward_model_run=inputs.get("reward_model_run"),
                resumed_from=resumed_from,
            )
            out = Path(output_dir).expanduser().resolve() if output_dir else output_dir_of(run)
            values = {**options, **inputs["config"], "output_dir": str(out)}
            if inputs.get("prompt_project") is not None:
                from annotate.services.exporting import ExportError, export_prompts

                try:
                    path, _ = export_prompts(project=inputs["prompt_project"], path=out / PROMPTS_FILE)
                except ExportError as exc:
                    raise LaunchError(str(exc), field="prompt_project") from exc
                written.append(path)
                values["prompts"] = str(path)
            if inputs.get("calibration_project") is not None:
                path = export_calibration_demonstrations(project=inputs["calibration_project"],
                                                         path=out / CALIBRATION_DEMONSTRATIONS_FILE)
                written.append(path)
                values["calibration_set"] = str(path)
            config = build_config(kind=kind, values=values)
            run.config = config_to_dict(config)
            run.output_dir = str(out)
            run.log_path = str(run_log_path(kind=kind, run_id=run.pk, output_dir=out))
            if enqueue:
                run.task_id = str(execute_training_run.enqueue(run.pk).id)
            run.save(update_fields=["config", "output_dir", "log_path", "task_id"])
    except BaseException:
        for path in written:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        raise
    logger.info("launched %s run %s (task %s) into %s", kind, run.pk, run.task_id or "-", out)
    return run, config


def launch_run(*, kind: str, options: dict[str, Any], **launch: Any) -> TrainingRun:
    """Queue a run for the worker (see the module docstring); `launch` holds name, created_by, project (a link),
    the kind's sources (RM: snapshot, or export_project + export_options; PPO: reward_model_run, prompt_project),
    resumed_from and output_dir."""
    run, _ = _create(kind=kind, options=options, enqueue=True, **launch)
    return run


def record_run(*, kind: str, options: dict[str, Any], **launch: Any) -> tuple[TrainingRun, Any]:
    """Record a run that the caller (a command) trains in its own process; returns it with its config."""
    return _create(kind=kind, options=options, enqueue=False, **launch)


# --- actions on a run, checked against its state ---------------------------------------------------------


def cancel_run(*, run: TrainingRun) -> TrainingRun:
    """Graceful stop: the trainer sees `should_stop()`, writes a checkpoint and ends as cancelled. A queued
    run that no worker has picked up is cancelled at once."""
    run.refresh_from_db()
    if not run.is_active:
        raise RunConflict(f"Run {run.pk} has already ended ({run.get_status_display().lower()}).")
    request_cancel(run=run)
    return run


ENDED_UNFINISHED = (TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED)


def can_resume(run: TrainingRun) -> bool:
    """Cut off (failed or cancelled) with a checkpoint to continue from (what the run page offers)."""
    return run.status in ENDED_UNFINISHED and run.checkpoints.exists()


def resume_run(*, run: TrainingRun, created_by=None) -> TrainingRun:
    """Continue `run` itself: the same row is queued again with resume on, so the trainer loads the last
    checkpoint in its output directory and its metrics are appended from the resumed step (one run page per
    training); without a checkpoint, a retry from scratch (its earlier metrics, samples and evaluation cleared).
    Each resume is recorded in `summary["resumes"]` (when, from which step, after which status).

    Idempotent: while the run is queued or running after a resume, it is returned as it is (a double click
    queues one job). Refused (RunConflict) while a run that was never resumed is active, or when it succeeded."""
    from training.models import Checkpoint, Metric, Sample

    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.is_active:
            if (run.summary or {}).get("resumes"):
                return run
            raise RunConflict(f"Run {run.pk} is still {run.get_status_display().lower()}; cancel it first.")
        if run.status not in ENDED_UNFINISHED:
            raise RunConflict(f"Run {run.pk} succeeded; there is nothing to resume. Launch a new run instead.")
        last = run.checkpoints.order_by("-step").first()
        options = dict(run.config or {})
        options["resume"] = "last" if last is not None else ""
        options["output_dir"] = str(output_dir_of(run))
        inputs = INPUTS[run.kind](options=options, snapshot=run.snapshot, reward_model_run=run.reward_model_run,
                                  project=run.project, written=[])  # as the first launch linked them
        # A retry validates the stored config again.
        config = build_config(kind=run.kind, values={**options, **inputs["config"]})
        summary = dict(run.summary or {})
        if last is not None:  # what came after the checkpoint is reported again by the resumed trainer
            Metric.objects.filter(run=run, step__gt=last.step).delete()
            Sample.objects.filter(run=run, step__gt=last.step).delete()
            summary["step"] = last.step
        else:
            Metric.objects.filter(run=run).delete()
            Sample.objects.filter(run=run).delete()
            Checkpoint.objects.filter(run=run).delete()
            run.evaluation = {}
            summary = {key: summary[key] for key in ("resumes",) if key in summary}
        error_lines = (run.error or "").strip().splitlines()
        summary.pop("progress", None)  # the next start measures its own rate
        summary["resumes"] = [*summary.get("resumes", []), {
            "at": timezone.now().isoformat(), "from_step": last.step if last is not None else 0,
            "after": run.status, "by": getattr(created_by, "username", "") or "",
            "error": error_lines[-1][:300] if error_lines else "",
        }]
        run.summary = summary
        run.config = config_to_dict(config)
        run.output_dir = config.output_dir
        run.status = TrainingRun.Status.QUEUED
        run.cancel_requested = False
        run.finished_at = None
        run.exit_code = None
        run.error = ""
        run.task_id = str(execute_training_run.enqueue(run.pk).id)
        run.save(update_fields=["summary", "config", "output_dir", "status", "cancel_requested", "finished_at",
                                "exit_code", "error", "task_id", "evaluation"])
    logger.info("re-queued %s run %s (%s) as task %s", run.kind, run.pk, options["resume"] or "retry", run.task_id)
    return run
