"""Simulated annotators working through the same queue and submit services as people.

Each simulated annotator (users ``sim-1`` … ``sim-N``, members of the project) asks the queue for its next
task, ranks, rates and flags the responses with the demo task's `SimulatedAnnotator` (oracle + noise), and
submits through `submit_ranking`. So the demo, the tests and load tests exercise the path humans use.
`simulate_demonstrations` does the same for demonstrations (lease, write, submit for review); what they write
is the caller's (the demo: the oracle's best of M samples, `lightly_noised`).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from tqdm import tqdm

from annotate.models import Demonstration, Project, Ranking
from annotate.selectors import project_progress
from annotate.services.queue import lease_next_task, responses_in_display_order
from annotate.services.submission import submit_ranking
from training.rlhf.demo_task import SimulatedAnnotator

MAX_SIMULATED_ANNOTATORS = 100


@dataclass
class SimulationSummary:
    project: str
    annotators: int
    agreement: float
    rankings: int = 0
    by_annotator: dict[str, int] = field(default_factory=dict)
    left_in_project: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        per = ", ".join(f"{name}: {n}" for name, n in sorted(self.by_annotator.items(), key=_natural))
        return [
            f"Simulated {self.annotators} annotator(s) at agreement {self.agreement:.2f} on project "
            f"'{self.project}': {self.rankings} ranking(s) in {self.seconds:.1f} s.",
            f"Per annotator: {per or 'none'}.",
            f"Rankings still needed in the project: {self.left_in_project}.",
        ]


def _natural(item: tuple[str, int]):
    name = item[0]
    prefix, _, number = name.rpartition("-")
    return (prefix, int(number)) if number.isdigit() else (name, 0)


def simulated_users(*, project: Project, count: int) -> list:
    """Users sim-1 … sim-N (created without a usable password), made members of the project."""
    User = get_user_model()
    users = []
    with transaction.atomic():
        for i in range(1, count + 1):
            user, created = User.objects.get_or_create(username=f"sim-{i}")
            if created:
                user.set_unusable_password()
                user.save(update_fields=["password"])
            users.append(user)
        project.annotators.add(*users)
    return users


def simulate_annotations(
    *,
    project: Project,
    annotators: int,
    agreement: float = 0.73,
    seed: int = 0,
    limit: int | None = None,
    progress: bool = False,
) -> SimulationSummary:
    """Rank pending work of ``project`` with ``annotators`` simulated annotators, taking turns, until nothing
    needs them or ``limit`` rankings were made. Returns a summary."""
    errors: dict[str, list[str]] = {}
    if not 1 <= annotators <= MAX_SIMULATED_ANNOTATORS:
        errors["annotators"] = [f"annotators must be between 1 and {MAX_SIMULATED_ANNOTATORS}, got {annotators}."]
    if not 0.5 <= agreement < 1.0:
        errors["agreement"] = [f"agreement must be at least 0.5 (chance) and below 1, got {agreement}."]
    if limit is not None and limit < 1:
        errors["limit"] = [f"limit must be 1 or more, got {limit}."]
    if errors:
        raise ValidationError(errors)

    started = time.monotonic()
    users = simulated_users(project=project, count=annotators)
    workers = [
        (user, SimulatedAnnotator(agreement=agreement, seed=seed * 1000 + i, name=user.username))
        for i, user in enumerate(users, start=1)
    ]
    counts: Counter[str] = Counter()
    before = project_progress(project=project, user=users[0])
    total = min(limit, before.left) if limit is not None else before.left
    bar = tqdm(total=total, disable=not progress, unit="ranking", desc=f"simulating '{project.name}'")
    try:
        active = list(workers)
        while active and (limit is None or sum(counts.values()) < limit):
            still_active = []
            for user, sim in active:
                if limit is not None and sum(counts.values()) >= limit:
                    break
                assignment = lease_next_task(annotator=user, project=project)
                if assignment is None:
                    continue
                still_active.append((user, sim))
                responses = responses_in_display_order(assignment=assignment)
                prompt_text = assignment.prompt.text
                texts = [r.text for r in responses]
                ids = [r.pk for r in responses]
                record = sim.annotate(prompt_text, texts)
                tiers = [[ids[i] for i in tier] for tier in record["ranking"]]
                ratings = {str(rid): value for rid, value in zip(ids, record["ratings"])}
                flags = {str(rid): keys for rid, keys in zip(ids, record["flags"]) if keys}
                result = submit_ranking(
                    annotator=user,
                    assignment_id=assignment.pk,
                    tiers=tiers,
                    ratings=ratings,
                    flags=flags,
                    all_bad=bool(record["all_bad"]),
                    seconds_spent=0.0,
                    source=Ranking.Source.SIMULATED,
                )
                if result.created:
                    counts[user.username] += 1
                    bar.update(1)
            active = still_active
    finally:
        bar.close()
    after = project_progress(project=project, user=users[0])
    return SimulationSummary(
        project=project.name,
        annotators=annotators,
        agreement=agreement,
        rankings=sum(counts.values()),
        by_annotator=dict(counts),
        left_in_project=after.left,
        seconds=time.monotonic() - started,
    )


# --- Demonstrations ------------------------------------------------------------------------------------------

Writer = Callable[[str, random.Random], str]


def lightly_noised(text: str, *, rng: random.Random, edit_probability: float = 0.25) -> str:
    """A hand-written flaw now and then: with `edit_probability`, one word (never the last, so the ending
    stays) is dropped or doubled. The text is otherwise unchanged, leading space included."""
    words = text.split(" ")
    content = [i for i, w in enumerate(words[:-1]) if w]
    if not content or rng.random() >= edit_probability:
        return text
    i = rng.choice(content)
    if rng.random() < 0.5:
        del words[i]
    else:
        words.insert(i, words[i])
    return " ".join(words)


@dataclass
class DemonstrationSimulationSummary:
    project: str
    annotators: int
    demonstrations: int = 0
    skipped: int = 0
    by_annotator: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        per = ", ".join(f"{name}: {n}" for name, n in sorted(self.by_annotator.items(), key=_natural))
        return [f"{self.annotators} simulated annotator(s) wrote {self.demonstrations} demonstration(s) on project "
                f"'{self.project}' in {self.seconds:.1f} s ({self.skipped} skipped: nothing to write).",
                f"Per annotator: {per or 'none'}."]


def simulate_demonstrations(*, project: Project, annotators: int, write: Writer, limit: int, seed: int = 0,
                            progress: bool = False) -> DemonstrationSimulationSummary:
    """Write up to `limit` demonstrations with simulated annotators (users sim-1 … sim-N) through the
    demonstration queue and submit path a person uses: each leases its next task, `write(prompt, rng)` gives
    the text, and it is submitted for review (a blank text is skipped, as a person would). Taking turns, so the
    queue spreads them over prompts (fewest demonstrations first)."""
    from annotate.services.demonstrations import (
        lease_next_demonstration,
        skip_demonstration,
        submit_demonstration,
    )

    errors: dict[str, list[str]] = {}
    if not 1 <= annotators <= MAX_SIMULATED_ANNOTATORS:
        errors["annotators"] = [f"annotators must be between 1 and {MAX_SIMULATED_ANNOTATORS}, got {annotators}."]
    if limit < 1:
        errors["limit"] = [f"limit must be 1 or more, got {limit}."]
    if not project.wants_demonstrations:
        errors["project"] = [f"project '{project.name}' does not ask for demonstrations (its task types are "
                             f"{project.get_task_types_display().lower()})."]
    if errors:
        raise ValidationError(errors)
    started = time.monotonic()
    users = simulated_users(project=project, count=annotators)
    rngs = {user.pk: random.Random(f"sim-demonstrations/{seed}/{user.username}") for user in users}
    summary = DemonstrationSimulationSummary(project=project.name, annotators=annotators)
    counts: Counter[str] = Counter()
    bar = tqdm(total=limit, disable=not progress, unit="demonstration", desc=f"writing '{project.name}'")
    try:
        active = list(users)
        while active and sum(counts.values()) < limit:
            still_active = []
            for user in active:
                if sum(counts.values()) >= limit:
                    break
                task = lease_next_demonstration(annotator=user, project=project)
                if task is None:
                    continue
                still_active.append(user)
                text = write(task.prompt.text, rngs[user.pk])
                if not text.strip():
                    skip_demonstration(annotator=user, demonstration_id=task.pk, reason="nothing to write")
                    summary.skipped += 1
                    continue
                if submit_demonstration(annotator=user, demonstration_id=task.pk, text=text, seconds_spent=0.0,
                                        source=Demonstration.Source.SIMULATED).created:
                    counts[user.username] += 1
                    bar.update(1)
            active = still_active
    finally:
        bar.close()
    summary.demonstrations = sum(counts.values())
    summary.by_annotator = dict(counts)
    summary.seconds = time.monotonic() - started
    return summary
