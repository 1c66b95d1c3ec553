"""The ranking page in real Chromium: drag, keyboard only, ties, ratings and flags, drafts, double submit.

Every response starts "not ranked yet"; `place_all` puts them into the ranking in display order first where a
test is about what comes after.

Each test logs an annotator in (session cookie), opens their task and checks what was stored in the database.
"""

from __future__ import annotations

import json
import re

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from playwright.sync_api import expect

from annotate.models import Assignment, Draft, Project, Prompt, Ranking, Response

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LONG = "The staff were friendly and the soup was warm. " * 30
CODE = "Here is how to count the tables:\n```python\nfor t in tables:\n    print(t, '<ok>')\n```\nThat's all."


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _settle_autosave(page):
    """Let the page's last autosave finish before the test database is flushed."""
    yield
    try:
        page.wait_for_function("() => !window.rankTask || (!window.rankTask.saving && !window.rankTask.dirty)",
                               timeout=5000)
    except Exception:  # the page may be gone or stuck on a conflict: closing it is all that is left
        pass
    page.close()


@pytest.fixture
def project():
    project = Project.objects.create(
        name="Café reviews", annotators_per_prompt=1, guidelines="## How to rank\n\nPrefer **specific**, kind reviews."
    )
    texts = [
        ("Write a short review of the café on the corner.",
         ["Lovely place, great coffee, friendly staff.", "It was a café.", LONG, CODE]),
        ("Describe the bakery's bread.", ["Crusty and warm.", "Bread.", "Fresh, with a soft crumb.", "I hated it."]),
        ("Review the noodle bar.", ["Quick and tasty.", "Noodles.", "Rich broth, long queue.", "Too salty."]),
    ]
    for prompt_text, responses in texts:
        prompt = Prompt.objects.create(project=project, text=prompt_text)
        for body in responses:
            Response.objects.create(prompt=prompt, text=body)
    return project


@pytest.fixture
def annotator(project):
    user = get_user_model().objects.create_user("ann", password="pw-ann-123")
    project.annotators.add(user)
    return user


def login(page, live_server, user):
    client = Client()
    client.force_login(user)
    page.context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
          "url": live_server.url}]
    )


def open_task(page, live_server, user, project) -> Assignment:
    login(page, live_server, user)
    page.goto(live_server.url + "/")
    page.get_by_role("button", name="Start ranking").click()
    page.wait_for_url(re.compile(r"/rank/\d+/$"))
    page.wait_for_function("() => Boolean(window.rankTask && window.Sortable)")
    return Assignment.objects.get(annotator=user, state=Assignment.State.LEASED)


def card(page, response_id):
    return page.locator(f'.resp-card[data-response-id="{response_id}"]')


