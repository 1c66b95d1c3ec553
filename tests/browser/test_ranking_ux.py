"""The annotator's side of issue 16, driven through the page in real Chromium (1280×800 and 390 px):

- after a submit a banner says so, with "Undo" while the lease lasts (the ranking becomes a draft again, through
  annotate.services.revisions) and a link to "My rankings", which lists one's own rankings only;
- Back after a submit reloads the task, which says it was submitted (no dead form);
- responses start "not ranked yet"; submit needs every one placed; placed/unplaced survive a reload;
- compact cards: six short answers fit a 1280×800 screen, the first response starts in the first screen on a
  phone, the keys panel is closed and "?" opens it;
- model output is sanitised Markdown (tables, highlighted code, a per-response "Show raw"); K = 9 answers of
  400+ words do not overflow a 390 px screen; a project can turn Markdown off;
- minors: a styled 403 page, no favicon 404, the skip error names "Details" and is in view, staff can join.
"""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.auth import get_user_model
from django.test import Client
from playwright.sync_api import expect

from annotate.models import Assignment, Draft, Project, Prompt, Ranking, Response
from annotate.services.queue import lease_next_task
from annotate.services.submission import submit_ranking
from training.rlhf.demo_task import demo_prompts, sample_demo_responses

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _settle_autosave(page):
    yield
    try:
        page.wait_for_function("() => !window.rankTask || (!window.rankTask.saving && !window.rankTask.dirty)",
                               timeout=5000)
    except Exception:  # the page may be gone: closing it is all that is left
        pass
    page.close()


def make_project(name: str, prompts: list[tuple[str, list[str]]], **fields) -> Project:
    project = Project.objects.create(name=name, annotators_per_prompt=1, guidelines="Prefer *specific* answers.",
                                     **fields)
    for text, responses in prompts:
        prompt = Prompt.objects.create(project=project, text=text)
        for body in responses:
            Response.objects.create(prompt=prompt, text=body)
    return project


def demo_like(n_prompts: int = 3, k: int = 6) -> list[tuple[str, list[str]]]:
    """Prompts and one-line reviews from the demo task (what the demo's annotators rank)."""
    return [(p, [r.strip() for r in sample_demo_responses(p, k=k, seed=i)])
            for i, p in enumerate(demo_prompts(n=n_prompts, seed=4))]


def annotator_of(project: Project, username: str = "ann"):
    user, _ = get_user_model().objects.get_or_create(username=username)
    project.annotators.add(user)
    return user


def login(page, live_server, user):
    client = Client()
    client.force_login(user)
    page.context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
          "url": live_server.url}]
    )


def open_task(page, live_server, user) -> Assignment:
    login(page, live_server, user)
    page.goto(live_server.url + "/")
    page.get_by_role("button", name="Start ranking").click()
    page.wait_for_url(re.compile(r"/rank/\d+/$"))
    page.wait_for_function("() => Boolean(window.rankTask && window.Sortable)")
    return Assignment.objects.filter(annotator=user, state=Assignment.State.LEASED).order_by("-leased_at").first()


def card(page, response_id):
    return page.locator(f'.resp-card[data-response-id="{response_id}"]')


