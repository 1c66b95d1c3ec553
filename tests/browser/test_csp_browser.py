"""In real Chromium: the ranking page, the dashboard, a running run's page and the annotation stats page load
under the Content-Security-Policy with ZERO violations (neither `securitypolicyviolation` events nor
"Refused to …" console messages), while they still work: the ranker's script runs and autosaves, the run page
polls with htmx (its cursors added by dashboard.js instead of hx-vals="js:…") and swaps, charts draw."""

from __future__ import annotations

import pytest

from annotate.models import Project, Prompt, Response
from annotate.services.queue import lease_next_task
from tests.training.conftest import make_ranking
from training.models import Metric, TrainingRun

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WATCH_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`);
});
window.__swaps = 0;
document.addEventListener("htmx:afterSwap", () => { window.__swaps += 1; });
"""


@pytest.fixture
def world(django_user_model, settings):
    from django.utils import timezone

    staff = django_user_model.objects.create_user("csp-boss", password="csp-browser-pw-1", is_staff=True)
    other = django_user_model.objects.create_user("csp-other", password="x")
    project = Project.objects.create(name="CSP browser", k_min=4, k_max=4)
    project.annotators.add(staff, other)
    prompts = []
    for i in range(3):
        prompt = Prompt.objects.create(project=project, text=f"Prompt {i}: review the café.")
        ids = [Response.objects.create(prompt=prompt, text=f"Answer {j} to {i}.").pk for j in range(4)]
        prompts.append((prompt, ids))
    for prompt, ids in prompts[1:]:  # rankings by the other annotator, for the stats charts
        make_ranking(prompt=prompt, annotator=other, tiers=[[ids[0]], [ids[1], ids[2]], [ids[3]]])
    assignment = lease_next_task(annotator=staff, project=project)
    run = TrainingRun.objects.create(kind="rm", status="running", project=project, name="csp run",
                                     started_at=timezone.now(), heartbeat_at=timezone.now())
    Metric.objects.bulk_create([Metric(run=run, step=s, name="loss", value=1.0 / s) for s in range(1, 6)])
    settings.WORKBENCH_STALE_AFTER_SECONDS = 3600
    return {"project": project, "assignment": assignment, "run": run}


def test_pages_work_with_zero_csp_violations(page, live_server, world):
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    # (Predicates are functions, not strings: Playwright would eval a string, which this very CSP forbids.)
    polls: list[str] = []
    page.on("request", lambda request: polls.append(request.url) if "/live/" in request.url else None)
    page.add_init_script(WATCH_VIOLATIONS)
    page.set_default_timeout(20_000)

    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", "csp-boss")
    page.fill("#id_password", "csp-browser-pw-1")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")

    # 1. The ranking page: the ranker's scripts run (rank.js, SortableJS), typing autosaves a draft (fetch).
    page.goto(f"{live_server.url}/rank/{world['assignment'].pk}/")
    page.wait_for_function("() => Boolean(window.rankTask && window.Sortable)")
    page.fill("[data-rationale]", "A is clearest.")
    page.wait_for_function("() => document.querySelector('[data-draft-status]').textContent.includes('Draft saved')",
                           timeout=30_000)
    violations = page.evaluate("() => window.__csp")

    # 2. The dashboard (run list).
    page.goto(f"{live_server.url}/dashboard/")
    page.wait_for_selector("text=csp run")
    violations += page.evaluate("() => window.__csp")

    # 3. A running run: the curves draw, and the live region polls with its cursor and swaps.
    page.goto(f"{live_server.url}/dashboard/runs/{world['run'].pk}/")
    page.wait_for_selector("#run-charts canvas")
    page.wait_for_function("() => window.__swaps > 0", timeout=30_000)
    assert any("after_id=" in url and "samples_step=" in url for url in polls), polls
    violations += page.evaluate("() => window.__csp")

    # 4. Annotation statistics: the charts draw.
    page.goto(f"{live_server.url}/dashboard/projects/{world['project'].pk}/")
    page.wait_for_selector("canvas")
    page.wait_for_function("() => Object.keys(window.workbench.charts).length > 0")
    violations += page.evaluate("() => window.__csp")

    refused = [text for text in console if "Content Security Policy" in text or text.startswith("Refused to")]
    assert violations == [] and refused == [], (violations, refused)


def test_a_503_on_submit_keeps_the_task_and_says_so(page, live_server, world):
    """The database is down (the server's 503 is stood in for by Playwright): the ranking page swaps nothing,
    shows the message next to the button, and the next submit (database back) goes through."""
    import json

    from annotate.models import Ranking

    page.add_init_script(WATCH_VIOLATIONS)
    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", "csp-boss")
    page.fill("#id_password", "csp-browser-pw-1")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    assignment = world["assignment"]
    page.goto(f"{live_server.url}/rank/{assignment.pk}/")
    page.wait_for_function("() => Boolean(window.rankTask && window.Sortable)")
    for _ in range(10):  # rank every response (where the page starts them unranked), one "place" at a time
        place = page.locator("[data-move=place]:visible")
        if not place.count():
            break
        place.first.click()
    body = {"detail": "The database is unavailable right now; nothing was saved by this request.",
            "code": "database_unavailable", "retry_after": 5}
    page.route("**/submit/", lambda route: route.fulfill(status=503, headers={"Retry-After": "5"},
                                                        content_type="application/json", body=json.dumps(body)))
    page.click("button.primary[type=submit]")
    status = page.locator(f"#submit-status-{assignment.pk} [role=alert]")
    status.wait_for()
    assert "database is unavailable" in status.inner_text()
    assert page.locator(f"[data-rank-task][data-assignment='{assignment.pk}']").count() == 1  # task kept
    assert not Ranking.objects.filter(assignment=assignment).exists()
    page.unroute("**/submit/")
    page.click("button.primary[type=submit]")
    page.wait_for_function(
        "id => !document.querySelector(`[data-rank-task][data-assignment='${id}']`)", arg=assignment.pk
    )
    assert Ranking.objects.filter(assignment=assignment).count() == 1
    assert page.evaluate("() => window.__csp") == []