def dom_tiers(page) -> list[list[int]]:
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('[data-tier-list] > li.tier')).map(
             li => Array.from(li.querySelectorAll('.resp-card')).map(c => Number(c.dataset.responseId)))"""
    )


def drag(page, source, target, *, target_y_fraction=0.5):
    """Drag `source` (a card's handle) onto `target` with real mouse moves (SortableJS fallback mode).

    Aims again until SortableJS has moved its placeholder (`.sortable-ghost`) into the target, instead of
    trusting fixed waits: on a loaded machine the lift animation can outlast them and the drop lands elsewhere."""
    handle = source.locator(".drag-handle")
    handle.scroll_into_view_if_needed()
    box = handle.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 5, box["y"] + box["height"] / 2 + 5, steps=3)
    page.wait_for_function("() => document.body.classList.contains('rank-dragging')", timeout=5000)
    target.scroll_into_view_if_needed()
    for attempt in range(40):
        # The lifted card may have left its zone (e.g. "not ranked yet" shrinks): aim at where the target is now.
        # Never at a card's exact middle: SortableJS moves a card between lists by which half the pointer is in,
        # and at the exact middle it is in neither, so the placeholder stays where it is.
        tbox = target.bounding_box()
        page.mouse.move(tbox["x"] + tbox["width"] / 2,
                        tbox["y"] + tbox["height"] * target_y_fraction + 3 + attempt % 2, steps=4)
        page.wait_for_timeout(100)
        if target.evaluate("(el) => !!el.querySelector('.sortable-ghost')"):
            break
    page.mouse.up()
    page.wait_for_function("() => !document.body.classList.contains('rank-dragging')", timeout=5000)


def place_all(page, ids):
    """Put these (not yet ranked) responses into the ranking one after the other, with their "Rank it" buttons."""
    for rid in ids:
        card(page, rid).locator("[data-move=place]").click()
    assert dom_tiers(page)[-len(ids):] == [[rid] for rid in ids]


def submit_and_wait_for_next(page, previous: Assignment):
    page.get_by_role("button", name="Submit ranking").click()
    page.wait_for_function(
        "id => !document.querySelector(`[data-rank-task][data-assignment='${id}']`)", arg=previous.pk
    )


def test_rank_by_drag_then_next_task_arrives_without_reload(page, live_server, annotator, project, artifacts_dir):
    assignment = open_task(page, live_server, annotator, project)
    a, b, c, d = assignment.display_order
    page.evaluate("window.__sameDocument = true")
    assert dom_tiers(page) == []  # nothing is ranked before the annotator ranks it
    # Drag D from "not ranked yet" into the empty ranking; A, B and C by their buttons.
    drag(page, card(page, d), page.locator("[data-tier-list] > li.tier-gap").first)
    assert dom_tiers(page) == [[d]]
    place_all(page, [a, b, c])
    assert dom_tiers(page) == [[d], [a], [b], [c]]
    assert page.locator("[data-unplaced-section]").is_hidden()
    # Then B below C.
    drag(page, card(page, b), page.locator("[data-tier-list] > li.tier-gap").last, target_y_fraction=0.8)
    assert dom_tiers(page) == [[d], [a], [c], [b]]
    assert "rank 1 of 4" in card(page, d).get_attribute("aria-label")

    submit_and_wait_for_next(page, assignment)
    assert page.evaluate("window.__sameDocument") is True  # htmx swapped the task in: no full page load
    ranking = Ranking.objects.get(assignment=assignment)
    assert ranking.tiers == [[d], [a], [c], [b]]
    assert ranking.display_order == assignment.display_order
    # The header progress was updated from the same response.
    assert page.locator("[data-stat=today]").inner_text() == "1"
    assert page.locator("[data-stat=left]").inner_text() == "2"
    nxt = Assignment.objects.get(annotator=annotator, state=Assignment.State.LEASED)
    assert page.url.endswith(f"/rank/{nxt.pk}/")
    expect(page.locator("#rank-live")).to_have_text("Ranking submitted. Next prompt loaded.")


def test_rank_with_the_keyboard_only(page, live_server, annotator, project):
    assignment = open_task(page, live_server, annotator, project)
    a, b, c, d = assignment.display_order
    # Tab from the top of the page until a response card has the focus.
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('resp-card')"):
            break
    assert page.evaluate("Number(document.activeElement.dataset.responseId)") == a
    assert "not ranked yet" in card(page, a).get_attribute("aria-label")
    for _ in range(4):  # K places the focused card below the ranked ones; the focus moves on to the next
        page.keyboard.press("k")
    assert dom_tiers(page) == [[a], [b], [c], [d]]
    assert page.evaluate("Number(document.activeElement.dataset.responseId)") == d
    page.keyboard.press("Home")  # focus A
    page.keyboard.press("ArrowDown")  # focus B
    page.keyboard.press("ArrowDown")  # focus C
    page.keyboard.press("Alt+ArrowUp")  # C above B
    page.keyboard.press("k")  # C above A: C A B D
    assert dom_tiers(page) == [[c], [a], [b], [d]]
    assert page.evaluate("Number(document.activeElement.dataset.responseId)") == c  # focus follows the card
    page.keyboard.press("7")
    page.keyboard.press("End")  # focus D
    page.keyboard.press("j")  # already last: nothing moves
    page.keyboard.press("2")
    page.keyboard.press("Home")
    page.keyboard.press("ArrowDown")  # A
    page.keyboard.press("Alt+ArrowDown")  # A below B: C B A D
    assert dom_tiers(page) == [[c], [b], [a], [d]]
    expect(page.locator("#rank-live")).to_have_text("Response A: rank 3 of 4.")
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        "id => !document.querySelector(`[data-rank-task][data-assignment='${id}']`)", arg=assignment.pk
    )
    ranking = Ranking.objects.get(assignment=assignment)
    assert ranking.tiers == [[c], [b], [a], [d]]
    assert ranking.ratings == {str(c): 7, str(d): 2}


def test_make_a_tie_by_drag_and_by_keyboard(page, live_server, annotator, project):
    assignment = open_task(page, live_server, annotator, project)
    a, b, c, d = assignment.display_order
    place_all(page, [a, b, c, d])
    # Drop C onto A's rank: a tie.
    drag(page, card(page, c), page.locator("[data-tier-list] > li.tier").nth(0).locator(".tier-cards"))
    assert dom_tiers(page) == [[a, c], [b], [d]] or dom_tiers(page) == [[c, a], [b], [d]]
    assert page.locator("li.tier.tied").count() == 1
    assert "tied" in card(page, c).get_attribute("aria-label")
    # Keyboard: D ties with B (T), then B is untied (U) and moved back.
    card(page, d).focus()
    page.keyboard.press("t")
    tiers = dom_tiers(page)
    assert sorted(tiers[0]) == sorted([a, c]) and sorted(tiers[1]) == sorted([b, d]) and len(tiers) == 2
    expect(page.locator("#rank-live")).to_contain_text("tied with")
    card(page, b).focus()
    page.keyboard.press("u")
    assert dom_tiers(page)[1:] == [[d], [b]]
    submit_and_wait_for_next(page, assignment)
    ranking = Ranking.objects.get(assignment=assignment)
    assert [sorted(t) for t in ranking.tiers] == [sorted([a, c]), [d], [b]]


def test_rate_flag_rationale_and_all_bad(page, live_server, annotator, project):
    assignment = open_task(page, live_server, annotator, project)
    a, b, c, d = assignment.display_order
    place_all(page, [a, b, c, d])
    card(page, b).locator(".likert-option", has_text="3").click()
    card(page, a).locator(".likert-option", has_text="6").click()
    card(page, a).locator("[data-move=down]").click()
    flags = card(page, b).locator("details.flags")
    flags.locator("summary").click()
    flags.get_by_label("Made-up facts").check()
    flags.get_by_label("Unhelpful").check()
    assert flags.locator("[data-flag-count]").inner_text() == "(2)"
    page.get_by_label("Rationale").fill("B invents a menu; A is specific.")
    page.get_by_label("All responses are bad").check()
    submit_and_wait_for_next(page, assignment)
    ranking = Ranking.objects.get(assignment=assignment)
    assert ranking.tiers == [[b], [a], [c], [d]]
    assert ranking.ratings == {str(a): 6, str(b): 3}
    assert ranking.flags == {str(b): ["made_up_facts", "unhelpful"]}
    assert ranking.rationale == "B invents a menu; A is specific."
    assert ranking.all_bad is True
    assert ranking.seconds_spent > 0


def test_reload_and_another_device_get_the_draft_back(page, live_server, annotator, project, browser):
    assignment = open_task(page, live_server, annotator, project)
    a, b, c, d = assignment.display_order
    place_all(page, [a, b, c, d])
    card(page, d).focus()
    page.keyboard.press("k")
    page.keyboard.press("t")  # D ties with B: A, [B, D], C
    page.keyboard.press("5")
    page.get_by_label("Rationale").fill("draft in progress")
    page.wait_for_function("() => document.querySelector('[data-draft-status]').textContent.startsWith('Draft saved')")
    saved = Draft.objects.get(assignment=assignment)
    assert saved.state["rationale"] == "draft in progress" and saved.state["ratings"] == {str(d): 5}

    page.reload()
    page.wait_for_function("() => Boolean(window.rankTask)")
    assert dom_tiers(page) == [[a], [b, d], [c]]
    assert card(page, d).locator("input[data-rating][value='5']").is_checked()
    assert page.get_by_label("Rationale").input_value() == "draft in progress"
    assert "Draft restored" in page.locator("[data-draft-status]").inner_text()

    # A second device (another browser context, same user) opens the task and sees the same draft.
    other = browser.new_context(viewport={"width": 390, "height": 844})
    phone = other.new_page()
    try:
        login(phone, live_server, annotator)
        phone.goto(live_server.url + f"/rank/{assignment.pk}/")
        phone.wait_for_function("() => Boolean(window.rankTask)")
        assert dom_tiers(phone) == [[a], [b, d], [c]]
        # The phone changes something; the laptop's next save is then stale and asks what to do.
        phone.get_by_label("Rationale").fill("edited on the phone")
        phone.wait_for_function("() => document.querySelector('[data-draft-status]').textContent.startsWith('Draft saved')")
    finally:
        other.close()
    page.get_by_label("Rationale").fill("edited on the laptop")
    conflict = page.locator("[data-conflict]")
    conflict.wait_for(state="visible")
    assert Draft.objects.get(assignment=assignment).state["rationale"] == "edited on the phone"
    conflict.get_by_role("button", name="Load the other version").click()
    assert page.get_by_label("Rationale").input_value() == "edited on the phone"


def test_double_submit_makes_one_ranking_and_unplaced_responses_block_it(page, live_server, annotator, project):
    assignment = open_task(page, live_server, annotator, project)
    a, b, c, d = assignment.display_order
    place_all(page, [a, b])
    page.get_by_role("button", name="Submit ranking").click()  # C and D are not placed: refused, saying so
    expect(page.locator(".submit-status [role=alert]")).to_contain_text("2 responses are not ranked yet (C, D)")
    page.wait_for_timeout(300)
    assert not Ranking.objects.exists()

    place_all(page, [c, d])
    expect(page.locator(".submit-status [role=alert]")).to_have_count(0)  # the message goes once all are placed
    payload = page.evaluate("JSON.stringify(window.rankTask.payload())")
    page.get_by_role("button", name="Submit ranking").dblclick()  # twice as fast
    page.wait_for_function(
        "id => !document.querySelector(`[data-rank-task][data-assignment='${id}']`)", arg=assignment.pk
    )
    assert Ranking.objects.filter(assignment=assignment).count() == 1
    # A retried request (e.g. after a network error) gets the same ranking back.
    status = page.evaluate(
        """async ([url, payload]) => {
             const token = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken'];
             const body = new URLSearchParams({payload});
             const r = await fetch(url, {method: 'POST', body, headers: {'X-CSRFToken': token, 'HX-Request': 'true'}});
             return [r.status, await r.text()];
           }""",
        [f"/rank/{assignment.pk}/submit/", payload],
    )
    assert status[0] == 200 and "already submitted" in status[1]
    assert Ranking.objects.count() == 1
    assert json.loads(payload)["tiers"] == Ranking.objects.get().tiers


def test_ranking_page_screenshot_and_small_screens(page, live_server, annotator, project, artifacts_dir):
    page.set_viewport_size({"width": 1200, "height": 1100})
    assignment = open_task(page, live_server, annotator, project)
    a, b, c, d = assignment.display_order
    place_all(page, [a, b, c, d])
    card(page, c).focus()
    page.keyboard.press("t")
    page.keyboard.press("6")
    card(page, a).locator(".likert-option", has_text="4").click()
    page.wait_for_function("() => document.querySelector('[data-draft-status]').textContent.startsWith('Draft saved')")
    # Code blocks render as <pre>, escaped; the long response is collapsed with a toggle.
    assert page.locator(".resp-card pre.code code").inner_text().startswith("for t in tables:")
    toggle = page.get_by_role("button", name="Show the full response")
    assert toggle.get_attribute("aria-expanded") == "false"
    page.screenshot(path=str(artifacts_dir / "ranking-page.png"), full_page=True)
    toggle.click()
    assert page.get_by_role("button", name="Show less").get_attribute("aria-expanded") == "true"

    # Guidelines are one click away.
    page.get_by_role("link", name="Guidelines").click()
    dialog = page.locator("#guidelines-dialog")
    dialog.wait_for(state="visible")
    assert "specific" in dialog.inner_text()
    dialog.get_by_role("button", name="Close the guidelines").click()

    # 375 px wide: nothing overflows sideways and the controls stay usable.
    page.set_viewport_size({"width": 375, "height": 812})
    page.wait_for_timeout(200)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    card(page, d).locator("[data-move=up]").click()  # D passes the tie of B and C
    assert dom_tiers(page) == [[a], [d], [b, c]]
    page.screenshot(path=str(artifacts_dir / "ranking-page-375px.png"), full_page=True)

    # The annotator's home: their project, its progress and a way back to the task.
    page.set_viewport_size({"width": 1000, "height": 700})
    page.goto(live_server.url + "/")
    row = page.locator(".project-row", has_text="Café reviews")
    expect(row).to_contain_text("0 of 3 rankings done")
    expect(row.get_by_role("link", name="Resume task")).to_have_attribute("href", f"/rank/{assignment.pk}/")
    page.screenshot(path=str(artifacts_dir / "annotator-home.png"), full_page=True)
