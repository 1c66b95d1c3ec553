"""Selectors for agreement and quality statistics: gather rankings from the database, call annotate.agreement.

`project_quality(project=…)` is what the staff API returns and what the dashboard will show.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from annotate import agreement
from annotate.models import Project, Ranking, Response
from annotate.services.exporting import annotator_key, annotator_pseudonym


def _label(ranking: Ranking) -> str:
    if ranking.annotator_id is not None:
        return ranking.annotator.get_username() if ranking.annotator else f"user {ranking.annotator_id}"
    if ranking.source == Ranking.Source.IMPORTED:
        return f"imported: {ranking.source_detail}" if ranking.source_detail else "imported"
    return f"ranking {ranking.pk}"


def project_rankings(*, project: Project, rounds: list[int] | None = None):
    """The project's rankings (with prompt and annotator), oldest first, optionally of some rounds only."""
    rankings = Ranking.objects.filter(prompt__project=project).select_related("annotator", "prompt")
    if rounds:
        rankings = rankings.filter(prompt__round__in=rounds)
    return rankings.order_by("prompt_id", "pk")


def rankings_by_prompt(*, project: Project, rounds: list[int] | None = None) -> dict[int, dict[str, list]]:
    """prompt id → {annotator key → tiers of response ids}; an annotator's latest ranking of a prompt wins."""
    by_prompt: dict[int, dict[str, list]] = defaultdict(dict)
    for ranking in project_rankings(project=project, rounds=rounds):
        by_prompt[ranking.prompt_id][annotator_key(ranking)] = ranking.tiers
    return dict(by_prompt)


def consensus_rankings(*, project: Project, rounds: list[int] | None = None) -> dict[int, list[list[int]]]:
    """prompt id → Borda consensus tiers of response ids (see agreement.consensus_ranking)."""
    return {
        prompt_id: agreement.consensus_ranking(list(rankings.values()))
        for prompt_id, rankings in rankings_by_prompt(project=project, rounds=rounds).items()
    }


def project_quality(
    *, project: Project, rounds: list[int] | None = None, include_consensus: bool = False
) -> dict[str, Any]:
    """Agreement and bias statistics of a project's rankings, as JSON-ready data.

    - annotators: each annotator (username, or the imported file) with pseudonym, rankings, and agreement
      with the leave-one-out Borda consensus of the other annotators of the same prompts.
    - pairs: for every two annotators who ranked common prompts, pair counts, agreement (strictly
      ordered pairs ordered the same way) and mean Kendall tau-b.
    - overall: agreement pooled over all annotator pairs and the mean tau-b.
    - position_bias / length_bias: see agreement.position_bias / agreement.length_bias (length in
      characters). include_consensus adds prompt id → consensus tiers of response ids.
    """
    rankings, invalid = [], 0
    for ranking in project_rankings(project=project, rounds=rounds):
        try:
            agreement.tier_positions(ranking.tiers)
        except (TypeError, ValueError):
            invalid += 1  # a malformed stored ranking must not take the statistics down
            continue
        rankings.append(ranking)
    by_prompt: dict[int, dict[str, list]] = defaultdict(dict)
    labels: dict[str, str] = {}
    ranking_counts: dict[str, int] = defaultdict(int)
    for ranking in rankings:
        key = annotator_key(ranking)
        by_prompt[ranking.prompt_id][key] = ranking.tiers
        labels[key] = _label(ranking)
        ranking_counts[key] += 1

    lengths = _response_lengths(list(by_prompt))
    pairs = agreement.annotator_pair_stats(by_prompt)
    with_consensus = agreement.consensus_agreement(by_prompt, leave_one_out=True)
    pooled = sum((p.counts for p in pairs), agreement.PairCounts())
    taus = [p.tau_b for p in pairs if p.tau_b is not None]

    def who(key: str) -> dict:
        return {"key": key, "label": labels[key], "pseudonym": annotator_pseudonym(key)}

    position = agreement.position_bias(
        (r.tiers, r.display_order) for r in rankings if r.display_order
    )
    length = agreement.length_bias(
        (r.tiers, {rid: lengths[rid] for tier in r.tiers for rid in tier})
        for r in rankings
        if all(rid in lengths for tier in r.tiers for rid in tier)
    )
    result: dict[str, Any] = {
        "project": {"id": project.pk, "name": project.name},
        "rounds": rounds,
        "rankings": len(rankings),
        "invalid_rankings_skipped": invalid,
        "prompts_ranked": len(by_prompt),
        "prompts_with_several_rankings": sum(1 for r in by_prompt.values() if len(r) >= 2),
        "overall": {
            **pooled.as_dict(),
            "tau_b": sum(taus) / len(taus) if taus else None,
            "tau_b_n": len(taus),  # the mean is over annotator pairs
            "tau_b_sd": agreement.sample_sd(taus),
            "annotator_pairs": len(pairs),
        },
        "annotators": [
            {
                **who(key),
                "rankings": ranking_counts[key],
                "consensus": with_consensus.get(key),
            }
            for key in sorted(labels, key=lambda k: labels[k])
        ],
        "pairs": [
            {"a": who(p.a), "b": who(p.b), "prompts": p.prompts, **p.counts.as_dict(), "tau_b": p.tau_b,
             "tau_b_n": p.tau_b_n, "tau_b_sd": p.tau_b_sd}
            for p in pairs
        ],
        "consensus_method": "Borda count with ties (averaged ranks), leave-one-out for annotator agreement",
        "position_bias": position,
        "length_bias": {**length, "unit": "characters"},
    }
    if include_consensus:
        result["consensus"] = {
            str(prompt_id): agreement.consensus_ranking(list(r.values())) for prompt_id, r in by_prompt.items()
        }
    return result


def _response_lengths(prompt_ids: list[int]) -> dict[int, int]:
    lengths: dict[int, int] = {}
    for start in range(0, len(prompt_ids), 500):
        for pk, text in Response.objects.filter(prompt_id__in=prompt_ids[start:start + 500]).values_list(
            "pk", "text"
        ):
            lengths[pk] = len(text)
    return lengths
