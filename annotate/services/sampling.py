"""Sample K responses per prompt from a model and record where each came from.

`sample_project_responses` is behind the `sample_responses` command and the dashboard's "new round" (called
with a PPO run's policy directory). Generation itself is `training.rlhf.sampling` (pure torch/transformers).
Every prompt is given to the model under the project's prompt format (`Project.prompt_format`,
`system_prompt`: the text as-is, or the model's chat template), as every later stage reads it.

Resumable: only prompts short of K responses are sampled, and each prompt's new responses are written in
one transaction, so an interrupted run loses at most the prompts in flight and a second run continues.
Prompts that already have a ranking or an assignment are left alone (adding responses under an annotator's
feet would change what they rank).

`sample_mixed_responses` fills each prompt from several policies at once (a blind A/B round: the new policy's
responses mixed with a baseline's). All of a prompt's responses are generated first and then written in ONE
bulk insert in a random order, so their database ids are contiguous and the rank of a policy's response among
the prompt's ids is uniform: nothing an annotator sees (ids, display order, labels) tells the policies apart.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import Count, Exists, OuterRef

from annotate.models import Assignment, Project, Prompt, Ranking, Response, text_hash
from training.rlhf.chat_format import PromptFormatError, format_of_project
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
    prompts_partial: int = 0  # mixed sampling only: some but not K responses already, left alone (the mix would be off)
    responses_created: int = 0
    discarded_duplicates: int = 0
    discarded_empty: int = 0
    truncated: int = 0  # accepted responses that hit max_new_tokens without EOS
    seconds: float = 0.0
    incomplete_prompt_ids: list[int] = field(default_factory=list)
    shares: list[dict[str, Any]] = field(default_factory=list)  # per policy: model, revision, k, responses_created

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
        if self.prompts_partial:
            text += f"; {self.prompts_partial} had some responses already (a mixed round needs empty prompts: left alone)"
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


@dataclass(frozen=True)
class PolicyShare:
    """One policy's part of every prompt's responses in a mixed round: `k` of them sampled from `model`.

    model: a local directory, a hub id, or an already loaded `LoadedPolicy`; training_run: the run it came from
    (recorded on its responses); revision: the hub revision to load."""

    model: str | Path | LoadedPolicy
    k: int
    training_run: Any = None
    revision: str | None = None


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
    k_min; must lie within k_min..k_max. Prompts short of K (imported responses, say) are topped up to K.
    Responses record origin=model, model_path, model_revision (hub commit or sha256 of the local weights), the
    sampling parameters and the round (the given round, else the prompt's). limit: at most this many prompts
    sampled in this run. training_run: the PPO run the policy came from, for the "new round" loop. The model is
    only loaded when some prompt needs it.
    """
    k = project.k_min if k is None else k
    return _sample(
        project=project, shares=[PolicyShare(model=model, k=k, training_run=training_run, revision=revision)],
        temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens, batch_size=batch_size,
        seed=seed, round=round, limit=limit, device=device, max_tries=max_tries, similarity=similarity,
        progress=progress,
    )


def sample_mixed_responses(
    *,
    project: Project,
    shares: Sequence[PolicyShare],
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    seed: int = 0,
    round: int | None = None,  # noqa: A002 - the model field's name
    limit: int | None = None,
    device: str = "auto",
    max_tries: int = 4,
    similarity: float = 0.9,
    progress: bool = False,
) -> SamplingSummary:
    """Give every prompt without responses (of `round`, when given) K = Σ share.k responses, share.k of them
    from each share's policy, all distinct, written per prompt in one bulk insert in a random order (see the
    module docstring). K must lie within the project's k_min..k_max; every share needs k ≥ 1. A prompt that
    cannot get all of them within max_tries gets none (a re-run retries it); one that already has some
    responses is left alone. Other parameters as in `sample_project_responses`."""
    if len(shares) < 2:
        raise SamplingError("a mixed round needs at least two policies (use sample_project_responses for one)")
    return _sample(
        project=project, shares=list(shares), temperature=temperature, top_p=top_p, top_k=top_k,
        max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, round=round, limit=limit, device=device,
        max_tries=max_tries, similarity=similarity, progress=progress,
    )


