"""Sample K responses per prompt from a model and record where each came from.

`sample_project_responses` is behind the `sample_responses` command and the dashboard's "new round" (called
with a PPO run's policy directory). Generation itself is `training.rlhf.sampling` (pure torch/transformers).

Resumable: only prompts short of K responses are sampled, and each prompt's new responses are written in
one transaction, so an interrupted run loses at most the prompts in flight and a second run continues.
Prompts that already have a ranking or an assignment are left alone (adding responses under an annotator's
feet would change what they rank).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import Count, Exists, OuterRef

from annotate.models import Assignment, Project, Prompt, Ranking, Response, text_hash
from training.rlhf.sampling import (
    LoadedPolicy,
    SamplingParams,
    load_policy,
    policy_generator,
    sample_distinct,
)


class SamplingError(ValueError):
    """Bad sampling parameters (k outside the project's range, an unknown device…)."""


@dataclass
class SamplingSummary:
    project: str
    model: str = ""
    revision: str = ""
    k: int = 0
    round: int | None = None
    prompts_considered: int = 0  # prompts in scope (the round, if one was given)
    prompts_full: int = 0  # already had K responses: skipped
    prompts_locked: int = 0  # short of K but already ranked or assigned: left alone
    prompts_sampled: int = 0  # got their K responses in this run
    prompts_incomplete: int = 0  # could not reach K distinct responses within max_tries: nothing written
    responses_created: int = 0
    discarded_duplicates: int = 0
    discarded_empty: int = 0
    truncated: int = 0  # accepted responses that hit max_new_tokens without EOS
    seconds: float = 0.0
    incomplete_prompt_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        text = (
            f"Project '{self.project}', K={self.k}: sampled {self.prompts_sampled} prompts "
            f"({self.responses_created} responses) in {self.seconds:.1f} s; {self.prompts_full} already had "
            f"{self.k} responses"
        )
        if self.prompts_locked:
            text += f"; {self.prompts_locked} short but already ranked or assigned (left alone)"
        if self.prompts_incomplete:
            text += (
                f"; {self.prompts_incomplete} could not get {self.k} distinct responses (nothing written for "
                "them: raise --temperature or --max-tries and run again)"
            )
        text += (
            f". Re-sampled {self.discarded_duplicates} duplicates and {self.discarded_empty} empty responses; "
            f"{self.truncated} responses hit max_new_tokens."
        )
        return text


def sample_project_responses(
    *,
    project: Project,
    model: str | Path | LoadedPolicy,
    k: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    seed: int = 0,
    round: int | None = None,  # noqa: A002 - the model field's name
    limit: int | None = None,
    device: str = "auto",
    revision: str | None = None,
    training_run=None,
    max_tries: int = 4,
    similarity: float = 0.9,
    progress: bool = False,
) -> SamplingSummary:
    """Give every prompt of the project (of `round`, when given) K responses sampled from `model`.

    model: a local directory, a hub id, or an already loaded `LoadedPolicy`. k: default the project's
    k_min; must lie within k_min..k_max. Responses record origin=model, model_path, model_revision (hub
    commit or sha256 of the local weights), the sampling parameters and the round (the given round, else
    the prompt's). limit: at most this many prompts sampled in this run. training_run: the PPO run the
    policy came from, for the "new round" loop. The model is only loaded when some prompt needs it.
    """
    k = project.k_min if k is None else k
    if not project.k_min <= k <= project.k_max:
        raise SamplingError(f"k={k} is outside the project's range {project.k_min}–{project.k_max}")
    if limit is not None and limit < 1:
        raise SamplingError(f"limit must be at least 1, got {limit}")
    if max_tries < 1:
        raise SamplingError(f"max_tries must be at least 1, got {max_tries}")
    if not 0 < similarity <= 1:
        raise SamplingError(f"similarity must be in (0, 1], got {similarity}")
    try:
        params = SamplingParams(
            temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
    except ValueError as exc:
        raise SamplingError(str(exc)) from exc

    started = time.monotonic()
    summary = SamplingSummary(project=project.name, k=k, round=round)
    prompts = project.prompts.all()
    if round is not None:
        prompts = prompts.filter(round=round)
    prompts = prompts.annotate(
        n_responses=Count("responses"),
        ranked=Exists(Ranking.objects.filter(prompt=OuterRef("pk"))),
        assigned=Exists(Assignment.objects.filter(prompt=OuterRef("pk"))),
    ).order_by("pk")
    todo: list[Prompt] = []
    for prompt in prompts.iterator(chunk_size=2000):
        summary.prompts_considered += 1
        if prompt.n_responses >= k:
            summary.prompts_full += 1
        elif prompt.ranked or prompt.assigned:
            summary.prompts_locked += 1
        elif limit is None or len(todo) < limit:
            todo.append(prompt)
    if not todo:
        summary.seconds = time.monotonic() - started
        return summary

    if isinstance(model, LoadedPolicy):
        policy = model
    else:
        try:
            policy = load_policy(model, device=device, revision=revision)
        except ValueError as exc:
            raise SamplingError(str(exc)) from exc
    summary.model, summary.revision = policy.name, policy.revision
    generate = policy_generator(policy, params)
    recorded_params = {
        **params.as_dict(),
        "seed": seed,
        "k": k,
        "max_tries": max_tries,
        "similarity": similarity,
        "dtype": str(policy.dtype).removeprefix("torch."),
    }
    del recorded_params["batch_size"]  # does not change what is sampled

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="prompt", desc=f"sample {project.name}")
    try:
        for chunk in _chunks(todo, k, batch_size):
            existing = [list(p.responses.values_list("text", flat=True)) for p in chunk]
            result = sample_distinct(
                [p.text for p in chunk],
                k,
                generate=generate,
                existing=existing,
                seed=_chunk_seed(seed, chunk),
                max_tries=max_tries,
                similarity=similarity,
            )
            summary.discarded_duplicates += result.discarded_duplicates
            summary.discarded_empty += result.discarded_empty
            summary.truncated += result.truncated
            for prompt, old, new in zip(chunk, existing, result.responses):
                if len(old) + len(new) < k:
                    summary.prompts_incomplete += 1
                    summary.incomplete_prompt_ids.append(prompt.pk)
                    continue
                written = _write_responses(
                    prompt=prompt,
                    texts=new,
                    expected_existing=len(old),
                    policy=policy,
                    params=recorded_params,
                    round=round if round is not None else prompt.round,
                    training_run=training_run,
                )
                if written:
                    summary.prompts_sampled += 1
                    summary.responses_created += written
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        summary.seconds = time.monotonic() - started
    return summary


def _write_responses(
    *, prompt: Prompt, texts: list[str], expected_existing: int, policy: LoadedPolicy, params: dict,
    round: int, training_run,  # noqa: A002
) -> int:
    """One prompt's new responses in one transaction; skipped when another process got there first."""
    with transaction.atomic():
        locked = Prompt.objects.select_for_update().get(pk=prompt.pk)
        if (
            locked.responses.count() != expected_existing
            or Ranking.objects.filter(prompt=locked).exists()
            or Assignment.objects.filter(prompt=locked).exists()
        ):
            return 0
        Response.objects.bulk_create(
            [
                Response(
                    prompt=locked,
                    text=text,
                    text_hash=text_hash(text),
                    origin=Response.Origin.MODEL,
                    model_path=policy.name[:500],
                    model_revision=policy.revision[:128],
                    sampling_params=params,
                    round=round,
                    training_run=training_run,
                )
                for text in texts
            ]
        )
    return len(texts)


def _chunks(prompts: list[Prompt], k: int, batch_size: int, batches_per_chunk: int = 4):
    """Groups of prompts whose missing responses fill about `batches_per_chunk` generation batches (at least
    one prompt): a prompt's samples stay in one group (its duplicates are checked together), and the last,
    partly filled batch of each group costs a smaller share of the time. Results are written per group."""
    group: list[Prompt] = []
    rows = 0
    for prompt in prompts:
        group.append(prompt)
        rows += k - prompt.n_responses
        if rows >= batch_size * batches_per_chunk:
            yield group
            group, rows = [], 0
    if group:
        yield group


def _chunk_seed(seed: int, chunk: list[Prompt]) -> int:
    """A seed that depends on the run's seed and the prompts (their round and text, not their database ids), not
    on what ran before: a resume repeats it, and the same prompts sample the same in another database."""
    key = ",".join(f"{p.round}/{p.text_hash}" for p in chunk)
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big")
