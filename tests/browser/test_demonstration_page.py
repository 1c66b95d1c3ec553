"""The demonstration editor and its review in real Chromium, at 1280×800 and 390 px: writing with the live
counts, starting from a sampled response (keyboard only), autosave restored after a reload, the conflict box
when another tab saved, submit with Ctrl+Enter, and staff review (edit + accept, reject with a note)."""

from __future__ import annotations

import json

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from playwright.sync_api import expect

from annotate.models import Demonstration, Project, Prompt, Response

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SIZES = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_project(**fields) -> Project:
    project = Project.objects.create(name="Write", annotators_per_prompt=1, guidelines="Be *specific*.",
                                     task_types=Project.TaskTypes.DEMONSTRATIONS, **fields)
    for i in range(2):
        prompt = Prompt.objects.create(project=project, text=f"Question {i}: how should I store coffee beans?")
        for j in range(4):
            Response.objects.create(prompt=prompt, text=f"Answer {j} to question {i}: keep them airtight.")
    return project


def login(page, live_server, user) -> None:
    client = Client()
    client.force_login(user)
    page.context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "url": live_server.url,
                               "value": client.cookies[settings.SESSION_COOKIE_NAME].value}])


def open_task(page, live_server, project) -> Demonstration:
    page.goto(f"{live_server.url}/projects/{project.pk}/")
    page.get_by_role("button", name="Write demonstrations").click()
    expect(page.get_by_role("heading", name="Write the ideal answer")).to_be_visible()
    return Demonstration.objects.get(status="draft")


def assert_fits(page) -> None:
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"] + 1, f"page overflows: {width}px"


@pytest.mark.parametrize("size", SIZES)
def test_write_start_from_autosave_reload_submit(page, live_server, artifacts_dir, size):
    page.set_viewport_size(SIZES[size])
    project = make_project(demonstration_start=Project.DemonstrationStart.EDIT_BEST)
    user = get_user_model().objects.create_user("ann")
    project.annotators.add(user)
    login(page, live_server, user)
    demo = open_task(page, live_server, project)
    editor = page.locator("[data-demo-text]")
    expect(editor).to_be_focused()  # keyboard only from the start
    page.keyboard.type("Keep beans airtight.")
    expect(page.locator("[data-counts]")).to_contain_text("20 characters")
    expect(page.locator("[data-counts]")).to_contain_text("token")
    expect(page.locator("[data-draft-status]")).to_contain_text("Draft saved", timeout=5000)
    page.reload()
    expect(editor).to_have_value("Keep beans airtight.")
    expect(page.locator("[data-draft-status]")).to_contain_text("Draft restored")

    # Alt+2 starts from response B: the text is replaced (undo-able) and the origin recorded.
    editor.focus()
    page.keyboard.press("Alt+2")
    b_text = json.loads(page.locator("#demo-config").text_content())["responses"]
    chosen = page.locator("[data-start-from]").nth(1).get_attribute("data-start-from")
    expect(editor).to_have_value(b_text[chosen])
    page.keyboard.press("End")
    page.keyboard.type(" Store them cool and dark.")
    expect(page.locator("[data-draft-status]")).to_contain_text("Draft saved", timeout=5000)
    demo.refresh_from_db()
    assert demo.started_from_id == int(chosen) and demo.text.endswith("cool and dark.")
    assert_fits(page)
    page.screenshot(path=str(artifacts_dir / f"demonstration-editor-{size}.png"), full_page=True)

    page.keyboard.press("Control+Enter")
    expect(page.get_by_text("Demonstration submitted for review.")).to_be_visible()
    demo.refresh_from_db()
    assert demo.status == "submitted" and demo.submitted_text.endswith("cool and dark.")
    page.goto(f"{live_server.url}/rankings/mine/")
    expect(page.locator("[data-demonstration-list]")).to_contain_text("Submitted, awaiting review")


@pytest.mark.parametrize("size", SIZES)
def test_conflict_box_load_and_keep(page, live_server, artifacts_dir, size):
    page.set_viewport_size(SIZES[size])
    project = make_project()
    user = get_user_model().objects.create_user("ann")
    project.annotators.add(user)
    login(page, live_server, user)
    demo = open_task(page, live_server, project)
    # Another tab saves meanwhile.
    Demonstration.objects.filter(pk=demo.pk).update(text="From the other tab", revision=3)
    page.locator("[data-demo-text]").type("Mine")
    box = page.locator("[data-conflict]")
    expect(box).to_be_visible(timeout=5000)
    expect(box).to_contain_text("changed on another device or tab")
    assert_fits(page)
    page.screenshot(path=str(artifacts_dir / f"demonstration-conflict-{size}.png"), full_page=True)
    page.get_by_role("button", name="Keep mine").click()
    expect(page.locator("[data-draft-status]")).to_contain_text("Draft saved", timeout=5000)
    demo.refresh_from_db()
    assert demo.text == "Mine" and demo.revision == 4
    # And once more, loading the other version instead.
    Demonstration.objects.filter(pk=demo.pk).update(text="Other again", revision=9)
    page.locator("[data-demo-text]").type("!")
    expect(box).to_be_visible(timeout=5000)
    page.get_by_role("button", name="Load the other version").click()
    expect(page.locator("[data-demo-text]")).to_have_value("Other again")
    expect(box).to_be_hidden()


@pytest.mark.parametrize("size", SIZES)
def test_staff_review(page, live_server, artifacts_dir, size):
    page.set_viewport_size(SIZES[size])
    project = make_project()
    author = get_user_model().objects.create_user("ann")
    prompts = list(project.prompts.all())
    one = Demonstration.objects.create(prompt=prompts[0], annotator=author, text="Airtight jar, cool plce.",
                                       submitted_text="Airtight jar, cool plce.", status="submitted")
    two = Demonstration.objects.create(prompt=prompts[1], annotator=author, text="Fridge.", submitted_text="Fridge.",
                                       status="submitted")
    staff = get_user_model().objects.create_user("boss", is_staff=True)
    login(page, live_server, staff)
    page.goto(f"{live_server.url}/projects/{project.pk}/demonstrations/review/")
    first = page.locator(f"[data-review='{one.pk}']")
    first.locator("textarea").fill("Airtight jar, cool place.")
    assert_fits(page)
    page.screenshot(path=str(artifacts_dir / f"demonstration-review-{size}.png"), full_page=True)
    first.get_by_role("button", name="Accept").click()
    expect(page.get_by_text(f"Demonstration {one.pk}: accepted.")).to_be_visible()
    second = page.locator(f"[data-review='{two.pk}']")
    second.get_by_role("button", name="Reject").click()  # no note: refused, named
    expect(page.locator(".messages")).to_contain_text("note")
    second = page.locator(f"[data-review='{two.pk}']")
    second.locator("input[name=note]").fill("Say why: humidity.")
    second.get_by_role("button", name="Reject").click()
    expect(page.get_by_text(f"Demonstration {two.pk}: rejected.")).to_be_visible()
    one.refresh_from_db()
    two.refresh_from_db()
    assert (one.status, one.text, one.submitted_text) == ("accepted", "Airtight jar, cool place.",
                                                          "Airtight jar, cool plce.")
    assert (two.status, two.review_note) == ("rejected", "Say why: humidity.")
