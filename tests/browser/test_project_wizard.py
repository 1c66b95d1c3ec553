"""Issue 16, item 7, in real Chromium: the data path in the app for staff. New project -> guidelines -> import (a
prompt given twice with different responses is merged and counted) -> the import's next step -> sample responses
for the SAME round from the tiny model (queued; the worker runs in-process here) -> the job page leads back ->
preview of the sampled responses -> open for an annotator, who then finds the prompts ready. Screenshots of the
setup page at 1280x800 and 390 px (no horizontal overflow) go to the CI artifacts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from annotate.models import Project, Prompt
from tests.training.helpers import use_file_sqlite_test_database

use_file_sqlite_test_database()

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

RESPONSES = ["Great coffee, friendly staff.", "Slow service but tasty cake.", "Too loud to talk.", "Fine."]


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def login(page, live_server, user):
    client = Client()
    client.force_login(user)
    page.context.add_cookies([{"name": settings.SESSION_COOKIE_NAME,
                               "value": client.cookies[settings.SESSION_COOKIE_NAME].value, "url": live_server.url}])


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_staff_set_up_a_project_in_the_app(page, live_server, tiny_model_dir, settings, tmp_path, artifacts_dir):
    settings.WORKBENCH_MODEL_ROOTS = [Path(tiny_model_dir).resolve().parent]
    settings.WORKBENCH_RUNS_ROOT = (tmp_path / "runs").resolve()
    users = get_user_model().objects
    staff = users.create_user("staffer", is_staff=True)
    ann = users.create_user("annie")
    page.set_default_timeout(20_000)
    page.set_viewport_size({"width": 1280, "height": 800})
    login(page, live_server, staff)

    # 1. Create, from the home page.
    page.goto(live_server.url + "/")
    page.click("#new-project")
    page.fill("#id_name", "Cafe reviews")
    page.fill("#id_k_min", "4")
    page.fill("#id_k_max", "6")
    page.get_by_role("button", name="Create and continue").click()
    page.wait_for_url(re.compile(r"/projects/\d+/setup/#step-guidelines$"))
    project = Project.objects.get(name="Cafe reviews")
    assert "Next: Write the guidelines" in page.inner_text("#setup-next")

    # 2. Guidelines; the next step is the import.
    page.fill("#id_guidelines", "Prefer **specific** reviews.")
    page.get_by_role("button", name="Save guidelines").click()
    page.wait_for_url(re.compile(r"#step-import$"))
    assert "Next: Import prompts" in page.inner_text("#setup-next")
    assert "Version 1, 3 words" in page.inner_text("#step-guidelines")

    # 3. Import: one prompt twice with different responses is merged, and the report says so.
    page.click("#step-import >> text=Upload prompts")
    records = [{"prompt": "Review the cafe on Main Street:"}, {"prompt": "Review the bakery:"},
               {"prompt": "Review the tea room:", "responses": RESPONSES},
               {"prompt": "Review the tea room:", "responses": [RESPONSES[1], "Cosy, would return.", RESPONSES[0], "No wifi."]}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    page.set_input_files("#id_file", str(path))
    page.get_by_role("button", name="Import").click()
    page.wait_for_selector("text=merged 1 repeated prompt with other responses")
    assert Prompt.objects.get(text="Review the tea room:").responses.count() == 6
    page.click("#import-next >> text=Sample responses and preview them")
    page.wait_for_url(re.compile(r"/setup/#step-sample$"))
    assert "1 of 3 prompts in round 1 have at least 4 responses" in page.inner_text("#sample-summary")
    assert "Next: Sample responses" in page.inner_text("#setup-next")

    # 4. Sample the same round (no new round) from the tiny model; the job page leads back.
    page.click("#sample-link")
    page.select_option("#id_model", str(Path(tiny_model_dir).resolve()))
    page.fill("#id_max_new_tokens", "8")
    page.get_by_role("button", name="Queue the sampling").click()
    page.wait_for_url(re.compile(r"/dashboard/jobs/\d+/$"))
    call_command("db_worker", "--batch", "--no-startup-delay", "--no-reload", verbosity=0)
    page.reload()
    assert "Round 1 sampled in place: 3 prompts" in page.inner_text("#job-summary")
    assert Prompt.objects.filter(project=project).values("round").distinct().count() == 1
    page.click("text=Preview the responses and open the project")
    page.wait_for_url(re.compile(r"/setup/#step-sample$"))
    assert "3 of 3 prompts in round 1" in page.inner_text("#sample-summary")
    previews = page.locator(".preview")
    assert previews.count() == 3
    assert previews.nth(0).locator(".preview-responses > li").count() == 4
    assert "tiny-model" in previews.nth(0).inner_text() or "T = 1" in previews.nth(0).inner_text()
    assert "Next: Open for annotators" in page.inner_text("#setup-next")

    # 5. Open for an annotator; they see the prompts waiting.
    page.get_by_label("annie").check()
    page.get_by_role("button", name="Open for these annotators").click()
    page.wait_for_url(re.compile(r"#step-open$"))
    assert "The project is open: 3 prompts ready for 1 annotator" in page.inner_text("#setup-next")
    assert list(project.annotators.all()) == [ann]
    page.screenshot(path=str(artifacts_dir / "wizard-setup-1280.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    assert no_horizontal_overflow(page)
    page.screenshot(path=str(artifacts_dir / "wizard-setup-390.png"), full_page=True)

    login(page, live_server, ann)
    page.goto(live_server.url + "/")
    assert "3 prompts you can rank now" in page.inner_text("main")
