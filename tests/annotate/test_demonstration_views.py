"""The demonstration pages over HTTP: start, editor, autosave JSON (400/409), submit (idempotent, 400 on blank),
skip, the annotator's history, and staff review and import (permissions, errors named, nothing written)."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from annotate.models import Demonstration, Project

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(make_project, alice, bob):
    return make_project("Write", prompts=2, members=[alice, bob], task_types=Project.TaskTypes.BOTH,
                        demonstration_start=Project.DemonstrationStart.EDIT_BEST, guidelines="Be **kind**.")


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def start(client, project):
    response = client.post(reverse("demos:start", args=[project.pk]))
    assert response.status_code == 302
    return Demonstration.objects.get(pk=int(response["Location"].rstrip("/").split("/")[-1]))


def autosave(client, demo, **body):
    return client.post(reverse("demos:draft", args=[demo.pk]), data=json.dumps(body), content_type="application/json")


def test_project_page_offers_demonstrations_and_the_editor_renders(alice_client, project):
    page = alice_client.get(reverse("annotate:project", args=[project.pk])).content.decode()
    assert "Write demonstrations" in page
    demo = start(alice_client, project)
    html = alice_client.get(reverse("demos:page", args=[demo.pk])).content.decode()
    assert "Write the ideal answer" in html and demo.prompt.text.split(":")[0] in html
    assert html.count("data-start-from=") == 4  # the sampled responses, as a starting point
    assert 'id="demo-config"' in html and "Ctrl</kbd>+<kbd>Enter" in html


def test_ranking_only_project_refuses_to_start(client, make_project, alice):
    project = make_project("Ranks", prompts=1, members=[alice])
    client.force_login(alice)
    response = client.post(reverse("demos:start", args=[project.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("annotate:project", args=[project.pk])
    assert not Demonstration.objects.exists()


def test_autosave_conflict_and_errors(alice_client, project):
    demo = start(alice_client, project)
    ok = autosave(alice_client, demo, revision=0, text="Hello", seconds_spent=3)
    assert ok.status_code == 200 and ok.json()["revision"] == 1
    stale = autosave(alice_client, demo, revision=0, text="Other tab")
    assert stale.status_code == 409 and stale.json()["code"] == "stale_draft"
    assert stale.json()["draft"] == {"revision": 1, "text": "Hello"}
    bad = autosave(alice_client, demo, revision=1, text=["x"])
    assert bad.status_code == 400 and "text" in bad.json()["errors"]
    bad = autosave(alice_client, demo, revision=1, text="x", started_from="A")
    assert bad.status_code == 400 and "started_from" in bad.json()["errors"]
    not_json = alice_client.post(reverse("demos:draft", args=[demo.pk]), data="{", content_type="application/json")
    assert not_json.status_code == 400
    # Reload restores the saved text.
    assert "Hello</textarea>" in alice_client.get(reverse("demos:page", args=[demo.pk])).content.decode()


def test_others_cannot_touch_my_demonstration(client, project, alice, bob):
    client.force_login(alice)
    demo = start(client, project)
    client.force_login(bob)
    assert client.get(reverse("demos:page", args=[demo.pk])).status_code == 404
    assert autosave(client, demo, revision=0, text="mine").status_code == 404
    assert client.post(reverse("demos:submit", args=[demo.pk]), {"text": "x"}).status_code == 404


def test_submit_blank_is_400_and_submit_twice_is_one(alice_client, project):
    demo = start(alice_client, project)
    blank = alice_client.post(reverse("demos:submit", args=[demo.pk]), {"text": "  "})
    assert blank.status_code == 400 and "it is empty" in blank.content.decode()
    first = alice_client.post(reverse("demos:submit", args=[demo.pk]), {"text": "Ideal.", "seconds_spent": "12"})
    again = alice_client.post(reverse("demos:submit", args=[demo.pk]), {"text": "Ideal."})
    assert first.status_code == again.status_code == 302
    demo.refresh_from_db()
    assert demo.status == "submitted" and demo.seconds_spent == 12
    assert Demonstration.objects.filter(status="submitted").count() == 1
    changed = alice_client.post(reverse("demos:submit", args=[demo.pk]), {"text": "Other."})
    assert changed.status_code == 409
    history = alice_client.get(reverse("annotate:history")).content.decode()
    assert "My demonstrations" in history and "Submitted, awaiting review" in history


def test_skip(alice_client, project):
    demo = start(alice_client, project)
    response = alice_client.post(reverse("demos:skip", args=[demo.pk]), {"reason": "unclear"})
    assert response.status_code == 302
    demo.refresh_from_db()
    assert demo.status == "skipped" and demo.skip_reason == "unclear"


def test_review_pages_are_staff_only_and_work(client, project, alice, staff):
    client.force_login(alice)
    demo = start(client, project)
    client.post(reverse("demos:submit", args=[demo.pk]), {"text": "Good answr."})
    assert client.get(reverse("demos:review_list", args=[project.pk])).status_code == 302  # to the login
    assert client.post(reverse("demos:review", args=[demo.pk]), {"action": "accept"}).status_code == 302
    assert Demonstration.objects.get(pk=demo.pk).status == "submitted"

    client.force_login(staff)
    page = client.get(reverse("demos:review_list", args=[project.pk])).content.decode()
    assert "Good answr." in page and "Submitted (1)" in page
    no_note = client.post(reverse("demos:review", args=[demo.pk]), {"action": "reject", "note": "", "text": "Good answr."},
                          follow=True)
    assert "note" in no_note.content.decode() and Demonstration.objects.get(pk=demo.pk).status == "submitted"
    client.post(reverse("demos:review", args=[demo.pk]), {"action": "accept", "note": "", "text": "Good answer."})
    demo.refresh_from_db()
    assert demo.status == "accepted" and demo.text == "Good answer." and demo.submitted_text == "Good answr."


def test_import_page(client, project, staff, alice):
    url = reverse("demos:import", args=[project.pk])
    client.force_login(alice)
    assert client.get(url).status_code == 302
    client.force_login(staff)
    assert client.get(url).status_code == 200
    bad = SimpleUploadedFile("d.jsonl", b'{"prompt": "p", "response": "r"}\n{"prompt": "q"}\n')
    response = client.post(url, {"file": bad})
    assert response.status_code == 400 and "d.jsonl line 2" in response.content.decode()
    assert not Demonstration.objects.exists()
    assert client.post(url, {}).status_code == 400
    good = SimpleUploadedFile("d.csv", b"prompt,response\nHow?,Like this.\n")
    response = client.post(url, {"file": good, "needs_review": "1"})
    assert response.status_code == 200 and "imported 1 demonstrations (submitted)" in response.content.decode()
    assert Demonstration.objects.get().source == "imported"


def test_export_page_lists_sft_snapshots_beside_ranking_ones(client, project, staff, alice, tmp_path):
    from annotate.services.export_sft import export_sft_snapshot

    prompt = project.prompts.first()
    Demonstration.objects.create(prompt=prompt, annotator=alice, text="Ideal.", status="accepted")
    export_sft_snapshot(project=project, out_dir=tmp_path / "sft")
    client.force_login(staff)
    page = client.get(reverse("annotate_data:export", args=[project.pk])).content.decode()
    assert 'data-kind="sft"' in page and "Demonstrations (SFT)" in page
    assert "1 / 0 demonstrations" in page or "0 / 1 demonstrations" in page  # one prompt: either side
