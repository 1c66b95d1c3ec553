"""REST API: authentication (session and token), the task operations, staff listings, the schema."""

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate.models import Assignment, Draft, Ranking
from annotate.services.queue import lease_next_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(make_project, alice, bob):
    return make_project(prompts=2, per_prompt=1, members=[alice, bob])


def api_for(user=None, *, token=False) -> APIClient:
    client = APIClient()
    if user is not None:
        if token:
            client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
        else:
            client.force_authenticate(user)
    return client


@pytest.mark.parametrize("method, path", [
    ("post", "/api/tasks/next/"),
    ("get", "/api/tasks/1/"),
    ("get", "/api/tasks/1/draft/"),
    ("put", "/api/tasks/1/draft/"),
    ("post", "/api/tasks/1/submit/"),
    ("post", "/api/tasks/1/skip/"),
    ("get", "/api/projects/"),
    ("get", "/api/projects/1/prompts/"),
    ("get", "/api/rankings/"),
])
def test_anonymous_requests_are_refused_not_redirected(method, path):
    response = getattr(APIClient(), method)(path, {}, format="json")
    assert response.status_code in (401, 403)


def test_token_client_runs_the_whole_loop(project, alice):
    api = api_for(alice, token=True)
    task = api.post("/api/tasks/next/", {"project": project.pk}, format="json")
    assert task.status_code == 200
    body = task.json()
    ids = [r["id"] for r in body["responses"]]
    assert ids == body["display_order"] and [r["label"] for r in body["responses"]] == ["A", "B", "C", "D"]
    assert body["draft"] is None and body["project"]["name"] == project.name
    assert "harmful" in body["flags"]
    # resume
    assert api.post("/api/tasks/next/", {}, format="json").json()["id"] == body["id"]

    url = f"/api/tasks/{body['id']}/"
    saved = api.put(url + "draft/", {"revision": 0, "state": {"rationale": "half"}}, format="json")
    assert saved.status_code == 200 and saved.json()["revision"] == 1
    stale = api.put(url + "draft/", {"revision": 0, "state": {"rationale": "other"}}, format="json")
    assert stale.status_code == 409 and stale.json()["draft"]["state"]["rationale"] == "half"
    assert api.get(url + "draft/").json()["revision"] == 1
    assert api.get(url).json()["draft"]["state"]["rationale"] == "half"

    tiers = [[ids[2]], [ids[0], ids[3]], [ids[1]]]
    submit = {"tiers": tiers, "ratings": {str(ids[2]): 7}, "flags": {str(ids[1]): ["unhelpful"]}, "rationale": "C!"}
    first = api.post(url + "submit/", submit, format="json")
    assert first.status_code == 201
    retry = api.post(url + "submit/", submit, format="json")
    assert retry.status_code == 200 and retry.json()["id"] == first.json()["id"]
    assert Ranking.objects.count() == 1 and first.json()["tiers"] == tiers
    assert not Draft.objects.exists()

    second = api.post("/api/tasks/next/", {}, format="json").json()
    assert second["id"] != body["id"]
    skipped = api.post(f"/api/tasks/{second['id']}/skip/", {"reason": "unclear prompt"}, format="json")
    assert skipped.status_code == 200 and skipped.json()["state"] == "skipped"
    assert api.post("/api/tasks/next/", {}, format="json").status_code == 204


def test_submit_validation_is_a_400_naming_the_field(project, alice):
    lease = lease_next_task(annotator=alice, project=project)
    api = api_for(alice)
    bad = api.post(f"/api/tasks/{lease.pk}/submit/", {"tiers": [lease.display_order[:2]]}, format="json")
    assert bad.status_code == 400 and "missing" in bad.json()["tiers"][0]
    flags = api.post(f"/api/tasks/{lease.pk}/submit/",
                     {"tiers": [lease.display_order], "flags": {str(lease.display_order[0]): ["nope"]}}, format="json")
    assert flags.status_code == 400 and "unknown flag 'nope'" in flags.json()["flags"][0]
    missing = api.post(f"/api/tasks/{lease.pk}/submit/", {}, format="json")
    assert missing.status_code == 400 and "tiers" in missing.json()
    skip = api.post(f"/api/tasks/{lease.pk}/skip/", {"reason": ""}, format="json")
    assert skip.status_code == 400 and "reason" in skip.json()
    assert not Ranking.objects.exists()
    lease.refresh_from_db()
    assert lease.state == Assignment.State.LEASED


def test_another_annotators_task_is_404(project, alice, bob):
    lease = lease_next_task(annotator=alice, project=project)
    api = api_for(bob)
    for method, suffix, data in [("get", "", None), ("get", "draft/", None),
                                 ("put", "draft/", {"revision": 0, "state": {}}),
                                 ("post", "submit/", {"tiers": [lease.display_order]}),
                                 ("post", "skip/", {"reason": "x"})]:
        response = getattr(api, method)(f"/api/tasks/{lease.pk}/{suffix}", data, format="json")
        assert response.status_code == 404, (method, suffix)
    assert not Ranking.objects.exists()


def test_next_task_for_a_project_you_do_not_belong_to(make_project, alice, project):
    other = make_project("Other", prompts=1)
    response = api_for(alice).post("/api/tasks/next/", {"project": other.pk}, format="json")
    assert response.status_code == 400 and "project" in response.json()


def test_listings_are_for_staff(project, alice, staff):
    lease = lease_next_task(annotator=alice, project=project)
    api_for(alice).post(f"/api/tasks/{lease.pk}/submit/", {"tiers": [lease.display_order]}, format="json")
    annotator = api_for(alice)
    assert [p["name"] for p in annotator.get("/api/projects/").json()["results"]] == [project.name]
    assert annotator.get(f"/api/projects/{project.pk}/prompts/").status_code == 403
    assert annotator.get("/api/rankings/").status_code == 403

    admin = api_for(staff, token=True)
    prompts = admin.get(f"/api/projects/{project.pk}/prompts/").json()
    assert prompts["count"] == 2 and len(prompts["results"][0]["responses"]) == 4
    assert sorted(p["ranking_count"] for p in prompts["results"]) == [0, 1]
    rankings = admin.get("/api/rankings/", {"project": project.pk}).json()
    assert rankings["count"] == 1 and rankings["results"][0]["annotator"] == "alice"
    assert admin.get("/api/rankings/", {"annotator": "bob"}).json()["count"] == 0
    assert admin.get("/api/rankings/", {"project": "x"}).json()["count"] == 0
    progress = admin.get(f"/api/projects/{project.pk}/progress/").json()
    assert progress["rankings_done"] == 1 and progress["left"] == 1


def test_schema_lists_the_task_operations(client, staff):
    client.force_login(staff)
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    for path in ("/api/tasks/next/", "/api/tasks/{assignment_id}/draft/", "/api/tasks/{assignment_id}/submit/",
                 "/api/tasks/{assignment_id}/skip/", "/api/rankings/"):
        assert path in schema["paths"], path
