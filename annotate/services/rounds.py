"""Annotation rounds: a project's prompts are asked again, round after round, to rank responses of newer
policies. `copy_prompts_to_round` writes the new round's Prompt rows; sampling them is
`annotate.services.sampling`."""

from __future__ import annotations

from django.db import transaction
from django.db.models import Max

from annotate.models import Project, Prompt


def next_round(*, project: Project) -> int:
    return (project.prompts.aggregate(last=Max("round"))["last"] or 0) + 1


def latest_round(*, project: Project) -> int | None:
    return project.prompts.aggregate(last=Max("round"))["last"]


@transaction.atomic
def copy_prompts_to_round(
    *, project: Project, from_round: int, to_round: int, max_prompts: int | None = None, note: str = ""
) -> int:
    """Copy the prompts of `from_round` (distinct texts, in id order) into `to_round`; returns how many are
    in `to_round` afterwards. Prompts already there are kept, so a re-run continues instead of duplicating."""
    source = project.prompts.filter(round=from_round).order_by("pk")
    seen = set(project.prompts.filter(round=to_round).values_list("text_hash", flat=True))
    copies = []
    for prompt in source.iterator(chunk_size=2000):
        if max_prompts is not None and len(seen) >= max_prompts:
            break
        if prompt.text_hash in seen:
            continue
        seen.add(prompt.text_hash)
        copies.append(
            Prompt(
                project=project, text=prompt.text, text_hash=prompt.text_hash, external_id=prompt.external_id,
                metadata=prompt.metadata, round=to_round,
                source=(note or f"copied from round {from_round}")[:500],
            )
        )
    Prompt.objects.bulk_create(copies)
    return project.prompts.filter(round=to_round).count()
