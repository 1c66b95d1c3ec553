"""Simulated annotators working through the same queue and submit services as people.

Each simulated annotator (users ``sim-1`` … ``sim-N``, members of the project) asks the queue for its next
task, ranks, rates and flags the responses with the demo task's `SimulatedAnnotator` (oracle + noise), and
submits through `submit_ranking`. So the demo, the tests and load tests exercise the path humans use.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from tqdm import tqdm

from annotate.models import Project, Ranking
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