def dom_tiers(page) -> list[list[int]]:
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('[data-tier-list] > li.tier')).map(
             li => Array.from(li.querySelectorAll('.resp-card')).map(c => Number(c.dataset.responseId)))"""
    )


def dom_unplaced(page) -> list[int]:
    return page.evaluate(
        "() => Array.from(document.querySelectorAll('[data-drop=unplaced] > .resp-card')).map(c => Number(c.dataset.responseId))"
    )


def place(page, ids):
    for rid in ids:
        card(page, rid).locator("[data-move=place]").click()


def wait_saved(page):
    page.wait_for_function("() => window.rankTask && !window.rankTask.dirty && !window.rankTask.saving"
                           " && document.querySelector('[data-draft-status]').textContent.startsWith('Draft saved')")


def submit_and_wait(page, assignment):
    page.get_by_role("button", name="Submit ranking").click()
    page.wait_for_function(
        "id => !document.querySelector(`[data-rank-task][data-assignment='${id}']`)", arg=assignment.pk
    )


def box(locator) -> dict:
    return locator.bounding_box()


# --- 1. after submit: banner, undo, history, Back ----------------------------------------------------------------


def test_submit_shows_a_banner_with_undo_that_reopens_the_ranking_as_a_draft(page, live_server, artifacts_dir):
    project = make_project("Banner", demo_like(3, 4))
    user = annotator_of(project)
    page.set_viewport_size(DESKTOP)
    first = open_task(page, live_server, user)
    a, b, c, d = first.display_order
    place(page, [c, a])
    card(page, b).focus()
    page.keyboard.press("t")  # B ties with A (the last rank)
    place(page, [d])
    card(page, c).locator(".likert-option", has_text="6").click()
    submit_and_wait(page, first)
    ranking = Ranking.objects.get(assignment=first)
    assert [sorted(t) for t in ranking.tiers] == [[c], sorted([a, b]), [d]]

    banner = page.locator("[data-submitted-banner]")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text(f"Ranking submitted (prompt #{first.prompt_id})")
    assert box(banner)["y"] + box(banner)["height"] <= DESKTOP["height"]  # in the first screen, not a live region
    page.screenshot(path=str(artifacts_dir / "ranking-after-submit.png"))

    banner.get_by_role("button", name="Undo").click()
    page.wait_for_url(re.compile(rf"/rank/{first.pk}/$"))
    page.wait_for_function("() => Boolean(window.rankTask)")
    # The ranking is gone, the same task is leased again with the submitted content as its draft.
    assert not Ranking.objects.filter(assignment=first).exists()
    first.refresh_from_db()
    assert first.state == Assignment.State.LEASED
    assert [sorted(t) for t in dom_tiers(page)] == [[c], sorted([a, b]), [d]] and dom_unplaced(page) == []
    assert card(page, c).locator("input[data-rating][value='6']").is_checked()
    entry = LogEntry.objects.get(object_id=str(ranking.pk), action_flag=DELETION)
    assert entry.user_id == user.pk and '"reopened"' in entry.change_message
    # Change it and submit again: one ranking for the task, the new one.
    card(page, d).locator("[data-move=up]").click()
    submit_and_wait(page, first)
    again = Ranking.objects.get(assignment=first)
    assert again.pk != ranking.pk and [sorted(t) for t in again.tiers] == [[c], [d], sorted([a, b])]


def test_history_lists_only_ones_own_rankings_and_back_never_shows_a_dead_form(page, live_server, artifacts_dir):
    project = make_project("History", demo_like(4, 4))
    user = annotator_of(project)
    other = annotator_of(project, "someone-else")
    theirs = lease_next_task(annotator=other, project=project)
    submit_ranking(annotator=other, assignment_id=theirs.pk, tiers=[theirs.display_order],
                   rationale="OTHER-PERSONS-RATIONALE")
    page.set_viewport_size(DESKTOP)
    first = open_task(page, live_server, user)
    place(page, first.display_order)
    page.get_by_label("Rationale").fill("MY-OWN-RATIONALE")
    submit_and_wait(page, first)

    # Back: the page reloads from the server and says the task was submitted, with Edit and Next.
    page.go_back()
    page.wait_for_url(re.compile(rf"/rank/{first.pk}/$"))
    finished = page.locator("[data-finished]")
    expect(finished).to_contain_text("You already submitted this ranking")
    expect(page.get_by_role("button", name="Submit ranking")).to_have_count(0)
    expect(finished.get_by_role("button", name="Edit this ranking")).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "ranking-back-after-submit.png"))
    finished.get_by_role("button", name="Next task").click()
    page.wait_for_url(re.compile(r"/rank/\d+/$"))
    assert not page.url.endswith(f"/rank/{first.pk}/")

    page.get_by_role("link", name="My rankings").first.click()
    page.wait_for_url(re.compile(r"/rankings/mine/$"))
    rows = page.locator(".history-row")
    expect(rows).to_have_count(1)
    rows.first.locator("summary").click()
    expect(rows.first).to_contain_text("MY-OWN-RATIONALE")
    assert "OTHER-PERSONS-RATIONALE" not in page.content()
    expect(rows.first.get_by_role("button", name="Edit this ranking")).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "my-rankings.png"), full_page=True)


# --- 2. unranked start ------------------------------------------------------------------------------------------------


def test_responses_start_unranked_and_the_draft_keeps_what_is_placed(page, live_server):
    project = make_project("Unranked", demo_like(2, 5))
    user = annotator_of(project)
    assignment = open_task(page, live_server, user)
    a, b, c, d, e = assignment.display_order
    assert dom_tiers(page) == [] and dom_unplaced(page) == [a, b, c, d, e]
    expect(page.locator("[data-rank-badge]:not(:empty)")).to_have_count(0)  # no 1st…5th before anything is placed
    expect(page.locator("[data-unplaced-count]")).to_have_text("5")

    # Keyboard only: K places below the ranked ones and moves on; T ties with the last rank; X takes one back.
    card(page, c).focus()
    page.keyboard.press("k")  # C → rank 1, focus D
    assert page.evaluate("Number(document.activeElement.dataset.responseId)") == d
    page.keyboard.press("t")  # D ties with C
    card(page, a).focus()
    page.keyboard.press("Alt+ArrowUp")  # A → rank 2
    assert dom_tiers(page) == [[c, d], [a]] and dom_unplaced(page) == [b, e]
    expect(page.locator("#rank-live")).to_contain_text("2 still to place")
    card(page, c).focus()
    page.keyboard.press("x")
    assert dom_tiers(page) == [[d], [a]] and dom_unplaced(page) == [b, c, e]
    expect(page.locator("[data-place-hint]")).to_have_text("3 of 5 responses still to place.")

    page.keyboard.press("Control+Enter")
    expect(page.locator(".submit-status [role=alert]")).to_contain_text("3 responses are not ranked yet (B, C, E)")
    assert not Ranking.objects.exists()

    wait_saved(page)
    assert Draft.objects.get(assignment=assignment).state["tiers"] == [[d], [a]]
    page.reload()
    page.wait_for_function("() => Boolean(window.rankTask)")
    assert dom_tiers(page) == [[d], [a]] and dom_unplaced(page) == [b, c, e]

    place(page, [b, c, e])
    submit_and_wait(page, assignment)
    assert Ranking.objects.get(assignment=assignment).tiers == [[d], [a], [b], [c], [e]]


# --- 3. compact cards ---------------------------------------------------------------------------------------------


def test_six_short_responses_fit_a_desktop_screen_and_the_first_shows_on_a_phone(page, live_server, artifacts_dir):
    project = make_project("Compact", demo_like(2, 6), k_min=4, k_max=6)
    user = annotator_of(project)
    page.set_viewport_size(DESKTOP)
    assignment = open_task(page, live_server, user)
    assert len(assignment.display_order) == 6
    keys = page.locator("[data-shortcuts]")
    assert keys.evaluate("d => d.open") is False  # closed by default…
    page.locator("body").press("?")  # …and one key away
    assert keys.evaluate("d => d.open") is True
    expect(keys.locator("dl")).to_contain_text("take it out of the ranking")
    page.keyboard.press("?")
    assert keys.evaluate("d => d.open") is False

    cards = page.locator(".resp-card")
    last = box(cards.nth(5))
    page.screenshot(path=str(artifacts_dir / "ranking-1280x800-unranked.png"))
    print(f"1280x800 unranked: 6th card bottom {last['y'] + last['height']:.0f} px")
    assert last["y"] + last["height"] <= DESKTOP["height"], f"the 6th card ends at {last['y'] + last['height']:.0f} px"
    # Still true once all six are placed (each rank has its own row).
    place(page, assignment.display_order)
    last = box(cards.nth(5))
    page.screenshot(path=str(artifacts_dir / "ranking-1280x800-ranked.png"))
    print(f"1280x800 ranked: 6th card bottom {last['y'] + last['height']:.0f} px")
    assert last["y"] + last["height"] <= DESKTOP["height"], f"ranked: the 6th card ends at {last['y'] + last['height']:.0f}"

    # Ratings and flags are inline and can be hidden with one button.
    page.get_by_role("button", name="Hide ratings").click()
    expect(page.locator(".resp-card .likert").first).to_be_hidden()
    page.get_by_role("button", name="Show ratings").click()
    expect(page.locator(".resp-card .likert").first).to_be_visible()

    page.set_viewport_size(PHONE)
    page.reload()
    page.wait_for_function("() => Boolean(window.rankTask)")
    first = box(page.locator(".resp-card").first)
    print(f"390x844: first response at y = {first['y']:.0f}")
    assert first["y"] < 400, f"on a phone the first response starts at y = {first['y']:.0f}"
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path=str(artifacts_dir / "ranking-390px-first-screen.png"))


# --- 11. Markdown model output ------------------------------------------------------------------------------------------


def long_markdown_answer(i: int) -> str:
    """A 400+ word chat-model answer: headings, a list, a wide table, a code block with a long line."""
    para = (f"Answer {i} looks at the question from a practical angle. The main point is that a careful reader "
            "compares the options on cost, speed and the risk of getting it wrong, and writes the reasons down. ")
    table = ("| Option | Cost per month (EUR) | Setup time | Maintenance burden | Risk of data loss | Verdict |\n"
             "|:--|--:|:-:|:--|:--|:--|\n"
             + "".join(f"| Option {j} with a rather long descriptive name | {j * 13} | {j} days | moderate to high "
                       f"depending on team | low if backups are tested | acceptable for answer {i} |\n"
                       for j in range(1, 5)))
    code = ("```python\n"
            f"def choose(options, budget={i * 100}):\n"
            "    ranked = sorted(options, key=lambda o: (o.cost_per_month_in_euros_after_discounts, o.setup_days, o.risk))"
            "  # a deliberately long line\n"
            "    return [o for o in ranked if o.cost <= budget]\n```\n")
    body = (f"## Summary of answer {i}\n\n" + para * 3 + "\n\n### Steps\n\n"
            + "".join(f"{n}. **Step {n}**: {para}\n" for n in range(1, 4)) + "\n" + table + "\n" + code
            + "\n" + para * 6 + "\n\nThat is all; `choose()` does the rest.")
    assert len(body.split()) >= 400
    return body


def test_nine_long_markdown_answers_render_and_fit_a_phone(page, live_server, artifacts_dir):
    answers = [long_markdown_answer(i) for i in range(9)]
    project = make_project("Markdown", [("Which **storage** option should a small team pick? Explain with a table.",
                                         answers)], k_min=9, k_max=9)
    user = annotator_of(project)
    page.set_viewport_size(PHONE)
    assignment = open_task(page, live_server, user)
    assert len(assignment.display_order) == 9
    first = card(page, assignment.display_order[0])
    rendered = first.locator("[data-body=rendered]")
    expect(rendered.locator("h2")).to_contain_text("Summary of answer")
    expect(rendered.locator("table th").first).to_have_text("Option")
    assert rendered.locator(".hl code span.k").count() >= 2  # highlighted keywords (def, return, lambda…)
    assert "|:--|" not in rendered.inner_text() and "**Step" not in rendered.inner_text()
    expect(page.locator(".prompt-card strong")).to_have_text("storage")

    # Expanded, every card's table and code scroll inside the card; the page itself does not scroll sideways.
    for rid in assignment.display_order:
        card(page, rid).get_by_role("button", name="Show the full response").click()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    overflow = page.evaluate("""() => Array.from(document.querySelectorAll('.resp-card')).flatMap(c => {
        const edge = c.getBoundingClientRect().right;
        return Array.from(c.querySelectorAll('table, pre')).filter(el => el.getBoundingClientRect().right > edge + 0.5)
          .map(el => el.tagName);
      })""")
    assert overflow == []
    scrolls = page.evaluate("""() => Array.from(document.querySelectorAll('.resp-card table')).map(
        t => t.scrollWidth > t.clientWidth && getComputedStyle(t).overflowX === 'auto')""")
    assert len(scrolls) == 9 and all(scrolls)
    page.screenshot(path=str(artifacts_dir / "ranking-markdown-390px.png"))

    # "Show raw" shows the text as the model wrote it, per response.
    first.get_by_role("button", name="Show raw").click()
    raw = first.locator("[data-body=raw]")
    expect(raw).to_be_visible()
    expect(raw).to_contain_text("| Option | Cost per month (EUR) |")
    expect(rendered).to_be_hidden()
    first.get_by_role("button", name="Show formatted").click()
    expect(rendered).to_be_visible()

    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(artifacts_dir / "ranking-markdown-1280.png"))


def test_a_project_can_show_model_output_as_plain_text(page, live_server):
    project = make_project("Plain", [("Say **hi**", ["# Not a heading", "*not em*", "| a | b |", "<b>x</b>"])],
                           render_markdown=False)
    user = annotator_of(project)
    open_task(page, live_server, user)
    expect(page.locator(".resp-card h1, .resp-card em, .resp-card table, .resp-card b")).to_have_count(0)
    expect(page.locator(".resp-card", has_text="# Not a heading")).to_have_count(1)
    expect(page.locator(".resp-card", has_text="<b>x</b>")).to_have_count(1)
    expect(page.get_by_role("button", name="Show raw")).to_have_count(0)


# --- minors ---------------------------------------------------------------------------------------------------------


def test_minors_403_page_favicon_skip_error_and_staff_join(page, live_server, artifacts_dir):
    project = make_project("Minors", demo_like(2, 4))
    user = annotator_of(project)
    missing: list[str] = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    login(page, live_server, user)

    page.goto(live_server.url + "/dashboard/")
    expect(page.locator("h1")).to_have_text("You may not open this page")
    expect(page.locator("main")).to_contain_text("The dashboard is for staff.")
    expect(page.get_by_role("link", name="Go to your annotation projects")).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "forbidden-403.png"))
    assert page.evaluate("getComputedStyle(document.querySelector('.card')).borderRadius") != "0px"  # styled

    page.goto(live_server.url + "/")
    page.get_by_role("button", name="Start ranking").click()
    page.wait_for_function("() => Boolean(window.rankTask)")
    icon = page.evaluate("fetch('/favicon.ico').then(r => [r.status, r.headers.get('content-type')])")
    assert icon[0] == 200 and "svg" in icon[1]
    page.set_viewport_size(PHONE)
    page.locator("details.skip summary").click()
    page.get_by_label("Why skip?").select_option("other")
    page.get_by_role("button", name=re.compile("Skip — never show")).click()
    problem = page.locator(".skip [data-problem]")
    expect(problem).to_contain_text("Details: Say why you skip this prompt.")
    assert "reason_text" not in problem.inner_text()
    page.wait_for_timeout(300)
    top = box(problem)["y"]
    assert 0 <= top < PHONE["height"], f"the skip error is at y = {top:.0f}"
    assert missing == [], missing

    staff = get_user_model().objects.create_user("boss", is_staff=True)
    page.context.clear_cookies()
    login(page, live_server, staff)
    page.goto(live_server.url + "/")
    row = page.locator(".project-row", has_text="Minors")
    expect(row).not_to_contain_text("not a member")
    row.get_by_role("button", name="Join as an annotator").click()
    assert project.annotators.filter(pk=staff.pk).exists()
