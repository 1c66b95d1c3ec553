"""The annotator's own rankings: a history page (theirs only) and "Undo" (reopen a ranking while its lease lasts)."""

from __future__ import annotations

import string

from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from annotate.models import Ranking, Response
from annotate.rendering import plain_excerpt
from annotate.services.demonstrations import annotator_demonstrations
from annotate.services.errors import TaskConflict, TaskNotFound
from annotate.services.revisions import reopen_blocker, reopen_ranking

HISTORY_PAGE_SIZE = 25


def _page_number(request: HttpRequest) -> int:
    raw = request.GET.get("page", "1")
    return int(raw) if raw.isdigit() and 0 < len(raw) < 7 else 1


@require_GET
def my_rankings(request: HttpRequest) -> HttpResponse:
    """The rankings this user submitted, newest first, each with its responses in the ranked order."""
    rankings = (
        Ranking.objects.filter(annotator=request.user)
        .select_related("prompt__project", "assignment__prompt")
        .order_by("-created_at", "-pk")
    )
    page = Paginator(rankings, HISTORY_PAGE_SIZE).get_page(_page_number(request))
    ids = {rid for ranking in page for rid in ranking.display_order}
    texts = dict(Response.objects.filter(pk__in=ids).values_list("pk", "text"))
    now = timezone.now()
    rows = []
    for ranking in page:
        labels = {rid: string.ascii_uppercase[i] for i, rid in enumerate(ranking.display_order)}
        tiers = [
            [{"label": labels.get(rid, "?"), "excerpt": plain_excerpt(texts.get(rid, "")),
              "rating": ranking.ratings.get(str(rid)), "flags": ranking.flags.get(str(rid), [])} for rid in tier]
            for tier in ranking.tiers
        ]
        blocker = (
            reopen_blocker(annotator=request.user, assignment=ranking.assignment, now=now)
            if ranking.assignment is not None else "Imported rankings cannot be reopened."
        )
        rows.append({"ranking": ranking, "tiers": tiers, "reopenable": blocker is None, "final_reason": blocker})
    demonstrations = annotator_demonstrations(annotator=request.user)
    return render(request, "annotate/history.html", {"page": page, "rows": rows, "demonstrations": demonstrations})


@require_POST
def reopen(request: HttpRequest, assignment_id: int) -> HttpResponse:
    """Undo a submit: the ranking becomes the draft of the same task again (see annotate.services.revisions)."""
    try:
        reopen_ranking(annotator=request.user, assignment_id=assignment_id)
    except TaskNotFound as exc:
        raise Http404(str(exc)) from exc
    except TaskConflict as exc:
        messages.error(request, exc.message)
        return redirect("annotate:history")
    messages.success(request, "Your ranking is open again as a draft: change it and submit it again.")
    return redirect("annotate:rank", assignment_id=assignment_id)


@login_not_required
def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico for the pages that do not name their icon (JSON pages, the browsable API): the static SVG."""
    return redirect(static("favicon/favicon.svg"), permanent=True)