def _sample(
    *, project: Project, shares: list[PolicyShare], temperature: float, top_p: float, top_k: int,
    max_new_tokens: int, batch_size: int, seed: int, round: int | None, limit: int | None,  # noqa: A002
    device: str, max_tries: int, similarity: float, progress: bool,
) -> SamplingSummary:
    k = sum(share.k for share in shares)
    mixed = len(shares) > 1
    if mixed and any(share.k < 1 for share in shares):
        raise SamplingError(f"every policy of a mixed round needs at least 1 response, got {[s.k for s in shares]}")
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

    prompt_format = format_of_project(kind=project.prompt_format, system_prompt=project.system_prompt)
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
        elif mixed and prompt.n_responses:
            summary.prompts_partial += 1
        elif limit is None or len(todo) < limit:
            todo.append(prompt)
    summary.shares = [{"model": "", "revision": "", "k": share.k, "responses_created": 0} for share in shares]
    if not todo:
        summary.seconds = time.monotonic() - started
        return summary

    sources = []
    for share, record in zip(shares, summary.shares):
        if isinstance(share.model, LoadedPolicy):
            policy = share.model
        else:
            try:
                policy = load_policy(share.model, device=device, revision=share.revision)
            except ValueError as exc:
                raise SamplingError(str(exc)) from exc
        record["model"], record["revision"] = policy.name, policy.revision
        recorded_params = {
            **params.as_dict(),
            "seed": seed,
            "k": share.k if mixed else k,
            "max_tries": max_tries,
            "similarity": similarity,
            "dtype": str(policy.dtype).removeprefix("torch."),
        }
        if mixed:
            recorded_params["mixed_k"] = k
        if prompt_format.is_chat:  # plain responses keep the parameters they always recorded
            recorded_params["prompt_format"] = prompt_format.as_dict()
        del recorded_params["batch_size"]  # does not change what is sampled
        try:
            generate = policy_generator(policy, params, prompt_format=prompt_format)
        except PromptFormatError as exc:
            raise SamplingError(f"Project '{project.name}': {exc}") from exc
        sources.append(_Source(share=share, policy=policy, generate=generate, params=recorded_params))
    summary.model = "+".join(s.policy.name for s in sources)
    summary.revision = "+".join(s.policy.revision for s in sources)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="prompt", desc=f"sample {project.name}")
    try:
        for chunk in _chunks(todo, k, batch_size):
            existing = [list(p.responses.values_list("text", flat=True)) for p in chunk]
            # Per prompt: the texts so far (existing + accepted) and the new ones with their source.
            known = [list(old) for old in existing]
            new: list[list[tuple[str, _Source]]] = [[] for _ in chunk]
            alive = list(range(len(chunk)))  # prompts that got every share's responses so far
            for index, source in enumerate(sources):
                if not alive:
                    break
                result = sample_distinct(
                    [chunk[i].text for i in alive],
                    [len(known[i]) + source.share.k if mixed else k for i in alive],
                    generate=source.generate,
                    existing=[known[i] for i in alive],
                    seed=_chunk_seed(seed, chunk, share=index),
                    max_tries=max_tries,
                    similarity=similarity,
                )
                summary.discarded_duplicates += result.discarded_duplicates
                summary.discarded_empty += result.discarded_empty
                summary.truncated += result.truncated
                still = []
                for i, texts in zip(alive, result.responses):
                    if len(known[i]) + len(texts) < (sum(s.k for s in shares[: index + 1]) if mixed else k):
                        continue
                    known[i].extend(texts)
                    new[i].extend((text, source) for text in texts)
                    still.append(i)
                alive = still
            for i, prompt in enumerate(chunk):
                if i not in alive:
                    summary.prompts_incomplete += 1
                    summary.incomplete_prompt_ids.append(prompt.pk)
                    continue
                written = _write_responses(
                    prompt=prompt,
                    items=new[i],
                    expected_existing=len(existing[i]),
                    round=round if round is not None else prompt.round,
                    shuffle=mixed,
                )
                if written:
                    summary.prompts_sampled += 1
                    summary.responses_created += len(new[i])
                    for source, record in zip(sources, summary.shares):
                        record["responses_created"] += sum(1 for _, s in new[i] if s is source)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        summary.seconds = time.monotonic() - started
    return summary


@dataclass
class _Source:
    share: PolicyShare
    policy: LoadedPolicy
    generate: Any
    params: dict[str, Any]


def response_order_rng() -> random.Random:
    """The generator that orders a mixed prompt's responses before insert: the OS's randomness, so nobody can
    recompute the order from the code and a seed (tests substitute a seeded one)."""
    return random.SystemRandom()


def _write_responses(
    *, prompt: Prompt, items: list[tuple[str, _Source]], expected_existing: int, round: int,  # noqa: A002
    shuffle: bool,
) -> int:
    """One prompt's new responses in one transaction and one bulk insert (contiguous ids), in a random order
    when they come from several policies; skipped when another process got there first."""
    if shuffle:
        items = list(items)
        response_order_rng().shuffle(items)
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
                    model_path=source.policy.name[:500],
                    model_revision=source.policy.revision[:128],
                    sampling_params=source.params,
                    round=round,
                    training_run=source.share.training_run,
                )
                for text, source in items
            ]
        )
    return len(items)


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


def _chunk_seed(seed: int, chunk: list[Prompt], share: int = 0) -> int:
    """A seed that depends on the run's seed and the prompts (their round and text, not their database ids), not
    on what ran before: a resume repeats it, and the same prompts sample the same in another database. The
    first policy of a mixed round samples as it would alone; the others get seeds of their own."""
    key = ",".join(f"{p.round}/{p.text_hash}" for p in chunk)
    salt = f"{seed}" if share == 0 else f"{seed}/share{share}"
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big")
