"""Read-only queries for pages and the API: which projects a user sees, and progress figures."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time

from django.core.cache import cache
from django.db.models import Count, Q, QuerySet, Sum, Value
from django.db.models.functions import Least
from django.utils import timezone

from annotate.models import Project, Prompt, Ranking
from annotate.services.queue import candidate_prompts, member_project_ids

AVAILABLE_COUNT_LIMIT = 1000
# The project's totals are one pass over its prompt rows: 17 ms at 3,000 prompts on SQLite, so about half a second
# at 100k, on every ranking page. Past this size they are kept for a few seconds per process (the header's
# progress may lag a submit by that much); below it they are exact.
TOTALS_EXACT_BELOW = 5000
TOTALS_TTL_S = 10


def projects_for_user(*, user) -> QuerySet[Project]:
    """Staff see every project; annotators the projects they belong to."""
    if user.is_staff:
        return Project.objects.all()
    return Project.objects.filter(annotators=user)


def is_member(*, user, project: Project) -> bool:
    return bool(member_project_ids(annotator=user, project=project))


def start_of_today(now: datetime | None = None) -> datetime:
    now = now or timezone.now()
    local = timezone.localtime(now)
    return timezone.make_aware(datetime.combine(local.date(), time.min), timezone.get_current_timezone())


@dataclass(frozen=True)
class ProjectProgress:
    project: Project
    prompts: int  # prompts with enough responses to be ranked
    rankings_needed: int  # prompts × annotators per prompt
    rankings_done: int  # rankings counted towards that (extra rankings of a prompt are not counted)
    mine: int  # rankings by this user in the project
    mine_today: int
    available_to_me: int  # prompts this user could be given right now (at most AVAILABLE_COUNT_LIMIT)
    is_member: bool

    @property
    def left(self) -> int:
        return max(0, self.rankings_needed - self.rankings_done)

    @property
    def percent(self) -> int:
        return round(100 * self.rankings_done / self.rankings_needed) if self.rankings_needed else 0


def project_totals(*, project: Project) -> dict[str, int]:
    """{"prompts": ready prompts, "done": rankings counted towards them (each prompt up to annotators_per_prompt)},
    from the queue's stored counts (annotate.models.Prompt): no subqueries. Cached for TOTALS_TTL_S seconds
    once the project has TOTALS_EXACT_BELOW ready prompts."""
    per_prompt = project.annotators_per_prompt
    key = f"annotate:project-totals:{project.pk}:{project.k_min}:{per_prompt}"
    cached = cache.get(key)
    if cached is not None and cached["prompts"] >= TOTALS_EXACT_BELOW:
        return cached
    found = Prompt.objects.filter(project=project, num_responses__gte=project.k_min).aggregate(
        prompts=Count("pk"), done=Sum(Least("num_rankings", Value(per_prompt)))
    )
    totals = {"prompts": found["prompts"] or 0, "done": found["done"] or 0}
    if totals["prompts"] >= TOTALS_EXACT_BELOW:
        cache.set(key, totals, TOTALS_TTL_S)
    return totals


def project_progress(*, project: Project, user, now: datetime | None = None) -> ProjectProgress:
    now = now or timezone.now()
    per_prompt = project.annotators_per_prompt
    totals = project_totals(project=project)
    member = is_member(user=user, project=project)
    available = 0
    if member:  # counted up to a limit: the exact figure past it would cost a scan of the project on every page
        candidates = candidate_prompts(annotator=user, project_ids=[project.pk], now=now)
        # unordered: with the queue order the database sorts every open prompt before it stops at the limit
        available = candidates.order_by().values("pk")[:AVAILABLE_COUNT_LIMIT].count()
    mine = Ranking.objects.filter(prompt__project=project, annotator=user).aggregate(
        all=Count("pk"), today=Count("pk", filter=Q(created_at__gte=start_of_today(now))))
    return ProjectProgress(
        project=project,
        prompts=totals["prompts"] or 0,
        rankings_needed=(totals["prompts"] or 0) * per_prompt,
        rankings_done=totals["done"] or 0,
        mine=mine["all"],
        mine_today=mine["today"],
        available_to_me=available,
        is_member=member,
    )
