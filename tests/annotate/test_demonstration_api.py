"""The demonstrations REST API: next / draft (409 stale with the stored version) / submit (201 then 200) / skip,
other people's demonstrations 404, staff review, listing and import (all or nothing, record and field named)."""

import pytest
from rest_framework.test import APIClient

from annotate.models import Demonstration, Project

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(make_project, alice, bob):
    return make_project("Api", prompts=2, members=[alice, bob], task_types=Project.TaskTypes.DEMONSTRATIONS)


def api(user=None):
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def test_annotator_flow(project, alice, bob):
    assert api().post("/api/demonstrations/next/", {}, format="json").status_code in (401, 403)
    a = api(alice)
    task = a.post("/api/demonstrations/next/", {"project": project.pk}, format="json")
    assert task.status_code == 200 and task.json()["status"] == "draft" and task.json()["revision"] == 0
    demo_id = task.json()["id"]
    saved = a.put(f"/api/demonstrations/{demo_id}/draft/", {"revision": 0, "text": "Draft"}, format="json")
    assert saved.status_code == 200 and saved.json()["revision"] == 1
    stale = a.put(f"/api/demonstrations/{demo_id}/draft/", {"revision": 0, "text": "Other"}, format="json")
    assert stale.status_code == 409 and stale.json()["draft"] == {"revision": 1, "text": "Draft"}
    bad = a.put(f"/api/demonstrations/{demo_id}/draft/", {"revision": 1, "text": "x", "started_from": "B"},
                format="json")
    assert bad.status_code == 400 and "started_from" in bad.json()
    assert api(bob).get(f"/api/demonstrations/{demo_id}/").status_code == 404
    assert a.post(f"/api/demonstrations/{demo_id}/submit/", {}, format="json").status_code == 400
    first = a.post(f"/api/demonstrations/{demo_id}/submit/", {"text": "Final."}, format="json")
    again = a.post(f"/api/demonstrations/{demo_id}/submit/", {"text": "Final."}, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    other = a.post("/api/demonstrations/next/", {}, format="json").json()["id"]
    assert a.post(f"/api/demonstrations/{other}/skip/", {"reason": "unclear"}, format="json").json()["status"] == "skipped"
    assert a.post("/api/demonstrations/next/", {}, format="json").status_code == 204
    assert a.post("/api/demonstrations/next/", {"project": "x"}, format="json").status_code == 400


def test_staff_review_list_and_import(project, alice, staff):
    a = api(alice)
    demo_id = a.post("/api/demonstrations/next/", {}, format="json").json()["id"]
    a.post(f"/api/demonstrations/{demo_id}/submit/", {"text": "Fine."}, format="json")
    assert a.post(f"/api/demonstrations/{demo_id}/review/", {"action": "accept"}, format="json").status_code == 403
    s = api(staff)
    listed = s.get(f"/api/projects/{project.pk}/demonstrations/").json()
    assert listed["count"] == 1 and listed["results"][0]["annotator"] == "alice"
    assert s.get(f"/api/projects/{project.pk}/demonstrations/?status=nope").status_code == 400
    no_note = s.post(f"/api/demonstrations/{demo_id}/review/", {"action": "reject"}, format="json")
    assert no_note.status_code == 400 and "note" in no_note.json()
    done = s.post(f"/api/demonstrations/{demo_id}/review/", {"action": "accept", "text": "Fine!"}, format="json")
    assert done.status_code == 200 and done.json()["status"] == "accepted" and done.json()["submitted_text"] == "Fine."

    url = f"/api/projects/{project.pk}/demonstrations/import/"
    raw = '{"records": [{"prompt": "p", "response": "r"}, {"prompt": "q", "response": "\\ud800"}]}'
    bad = s.post(url, raw, content_type="application/json")
    assert bad.status_code == 400  # refused at the boundary or by the importer, naming the record
    bad = s.post(url, {"records": [{"prompt": "p", "response": "r"}, {"prompt": "q"}]}, format="json")
    assert bad.status_code == 400 and any("record 2" in e and "response" in e for e in bad.json()["records"])
    assert Demonstration.objects.filter(source="imported").count() == 0
    ok = s.post(url, {"records": [{"prompt": "p", "response": "r"}], "needs_review": True}, format="json")
    assert ok.status_code == 201 and ok.json()["demonstrations"] == 1 and ok.json()["status"] == "submitted"
