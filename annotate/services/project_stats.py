"""Annotation statistics of a project for the dashboard: progress per round, throughput per annotator,
quality (agreement, tau-b, consensus, position and length bias from `annotate.services.stats`), flagged
responses, and the blind A/B of policies within a round. Read-only. (The dashboard adds the training side:
reward-model checks and round jobs, from training.selectors.)
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Count, Max
from django.utils import timezone

from annotate.agreement import ordered_pairs
from annotate.models import RESPONSE_FLAGS, Assignment, Project, Prompt, Ranking, Response
from annotate.services.demonstrations import demonstration_stats
from annotate.services.stats import project_quality

THROUGHPUT_DAYS = 14


def project_overview() -> list[dict[str, Any]]:
    """One row per project: prompts, rankings, annotators, last activity."""
    projects = Project.objects.annotate(
        n_prompts=Count("prompts", distinct=True),
        n_annotators=Count("annotators", distinct=True),
        last_round=Max("prompts__round"),
    ).order_by("name")
    rankings = dict(
        Ranking.objects.values("prompt__project").annotate(n=Count("pk")).values_list("prompt__project", "n")
    )
    last = dict(
        Ranking.objects.values("prompt__project").annotate(t=Max("created_at")).values_list("prompt__project", "t")
    )
    return [
        {"project": p, "prompts": p.n_prompts, "annotators": p.n_annotators, "rounds": p.last_round or 0,
         "rankings": rankings.get(p.pk, 0), "last_ranking": last.get(p.pk)}
        for p in projects
    ]


def progress_by_round(*, project: Project) -> list[dict[str, Any]]:
    """Per round: prompts ready to rank (≥ k_min responses), rankings needed and done (capped per prompt)."""
    per_prompt = project.annotators_per_prompt
    rows = (
        Prompt.objects.filter(project=project)
        .annotate(n_responses=Count("responses", distinct=True), n_rankings=Count("rankings", distinct=True))
        .values_list("round", "n_responses", "n_rankings")
    )
    rounds: dict[int, dict[str, int]] = defaultdict(lambda: {"prompts": 0, "ready": 0, "needed": 0, "done": 0,
                                                             "rankings": 0, "complete": 0})
    for round_number, n_responses, n_rankings in rows:
        row = rounds[round_number]
        row["prompts"] += 1
        row["rankings"] += n_rankings
        if n_responses >= project.k_min:
            row["ready"] += 1
            row["needed"] += per_prompt
            row["done"] += min(n_rankings, per_prompt)
            row["complete"] += n_rankings >= per_prompt
    result = []
    for round_number in sorted(rounds):
        row = rounds[round_number]
        row["round"] = round_number
        row["percent"] = round(100 * row["done"] / row["needed"]) if row["needed"] else 0
        result.append(row)
    return result


def throughput(*, project: Project, now=None) -> dict[str, Any]:
    """Per annotator: rankings (total, 24 h, 7 days), median seconds per ranking, skips, last activity;
    plus rankings per day for the last THROUGHPUT_DAYS days."""
    now = now or timezone.now()
    rankings = Ranking.objects.filter(prompt__project=project)
    user_model = get_user_model()
    per: dict[Any, dict[str, Any]] = {}
    seconds: dict[Any, list[float]] = defaultdict(list)
    start_day = timezone.localtime(now).date() - timedelta(days=THROUGHPUT_DAYS - 1)
    days = [start_day + timedelta(days=i) for i in range(THROUGHPUT_DAYS)]
    daily: dict[Any, Counter] = defaultdict(Counter)
    for annotator_id, source, created_at, spent in rankings.values_list(
        "annotator_id", "source", "created_at", "seconds_spent"
    ):
        key = annotator_id if annotator_id is not None else f"({source})"
        row = per.setdefault(key, {"total": 0, "day": 0, "week": 0, "last": None})
        row["total"] += 1
        row["day"] += created_at >= now - timedelta(days=1)
        row["week"] += created_at >= now - timedelta(days=7)
        row["last"] = max(row["last"], created_at) if row["last"] else created_at
        if spent:
            seconds[key].append(spent)
        local_day = timezone.localtime(created_at).date()
        if local_day >= start_day:
            daily[key][local_day] += 1
    skips = dict(
        Assignment.objects.filter(prompt__project=project, state=Assignment.State.SKIPPED)
        .values("annotator_id").annotate(n=Count("pk")).values_list("annotator_id", "n")
    )
    names = dict(user_model.objects.filter(pk__in=[k for k in per if isinstance(k, int)]).values_list("pk", "username"))
    rows = []
    for key, row in per.items():
        spent = seconds.get(key, [])
        rows.append({
            "annotator": names.get(key, str(key)),
            **row,
            "median_seconds": statistics.median(spent) if spent else None,
            "per_hour": 3600 * len(spent) / sum(spent) if spent and sum(spent) > 0 else None,
            "skips": skips.get(key, 0) if isinstance(key, int) else 0,
            "daily": [daily[key][day] for day in days],
        })
    rows.sort(key=lambda r: (-r["total"], r["annotator"]))
    return {"rows": rows, "days": [day.isoformat() for day in days]}


def flagged_responses(*, project: Project, limit: int = 50) -> dict[str, Any]:
    """Responses flagged by at least one annotator (most flags first), and "all bad" rankings."""
    counts: dict[int, Counter] = defaultdict(Counter)
    annotators: dict[int, set] = defaultdict(set)
    all_bad = 0
    for ranking_id, annotator_id, flags, bad in Ranking.objects.filter(prompt__project=project).values_list(
        "pk", "annotator_id", "flags", "all_bad"
    ):
        all_bad += bool(bad)
        for response_id, keys in (flags or {}).items():
            if keys:
                rid = int(response_id)
                counts[rid].update(keys)
                annotators[rid].add(annotator_id or f"ranking-{ranking_id}")
    by_flag: Counter = Counter()
    for c in counts.values():
        by_flag.update(c)
    top = sorted(counts, key=lambda rid: (-sum(counts[rid].values()), rid))[:limit]
    responses = Response.objects.in_bulk(top)
    rows = [
        {"response": responses[rid], "flags": [(RESPONSE_FLAGS.get(k, k), n) for k, n in counts[rid].most_common()],
         "annotators": len(annotators[rid])}
        for rid in top if rid in responses
    ]
    return {"rows": rows, "total": len(counts), "all_bad": all_bad,
            "by_flag": [(RESPONSE_FLAGS.get(k, k), n) for k, n in by_flag.most_common()]}


def policy_ab(*, project: Project) -> list[dict[str, Any]]:
    """Within each round, how often responses of one model beat another's in the same ranking (blind A/B
    when a new round mixes a new and a baseline policy). One row per (round, model A, model B)."""
    rankings = Ranking.objects.filter(prompt__project=project).values_list("prompt__round", "tiers")
    rows = list(rankings)
    ids = {rid for _, tiers in rows for tier in tiers for rid in tier}
    origin = {
        pk: (path or "imported")
        for pk, path in Response.objects.filter(pk__in=ids).values_list("pk", "model_path")
    }
    wins: dict[tuple[int, str, str], int] = Counter()
    for round_number, tiers in rows:
        for winner, loser, _ in ordered_pairs(tiers):
            a, b = origin.get(winner), origin.get(loser)
            if a and b and a != b:
                wins[(round_number, a, b)] += 1
    result = []
    for round_number, a, b in sorted({(r, *sorted((a, b))) for r, a, b in wins}):
        a_wins, b_wins = wins[(round_number, a, b)], wins[(round_number, b, a)]
        total = a_wins + b_wins
        result.append({"round": round_number, "a": a, "b": b, "pairs": total,
                       "a_win_rate": a_wins / total if total else None})
    return result


def quality(*, project: Project) -> dict[str, Any]:
    return project_quality(project=project)


def _charts(*, throughput_data: dict, quality_data: dict) -> dict[str, Any]:
    position = (quality_data.get("position_bias") or {}).get("by_position") or []
    annotators = [a for a in quality_data.get("annotators") or [] if a.get("consensus")]
    length = quality_data.get("length_bias") or {}
    return {
        "throughput": {
            "days": throughput_data["days"],
            "annotators": [{"label": r["annotator"], "daily": r["daily"]} for r in throughput_data["rows"]],
        },
        "position": [{"position": p["position"], "mean_score": p["mean_score"], "rankings": p["rankings"]}
                     for p in position],
        "consensus": {  # each bar labelled with its sample size (strictly ordered pairs)
            "labels": [f"{a['label']} (n = {a['consensus'].get('agree', 0) + a['consensus'].get('disagree', 0)})"
                       for a in annotators],
            "agreement": [a["consensus"].get("agreement") for a in annotators],
            "tau_b": [a["consensus"].get("tau_b") for a in annotators],
        },
        "length": {"longer_preferred": length.get("longer_preferred"), "pairs": length.get("pairs", 0)},
    }


def project_statistics(*, project: Project) -> dict[str, Any]:
    """Everything the statistics page shows about the annotation, plus chart data under "charts"."""
    throughput_data = throughput(project=project)
    quality_data = quality(project=project)
    return {
        "project": project,
        "progress": progress_by_round(project=project),
        "throughput": throughput_data,
        "quality": quality_data,
        "flagged": flagged_responses(project=project),
        "policy_ab": policy_ab(project=project),
        "demonstrations": demonstration_stats(project=project),
        "charts": _charts(throughput_data=throughput_data, quality_data=quality_data),
    }
