"""Launch forms, generated from the trainers' config dataclasses.

Every option of `SFTConfig` / `RewardModelConfig` / `PPOConfig` becomes a form field with the dataclass default as its
initial value, the field's help text, its type (bool → checkbox, int/float → number, choices → select,
lists → comma-separated text) and `None` for an empty optional value. Validation is the dataclass's own.

Paths never come from free text: models are chosen among directories discovered under
WORKBENCH_MODEL_ROOTS (or finished runs' outputs under WORKBENCH_RUNS_ROOT), data among files under
WORKBENCH_DATA_ROOT, snapshots and runs from the database. The form checks what it can see (types, paths,
choices) and hands its `options` to the run pipeline (training/launching.py), which decides the output
directory and the inputs and builds the config once; a `LaunchError` naming an option lands on its field.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from django import forms
from django.urls import reverse

from annotate.models import DatasetSnapshot, Project, Ranking
from training import roots, selectors
from training.launch_defaults import Suggestion, read_parameter_count, suggest_ppo, suggest_rm
from training.launching import CALIBRATION_AUTO, LAUNCH_CALIBRATION_SETS, LaunchError, source_prompt_format
from training.models import TrainingRun
from training.rlhf.configs import describe_fields
from training.rlhf.ppo_config import PPOConfig
from training.rlhf.rm_config import CALIBRATION_SETS, RewardModelConfig
from training.rlhf.sft_config import SFTConfig

# --- Field generation --------------------------------------------------------------------------------------


def _list_item_type(config_cls: type, name: str) -> type:
    hint = typing.get_type_hints(config_cls)[name]
    for candidate in (hint, *typing.get_args(hint)):
        if typing.get_origin(candidate) in (list, tuple):
            args = [a for a in typing.get_args(candidate) if a is not Ellipsis]
            if args and args[0] in (int, float, str):
                return args[0]
    return str


class ListField(forms.CharField):
    """A list option as comma-separated text ("0.1, 0.2"), parsed into the item type."""

    def __init__(self, *, item_type: type = str, **kwargs: Any) -> None:
        self.item_type = item_type
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return ", ".join(str(v) for v in value)
        return value

    def to_python(self, value: Any) -> Any:
        if isinstance(value, list | tuple):  # JSON from the API
            value = ", ".join(str(v) for v in value)
        text = super().to_python(value)
        if text in self.empty_values:
            return []
        items = [item.strip() for item in str(text).split(",") if item.strip()]
        try:
            return [self.item_type(item) for item in items]
        except ValueError as exc:
            raise forms.ValidationError(f"Enter a comma-separated list of {self.item_type.__name__} values.") from exc


def config_form_field(desc: dict[str, Any], *, config_cls: type) -> forms.Field:
    """One Django form field for one described config field (see `describe_fields`)."""
    kind, default, optional = desc["type"], desc["default"], desc["optional"]
    label = desc["name"].replace("_", " ")
    common: dict[str, Any] = {"help_text": desc["help"], "label": label[:1].upper() + label[1:]}
    if desc.get("choices"):
        choices = [(c, str(c)) for c in desc["choices"]]
        if optional:
            choices = [("", "(none)"), *choices]
        field: forms.Field = forms.TypedChoiceField(
            choices=choices, coerce=type(desc["choices"][0]), required=not optional,
            empty_value=None, initial=default, **common,
        )
    elif kind == "bool":
        field = forms.BooleanField(required=False, initial=bool(default), **common)
    elif kind == "int":
        field = forms.IntegerField(required=not optional, initial=default, **common)
    elif kind == "float":
        field = forms.FloatField(
            required=not optional, initial=default, widget=forms.NumberInput(attrs={"step": "any"}), **common
        )
    elif kind == "list":
        field = ListField(
            item_type=_list_item_type(config_cls, desc["name"]), required=False, initial=default, **common
        )
    else:
        field = forms.CharField(required=False, initial="" if default is None else default, **common)
    field.config_name = desc["name"]  # type: ignore[attr-defined]
    return field


class ConfigForm(forms.Form):
    """Base of the launch forms: subclasses set `config_class`, the config fields the form fills itself
    (`managed_fields`), the form field that stands for each of those (`option_fields`, where an error on that
    option is shown), and the fields shown outside the "Advanced" group (`primary_fields`)."""

    config_class: type = object
    managed_fields: tuple[str, ...] = ()
    option_fields: dict[str, str] = {}
    primary_fields: tuple[str, ...] = ()
    derived_fields: tuple[str, ...] = ()  # options suggested from the chosen model and data (launch_defaults)
    source_fields: tuple[str, ...] = ()  # the choices they are derived from

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config_names: list[str] = []
        for desc in describe_fields(self.config_class):
            if desc["name"] in self.managed_fields or desc["name"] in self.fields:
                continue
            self.fields[desc["name"]] = config_form_field(desc, config_cls=self.config_class)
            self.config_names.append(desc["name"])
        self.options: dict[str, Any] = {}
        self.suggestion = Suggestion({}, [])

    def suggest(self, suggestion: Suggestion) -> None:
        """The suggested options become the fields' initial values, unless the caller gave them (a run's
        config on "Launch again" wins); the derived options without a suggestion keep the config's default."""
        self.suggestion = suggestion
        for name, value in suggestion.options.items():
            if name in self.fields and name not in self.initial:
                self.fields[name].initial = value

    def watch_sources(self, *, kind: str) -> None:
        """Picking another model or data source asks the server for the derived options (htmx): the answer
        replaces the suggestion line and, out of band, the derived fields."""
        attrs = {
            "hx-get": reverse("training:launch_defaults", args=[kind]), "hx-trigger": "change",
            "hx-target": "#launch-suggestion", "hx-swap": "outerHTML",
            "hx-sync": "closest form:replace",  # the latest choice wins: an earlier answer is dropped
            "hx-include": ", ".join(f"#id_{name}" for name in self.source_fields),
        }
        for name in self.source_fields:
            self.fields[name].widget.attrs.update(attrs)

    def initial_choice(self, name: str) -> str | None:
        """The initial value of a choice field when it is one of its choices (a path never comes from free text)."""
        value = self.initial.get(name)
        return value if value and str(value) in {str(v) for v, _ in self.fields[name].choices if v} else None

    def suggestion_text(self) -> str:
        if any(name in self.initial for name in self.derived_fields):
            return "The training options are the earlier run's (launched again); change any of them."
        if not self.suggestion.reasons:
            return ""
        return f"Suggested: {'; '.join(self.suggestion.reasons)}. Change any of them."

    def derived_bound_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.derived_fields]

    # Field groups for the template: what to train (minus the export options), the export options, the
    # primary config options, and the rest ("Advanced").
    def launch_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.fields if name not in self.config_names and not name.startswith("export_")]

    def export_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.fields if name.startswith("export_")]

    def primary_config_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.config_names if name in self.primary_fields]

    def advanced_config_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.config_names if name not in self.primary_fields]

    def managed_values(self) -> dict[str, Any]:
        """Values of the managed config options the form knows (paths chosen from the roots)."""
        return {}

    def _initial_format(self, values: dict[str, str]) -> None:
        """Start the prompt_format / system_prompt fields from the sources' format (an explicit initial value,
        e.g. "launch again", still wins: the form's `initial` dict comes before the fields')."""
        for name, value in values.items():
            if name in self.fields:
                self.fields[name].initial = value

    def config_values(self) -> dict[str, Any]:
        defaults = {d["name"]: d["default"] for d in describe_fields(self.config_class)}
        values = {}
        for name in self.config_names:
            if name not in self.cleaned_data:
                continue
            value = self.cleaned_data[name]
            desc_field = self.fields[name]
            if value == "" and not desc_field.required and isinstance(desc_field, forms.CharField):
                value = defaults[name]
            values[name] = value
        return values

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if not self.errors:
            self.options = {**self.config_values(), **self.managed_values()}
        return cleaned

    def launch_failed(self, exc: LaunchError) -> None:
        """Show the pipeline's refusal on the field of the option it names (else above the form)."""
        target = self.option_fields.get(exc.field or "", exc.field)
        self.add_error(target if target in self.fields else None, str(exc))


