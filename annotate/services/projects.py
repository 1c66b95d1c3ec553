"""Setting a project up in the app (staff), the wizard's steps: create → guidelines → import → sample → open.

`project_setup` says where a project stands (each step done or not, with a one-line summary, and the next one);
the other functions are the steps that write. Importing is `annotate.services.importing`; sampling runs in the
worker (the dashboard's "Sample responses" form queues it, since a request never runs a model).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.db import transaction

from annotate.models import Project, Prompt, Response
from annotate.services.rounds import latest_round

PREVIEW_PROMPTS = 3


@dataclass(frozen=True)
class SetupStep:
    key: str  # create | guidelines | import | sample | open
    title: str
    done: bool
    summary: str


@dataclass(frozen=True)
class ProjectSetup:
    project: Project
    round: int | None  # the latest round (what annotators are offered next)
    prompts: int  # prompts in that round
    ready: int  # of them with at least K min responses (rankable)
    annotators: int
    steps: list[SetupStep]

    @property
    def next_step(self) -> SetupStep | None:
        return next((step for step in self.steps if not step.done), None)


@transaction.atomic
def create_project(
    *,
    name: str,
    description: str = "",
    k_min: int = 4,
    k_max: int = 9,
    annotators_per_prompt: int = 1,
    lease_minutes: int = 30,
    render_markdown: bool = True,
    task_types: str = Project.TaskTypes.RANKINGS,
    demonstration_start: str = Project.DemonstrationStart.BLANK,
    prompt_format: str = "plain",
    system_prompt: str = "",
) -> Project:
    """A new, empty project (the caller validated the fields; the model's constraints hold the K range)."""
    project = Project(
        name=name.strip(), description=description, k_min=k_min, k_max=k_max,
        annotators_per_prompt=annotators_per_prompt, lease_minutes=lease_minutes, render_markdown=render_markdown,
        task_types=task_types, demonstration_start=demonstration_start, prompt_format=prompt_format,
        system_prompt=system_prompt.strip(),
    )
    project.full_clean()
    project.save()
    return project


def set_guidelines(*, project: Project, text: str) -> bool:
    """Store the guidelines; returns whether they changed. Rewriting guidelines that were already there bumps
    the version, so the rankings made under the old text stay told apart (every ranking records its version)."""
    text = text.strip()
    if text == project.guidelines.strip():
        return False
    if project.guidelines.strip():
        project.guidelines_version += 1
    project.guidelines = text
    project.save(update_fields=["guidelines", "guidelines_version"])
    return True


def open_for_annotators(*, project: Project, users: Iterable) -> int:
    """Make `users` annotators of the project (who is one already stays); returns how many were added."""
    users = list(users)
    before = set(project.annotators.values_list("pk", flat=True))
    project.annotators.add(*users)
    return len({u.pk for u in users} - before)


def project_setup(*, project: Project) -> ProjectSetup:
    round_number = latest_round(project=project)
    prompts = Prompt.objects.filter(project=project, round=round_number) if round_number else Prompt.objects.none()
    total = prompts.count()
    ready = prompts.filter(num_responses__gte=project.k_min).count()  # the queue's stored count (indexed fields)
    annotators = project.annotators.count()
    words = len(project.guidelines.split())
    in_round = f" in round {round_number}" if round_number else ""
    steps = [
        SetupStep("create", "Create the project", True,
                  f"K = {project.k_min}–{project.k_max} responses per prompt · {project.annotators_per_prompt} "
                  f"annotator{'s' if project.annotators_per_prompt != 1 else ''} per prompt · leases of "
                  f"{project.lease_minutes} min · model output as {'Markdown' if project.render_markdown else 'text'}"),
        SetupStep("guidelines", "Write the guidelines", bool(words),
                  f"Version {project.guidelines_version}, {words} words" if words else "Not written yet"),
        SetupStep("import", "Import prompts", total > 0,
                  f"{total} prompt{'s' if total != 1 else ''}{in_round}" if total else "No prompts yet"),
        SetupStep("sample", "Sample responses", total > 0 and ready == total,
                  f"{ready} of {total} prompts{in_round} have at least {project.k_min} responses (ready to rank)"
                  if total else "Import prompts first"),
        SetupStep("open", "Open for annotators", annotators > 0 and ready > 0,
                  f"{annotators} annotator{'s' if annotators != 1 else ''}" + ("" if ready else ", nothing to rank yet")
                  if annotators else "No annotators yet"),
    ]
    return ProjectSetup(project=project, round=round_number, prompts=total, ready=ready, annotators=annotators,
                        steps=steps)


def response_preview(*, project: Project, round: int | None, limit: int = PREVIEW_PROMPTS) -> list[dict]:  # noqa: A002
    """The first `limit` prompts of the round that have responses, each with its responses (sampled or imported)
    as annotators will see them, and where they came from."""
    if round is None:
        return []
    prompts = list(
        Prompt.objects.filter(project=project, round=round, num_responses__gt=0).order_by("pk")[:limit]
    )
    responses: dict[int, list[Response]] = {p.pk: [] for p in prompts}
    for response in Response.objects.filter(prompt__in=prompts).order_by("pk"):
        responses[response.prompt_id].append(response)
    return [{"prompt": p, "responses": responses[p.pk]} for p in prompts]