# --- Choices from the roots and the database ---------------------------------------------------------------


def model_choices(*, include_runs: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Model directories under the model roots, plus the models that succeeded runs of the given kinds wrote."""
    choices = [(str(found.path), found.label) for found in roots.discover_models()]
    for run, directory in selectors.model_outputs(kinds=include_runs):
        choices.append((str(directory), f"{run} · {directory.name}"))
    return choices


def data_choices() -> list[tuple[str, str]]:
    return [(str(found.path), found.label) for found in roots.discover_data()]


class RootPathChoiceField(forms.ChoiceField):
    """A path chosen among the discovered ones; re-checked against the roots on submit. `keywords` are
    non-path choices passed through as they are (e.g. "heldout")."""

    def __init__(self, *, allowed_roots, keywords: tuple[str, ...] = (), **kwargs: Any) -> None:
        self.allowed_roots = allowed_roots
        self.keywords = keywords
        super().__init__(**kwargs)

    def clean(self, value: Any) -> Any:
        value = super().clean(value)
        if value in self.empty_values or value in self.keywords:
            return value
        try:
            return str(roots.resolve_inside(value, self.allowed_roots()))
        except roots.OutsideRoots as exc:
            raise forms.ValidationError(str(exc)) from exc


def snapshot_queryset(*, kind: str):
    """The snapshots one trainer takes: rankings for the RM, demonstrations (sft) for SFT."""
    return DatasetSnapshot.objects.filter(kind=kind).select_related("project").order_by("-created_at")


def snapshot_train_rankings(snapshot: DatasetSnapshot) -> int | None:
    """Training rankings of a snapshot: the export's counts (kwise train split), or a hand-made manifest's."""
    counts = snapshot.counts or {}
    kwise = counts.get("kwise")
    for value in ((kwise or {}).get("train") if isinstance(kwise, dict) else None, counts.get("train"),
                  counts.get("rankings")):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def snapshot_label(snapshot: DatasetSnapshot) -> str:
    """A snapshot by its name (its directory), project, size and date — not its content hash."""
    counts = snapshot.counts or {}
    size = ", ".join(f"{counts[key]} {key}" for key in ("rankings", "pairs") if key in counts)
    if snapshot.kind == DatasetSnapshot.Kind.SFT:
        demonstrations = sum(counts.get(key, 0) for key in ("train", "test") if isinstance(counts.get(key), int))
        size = f"{demonstrations} demonstrations" if demonstrations else ""
    elif not size and isinstance(counts.get("kwise"), dict):
        size = f"{sum(v for v in counts['kwise'].values() if isinstance(v, int))} rankings"
    return (f"{Path(snapshot.path).name} · {snapshot.project}" + (f" · {size}" if size else "")
            + f" · {snapshot.created_at:%Y-%m-%d %H:%M}")


def _parameters(model: str | None) -> int | None:
    """The parameter count of a chosen model directory (an adapter's base only inside the roots)."""
    return read_parameter_count(model, roots=_allowed_model_roots()) if model else None


def _pk(value: Any) -> int | None:
    """A model instance's or an id's primary key (None for anything else)."""
    value = getattr(value, "pk", value)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def initial_from_run(form_class: type[ConfigForm], run: TrainingRun) -> dict[str, Any]:
    """The form's initial values that launch `run` again: its config options, its sources (snapshot, RM run,
    project, model) in the form's fields, and its name marked "(again)"."""
    config = dict(run.config or {})
    managed = {"output_dir", "resume", "dataset", "prompts", "reward_model"}
    initial: dict[str, Any] = {
        name: value for name, value in config.items()
        if name not in managed and name not in form_class.option_fields and value is not None
    }
    for option, field_name in form_class.option_fields.items():
        if option in config and option not in managed and config[option] not in (None, ""):
            initial[field_name] = config[option]
    if run.snapshot_id:
        initial["snapshot"] = run.snapshot_id
    if run.reward_model_run_id:
        initial["reward_model_run"] = run.reward_model_run_id
    if run.kind == TrainingRun.Kind.PPO and run.project_id:
        initial["prompt_project"] = run.project_id
    initial["name"] = (run.name or f"run {run.pk}") + " (again)"
    return initial


def project_queryset():
    return Project.objects.order_by("name")


def _pk(value: Any) -> int | None:
    value = getattr(value, "pk", value)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def prompt_format_initial(*, snapshot: Any = None, project: Any = None, reward_model_run: Any = None
                          ) -> dict[str, str]:
    """The prompt format a launch form starts from, for sources given as ids or objects: a reward-model run's,
    else a snapshot's, else a project's (`launching.source_prompt_format`); {} when none is found."""
    run = TrainingRun.objects.filter(pk=run_id).first() if (run_id := _pk(reward_model_run)) is not None else None
    found = (DatasetSnapshot.objects.select_related("project").filter(pk=snapshot_id).first()
             if (snapshot_id := _pk(snapshot)) is not None else None)
    chosen = Project.objects.filter(pk=project_id).first() if (project_id := _pk(project)) is not None else None
    return source_prompt_format(snapshot=found, project=chosen, reward_model_run=run if run and run.config else None)


# --- The launch forms --------------------------------------------------------------------------------------


# Runs whose model can generate: the SFT model (the start of the loop) and PPO policies (its later rounds).
POLICY_RUN_KINDS = (TrainingRun.Kind.SFT, TrainingRun.Kind.PPO)


def _allowed_model_roots() -> list[Path]:
    return [*roots.model_roots(), roots.runs_root()]


class RMLaunchForm(ConfigForm):
    """Train a reward model from a recorded snapshot, or from a project exported now."""

    config_class = RewardModelConfig
    managed_fields = ("model", "dataset", "output_dir", "resume", "tokenizer", "calibration_set")
    option_fields = {"model": "base_model", "dataset": "snapshot", "calibration_set": "calibration"}
    primary_fields = (
        "epochs", "max_steps", "learning_rate", "batch_size", "max_length", "lora", "checkpoint_every", "seed",
        "prompt_format", "system_prompt",
    )
    derived_fields = ("learning_rate", "epochs", "batch_size")
    source_fields = ("base_model", "snapshot", "project")

    name = forms.CharField(max_length=200, required=False, help_text="A label for the runs list (optional).")
    snapshot = forms.ModelChoiceField(
        queryset=DatasetSnapshot.objects.none(), required=False,
        help_text="A dataset snapshot exported earlier (export_rankings or the data pages).",
    )
    project = forms.ModelChoiceField(
        queryset=Project.objects.none(), required=False, label="Or export now from project",
        help_text="Export this project's rankings to a new snapshot now and train on it.",
    )
    export_group = forms.ChoiceField(
        choices=[("per-annotator", "each annotator's ranking"), ("consensus", "one consensus ranking per prompt")],
        initial="per-annotator", label="Rankings", help_text="How “export now” groups the rankings.",
    )
    export_drop_flagged = forms.BooleanField(
        required=False, label="Drop flagged rankings", help_text="Leave these rankings out of the export."
    )
    export_drop_all_bad = forms.BooleanField(
        required=False, label="Drop “all bad” rankings", help_text="Leave these rankings out of the export."
    )
    export_test_fraction = forms.FloatField(
        initial=0.1, min_value=0.0, max_value=0.9, label="Held-out fraction",
        help_text="Share of prompts in the test split (split by prompt).",
        widget=forms.NumberInput(attrs={"step": "any"}),
    )
    base_model = RootPathChoiceField(
        allowed_roots=_allowed_model_roots, label="Base model",
        help_text="The backbone to start from: a model directory under the configured model roots.",
    )
    calibration = RootPathChoiceField(
        allowed_roots=lambda: [roots.data_root()], keywords=CALIBRATION_SETS + LAUNCH_CALIBRATION_SETS,
        required=False, label="Calibration set",
        help_text="Rewards on these responses are shifted to mean 0 after training (InstructGPT §3.5: the "
                  "labelers' demonstrations score 0 on average): by default the project's accepted "
                  "demonstrations when it has any, else the held-out split; or the held-out split, the training "
                  "split, none, or a file of prompt + response records under the data root.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["snapshot"].queryset = snapshot_queryset(kind=DatasetSnapshot.Kind.RANKINGS)
        self.fields["snapshot"].label_from_instance = snapshot_label
        self.fields["project"].queryset = project_queryset()
        self.fields["base_model"].choices = [
            ("", "— choose a model —"), *model_choices(include_runs=(TrainingRun.Kind.SFT,)),
        ]
        self.fields["calibration"].choices = [
            (CALIBRATION_AUTO, "the project's accepted demonstrations if any, else the held-out split"),
            ("demonstrations", "the project's accepted demonstrations"),
            ("heldout", "held-out split"), ("train", "training split"), ("none", "none (no calibration)"),
            *[(path, f"file: {label}") for path, label in data_choices() if not Path(path).is_dir()],
        ]
        self.fields["calibration"].initial = CALIBRATION_AUTO
        self._initial_format(prompt_format_initial(snapshot=self.initial.get("snapshot"),
                                                   project=self.initial.get("project")))
        self.watch_sources(kind="rm")
        if not self.is_bound:
            self.suggest(self.suggested())

    def suggested(self) -> Suggestion:
        """lr and epochs from the chosen model's size, batch size from the chosen snapshot's training rankings
        (or, for "export now", the project's rankings less the held-out fraction)."""
        model = self.initial_choice("base_model")
        train_rankings = None
        snapshot_id, project_id = _pk(self.initial.get("snapshot")), _pk(self.initial.get("project"))
        snapshot = DatasetSnapshot.objects.filter(pk=snapshot_id).first() if snapshot_id else None
        if snapshot is not None:
            train_rankings = snapshot_train_rankings(snapshot)
        elif project_id:
            total = Ranking.objects.filter(prompt__project_id=project_id).count()
            train_rankings = round(total * (1 - (self.fields["export_test_fraction"].initial or 0))) or None
        return suggest_rm(parameters=_parameters(model), train_rankings=train_rankings)

    def export_options(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "group": data.get("export_group") or "per-annotator",
            "drop_flagged": bool(data.get("export_drop_flagged")),
            "drop_all_bad": bool(data.get("export_drop_all_bad")),
            "test_fraction": data.get("export_test_fraction") if data.get("export_test_fraction") is not None else 0.1,
        }

    def managed_values(self) -> dict[str, Any]:
        data = self.cleaned_data
        if bool(data.get("snapshot")) == bool(data.get("project")):
            self.add_error("snapshot", "Choose a snapshot, or a project to export now (not both).")
        # The dataset is the snapshot's (or the one exported at launch): the pipeline fills it in.
        return {"model": data.get("base_model") or "", "calibration_set": data.get("calibration") or CALIBRATION_AUTO}


class SFTLaunchForm(ConfigForm):
    """Fine-tune a model on a demonstrations (SFT) snapshot; the prompt format is the snapshot's."""

    config_class = SFTConfig
    managed_fields = ("model", "dataset", "output_dir", "resume", "tokenizer", "prompt_format", "system_prompt")
    option_fields = {"model": "base_model", "dataset": "snapshot", "prompt_format": "snapshot",
                     "system_prompt": "snapshot"}
    primary_fields = (
        "epochs", "max_steps", "learning_rate", "batch_size", "max_length", "packing", "lora", "checkpoint_every",
        "seed",
    )

    name = forms.CharField(max_length=200, required=False, help_text="A label for the runs list (optional).")
    snapshot = forms.ModelChoiceField(
        queryset=DatasetSnapshot.objects.none(), required=False, label="Demonstrations",
        help_text="A demonstrations snapshot exported earlier (export_demonstrations); the run uses its prompt "
                  "format (plain text or the chat template, as the project declares).",
    )
    project = forms.ModelChoiceField(
        queryset=Project.objects.none(), required=False, label="Or export now from project",
        help_text="Export this project's accepted demonstrations to a new snapshot now and fine-tune on it.",
    )
    export_test_fraction = forms.FloatField(
        initial=0.1, min_value=0.0, max_value=0.9, label="Held-out fraction",
        help_text="Share of prompts in the test split (split by prompt, as the ranking export does).",
        widget=forms.NumberInput(attrs={"step": "any"}),
    )
    base_model = RootPathChoiceField(
        allowed_roots=_allowed_model_roots, label="Pre-trained model",
        help_text="The model to fine-tune: a model directory under the configured model roots (or a finished "
                  "SFT run's model, to fine-tune it further).",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["snapshot"].queryset = snapshot_queryset(kind=DatasetSnapshot.Kind.SFT)
        self.fields["snapshot"].label_from_instance = snapshot_label
        self.fields["project"].queryset = project_queryset()
        self.fields["base_model"].choices = [
            ("", "— choose a model —"), *model_choices(include_runs=(TrainingRun.Kind.SFT,)),
        ]

    def export_options(self) -> dict[str, Any]:
        fraction = self.cleaned_data.get("export_test_fraction")
        return {"test_fraction": 0.1 if fraction is None else fraction}

    def managed_values(self) -> dict[str, Any]:
        data = self.cleaned_data
        if bool(data.get("snapshot")) == bool(data.get("project")):
            self.add_error("snapshot", "Choose a demonstrations snapshot, or a project to export now (not both).")
        # The dataset and the prompt format are the snapshot's (or the one exported at launch): the pipeline
        # fills them in.
        return {"model": data.get("base_model") or ""}


def sft_train_file(snapshot: DatasetSnapshot | None) -> str | None:
    """The train split of a JSONL demonstrations snapshot under the data root (PPO-ptx's texts: prompt +
    response per line), else None."""
    if snapshot is None or snapshot.kind != DatasetSnapshot.Kind.SFT:
        return None
    try:
        return str(roots.resolve_inside(Path(snapshot.path) / "train.jsonl", [roots.data_root()]))
    except roots.OutsideRoots:
        return None


def sft_ptx_choices() -> list[tuple[str, str]]:
    """PPO-ptx on the SFT data: every demonstrations snapshot's train split the data root holds."""
    found = ((sft_train_file(s), s) for s in snapshot_queryset(kind=DatasetSnapshot.Kind.SFT))
    return [(path, f"demonstrations: {snapshot_label(s)}") for path, s in found if path]


def _data_file_choices(*, blank: str) -> list[tuple[str, str]]:
    return [("", blank), *[(path, label) for path, label in data_choices() if not Path(path).is_dir()]]


class PPOLaunchForm(ConfigForm):
    """Train a policy with PPO: a policy model, a reward-model run, and prompts (a project or a file)."""

    config_class = PPOConfig
    managed_fields = ("policy", "reward_model", "prompts", "output_dir", "eval_prompts", "ptx_dataset", "resume")
    option_fields = {"policy": "policy_model", "reward_model": "reward_model_run", "prompts": "prompt_project",
                     "eval_prompts": "eval_prompt_file", "ptx_dataset": "ptx_file"}
    primary_fields = (
        "iterations", "total_episodes", "rollout_batch_size", "mini_batch_size", "micro_batch_size", "ppo_epochs",
        "response_length", "init_kl_coef", "kl_target", "lr", "lora", "checkpoint_every", "sample_every", "seed",
        "prompt_format", "system_prompt",
    )
    derived_fields = ("lr", "critic_lr")
    source_fields = ("policy_model",)

    name = forms.CharField(max_length=200, required=False, help_text="A label for the runs list (optional).")
    policy_model = RootPathChoiceField(
        allowed_roots=_allowed_model_roots, label="Policy",
        help_text="The policy to start from, also the frozen reference of the KL penalty: a finished SFT run's "
                  "model (the start of the loop), a model under the model roots, or the final policy of a finished "
                  "PPO run (to continue the loop).",
    )
    reward_model_run = forms.ModelChoiceField(
        queryset=TrainingRun.objects.none(), label="Reward model",
        help_text="A reward-model run that succeeded; its model scores the rollouts and initialises the critic.",
    )
    prompt_project = forms.ModelChoiceField(
        queryset=Project.objects.none(), required=False, label="Prompts from project",
        help_text="Train on this project's prompts (distinct texts of every round), written to a prompt file now.",
    )
    prompt_file = RootPathChoiceField(
        allowed_roots=lambda: [roots.data_root()], required=False, label="Or prompts from a file",
        help_text="A JSONL (\"prompt\" per line) or text file under the data root.",
    )
    eval_prompt_file = RootPathChoiceField(
        allowed_roots=lambda: [roots.data_root()], required=False, label="Held-out prompts",
        help_text="Prompts for the before/after evaluation; empty holds out eval fraction of the training prompts.",
    )
    ptx_file = RootPathChoiceField(
        allowed_roots=lambda: [roots.data_root()], required=False, label="Pre-training texts (PPO-ptx)",
        help_text="Texts for the PPO-ptx loss, used when ptx coef > 0: a file under the data root, or the "
                  "demonstrations of an SFT snapshot (prompt + response).",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["policy_model"].choices = [
            ("", "— choose a policy —"), *model_choices(include_runs=POLICY_RUN_KINDS),
        ]
        self.fields["reward_model_run"].queryset = TrainingRun.objects.filter(
            kind=TrainingRun.Kind.RM, status=TrainingRun.Status.SUCCEEDED
        ).order_by("-created_at")
        self.fields["reward_model_run"].label_from_instance = lambda run: (
            f"#{run.pk} {run.name or 'reward model'} ({run.finished_at:%Y-%m-%d %H:%M})" if run.finished_at
            else f"#{run.pk} {run.name or 'reward model'}"
        )
        self.fields["prompt_project"].queryset = project_queryset()
        self.fields["prompt_file"].choices = _data_file_choices(blank="— none —")
        self.fields["eval_prompt_file"].choices = _data_file_choices(blank="hold out a fraction of the prompts")
        self.fields["ptx_file"].choices = [*_data_file_choices(blank="— none —"), *sft_ptx_choices()]
        self._initial_format(prompt_format_initial(reward_model_run=self.initial.get("reward_model_run"),
                                                   project=self.initial.get("prompt_project")))
        self.watch_sources(kind="ppo")
        if not self.is_bound:
            self.suggest(suggest_ppo(parameters=_parameters(self.initial_choice("policy_model"))))

    def managed_values(self) -> dict[str, Any]:
        data = self.cleaned_data
        if bool(data.get("prompt_project")) == bool(data.get("prompt_file")):
            self.add_error("prompt_project", "Choose a project or a prompt file (not both).")
        # The reward model is the one the chosen run reported; a project's prompts are exported at launch.
        values = {"policy": data.get("policy_model") or "", "eval_prompts": data.get("eval_prompt_file") or "",
                  "ptx_dataset": data.get("ptx_file") or ""}
        if data.get("prompt_file"):
            values["prompts"] = data["prompt_file"]
        return values


class NewRoundForm(forms.Form):
    """Sample a new annotation round from a policy (a finished PPO run's, or any model under the roots)."""

    project = forms.ModelChoiceField(queryset=Project.objects.none(), help_text="The project to add a round to.")
    model = RootPathChoiceField(
        allowed_roots=_allowed_model_roots, label="Policy",
        help_text="The policy to sample from: a finished SFT run's model or PPO run's policy, or a model under "
                  "the model roots.",
    )
    k = forms.IntegerField(min_value=4, max_value=9, initial=4, label="K (responses per prompt)",
                           help_text="Within the project's K range.")
    from_round = forms.IntegerField(
        min_value=1, required=False, label="Copy prompts from round",
        help_text="Whose prompts the new round asks again (default: the latest round).",
    )
    max_prompts = forms.IntegerField(min_value=1, required=False, help_text="At most this many prompts (optional).")
    baseline_model = RootPathChoiceField(
        allowed_roots=_allowed_model_roots, required=False, label="Blind A/B against",
        help_text="Optionally mix in responses of this policy (e.g. the one PPO started from).",
    )
    baseline_k = forms.IntegerField(min_value=0, max_value=8, initial=0, required=False,
                                    label="Responses from the baseline", help_text="Out of K; 0: none.")
    temperature = forms.FloatField(initial=1.0, min_value=0.01, widget=forms.NumberInput(attrs={"step": "any"}),
                                   help_text="Sampling temperature.")
    top_p = forms.FloatField(initial=1.0, min_value=0.01, max_value=1.0,
                             widget=forms.NumberInput(attrs={"step": "any"}), help_text="Nucleus sampling (1: off).")
    max_new_tokens = forms.IntegerField(initial=64, min_value=1, max_value=4096, help_text="Longest response.")
    seed = forms.IntegerField(initial=0, min_value=0, help_text="Sampling seed.")

    def __init__(self, *args: Any, run: TrainingRun | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run = run
        self.fields["project"].queryset = project_queryset()
        choices = model_choices(include_runs=POLICY_RUN_KINDS)
        self.fields["model"].choices = [("", "— choose a policy —"), *choices]
        self.fields["baseline_model"].choices = [("", "— none —"), *choices]
        if run is not None:
            policy = run.output("policy")
            if policy is not None:
                self.fields["model"].initial = str(policy)
            start = (run.config or {}).get("policy")
            if start and any(value == start for value, _ in choices):
                self.fields["baseline_model"].initial = start
                self.fields["baseline_k"].initial = 1  # a preset baseline with a count of 0 would be refused
            if run.project is not None:
                self.fields["k"].initial = max(self.fields["k"].min_value or 0, run.project.k_min)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        project, k = cleaned.get("project"), cleaned.get("k")
        if project is not None and k is not None and not project.k_min <= k <= project.k_max:
            self.add_error("k", f"K must be within the project's range {project.k_min}–{project.k_max}.")
        baseline, baseline_k = cleaned.get("baseline_model"), cleaned.get("baseline_k") or 0
        if baseline and k is not None and not 0 < baseline_k < k:
            self.add_error("baseline_k", f"With a baseline, between 1 and K − 1 ({k - 1}) of the responses.")
        if baseline_k and not baseline:
            self.add_error("baseline_model", "Choose the baseline policy, or set its responses to 0.")
        return cleaned

    def sampling_params(self) -> dict[str, Any]:
        return {key: self.cleaned_data[key] for key in ("temperature", "top_p", "max_new_tokens", "seed")}


class SampleResponsesForm(forms.Form):
    """Sample responses for a project's latest round in place (the project wizard's step; no new round)."""

    model = RootPathChoiceField(
        allowed_roots=_allowed_model_roots, label="Model",
        help_text="The model to sample from: a model under the model roots, a finished SFT run's model or a "
                  "PPO run's policy.",
    )
    k = forms.IntegerField(min_value=4, max_value=9, label="K (responses per prompt)",
                           help_text="Within the project's K range; prompts short of K are topped up.")
    temperature = forms.FloatField(initial=1.0, min_value=0.01, widget=forms.NumberInput(attrs={"step": "any"}),
                                   help_text="Sampling temperature (higher: more varied responses).")
    top_p = forms.FloatField(initial=1.0, min_value=0.01, max_value=1.0,
                             widget=forms.NumberInput(attrs={"step": "any"}), help_text="Nucleus sampling (1: off).")
    max_new_tokens = forms.IntegerField(initial=64, min_value=1, max_value=4096, help_text="Longest response.")
    seed = forms.IntegerField(initial=0, min_value=0, help_text="Sampling seed.")

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.project = project
        self.fields["model"].choices = [("", "— choose a model —"), *model_choices(include_runs=POLICY_RUN_KINDS)]
        self.fields["k"].initial = project.k_min

    def clean_k(self) -> int:
        k = self.cleaned_data["k"]
        if not self.project.k_min <= k <= self.project.k_max:
            raise forms.ValidationError(f"K must be within the project's range {self.project.k_min}–{self.project.k_max}.")
        return k

    def sampling_params(self) -> dict[str, Any]:
        return {key: self.cleaned_data[key] for key in ("temperature", "top_p", "max_new_tokens", "seed")}


class RMCheckForm(forms.Form):
    rm_run = forms.ModelChoiceField(queryset=TrainingRun.objects.none(), label="Reward model",
                                    help_text="A reward-model run that succeeded.")

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        runs = TrainingRun.objects.filter(kind=TrainingRun.Kind.RM, status=TrainingRun.Status.SUCCEEDED)
        self.fields["rm_run"].queryset = runs.order_by("-created_at")
        own = runs.filter(snapshot__project=project).order_by("-created_at").first()
        if own is not None:
            self.fields["rm_run"].initial = own.pk


def api_form_data(form: forms.Form, data: Any) -> dict[str, Any]:
    """JSON from the API as data for `form`'s class: options left out take the form's initial values (the
    dataclass defaults), booleans and lists are kept (the fields accept them), None means empty."""
    values = {key: ("" if value is None else value) for key, value in dict(data).items()}
    for name, field in form.fields.items():
        if name not in values:
            initial = form.get_initial_for_field(field, name)
            if initial is not None:
                values[name] = initial
    return values
