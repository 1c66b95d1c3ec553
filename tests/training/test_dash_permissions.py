"""Every dashboard URL and every training API endpoint is staff only: annotators get 403, anonymous users go to
the login page (the API answers 401/403 itself)."""

from __future__ import annotations

import pytest
from django.urls import URLPattern, get_resolver, reverse

import training.api_urls
import training.urls

pytestmark = pytest.mark.django_db

ARGS = {"run_id": 1, "job_id": 1, "project_id": 1, "relative": "config.json", "kind": "rm"}


def _url_for(pattern: URLPattern, namespace: str = "") -> str:
    kwargs = {name: ARGS[name] for name in pattern.pattern.regex.groupindex}
    return reverse(f"{namespace}{pattern.name}", kwargs=kwargs)


DASHBOARD_URLS = [_url_for(p, "training:") for p in training.urls.urlpatterns]
API_URLS = [_url_for(p) for p in training.api_urls.urlpatterns]


def test_the_walk_covers_every_url_name():
    assert len(DASHBOARD_URLS) == len(training.urls.urlpatterns) >= 15
    assert all(url.startswith("/dashboard/") for url in DASHBOARD_URLS)
    assert len(API_URLS) == len(training.api_urls.urlpatterns) >= 10
    # The dashboard is mounted once, under its namespace.
    assert "training" in get_resolver().namespace_dict


@pytest.mark.parametrize("url", DASHBOARD_URLS)
def test_annotators_get_403_on_every_dashboard_url(client, annotator, world, url):
    client.force_login(annotator)
    assert client.get(url).status_code == 403
    assert client.post(url).status_code == 403


@pytest.mark.parametrize("url", DASHBOARD_URLS)
def test_anonymous_users_are_sent_to_log_in(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("url", API_URLS)
def test_annotators_get_403_on_every_training_api_endpoint(client, annotator, world, url):
    client.force_login(annotator)
    assert client.get(url).status_code in (403, 405)  # 405 only for POST-only endpoints…
    response = client.post(url, data={}, content_type="application/json")
    assert response.status_code in (403, 405)
    assert 403 in (client.get(url).status_code, response.status_code)  # …which refuse the POST with 403


@pytest.mark.parametrize("url", API_URLS)
def test_anonymous_api_requests_are_refused(client, url):
    assert client.get(url).status_code in (401, 403, 405)
    assert client.post(url, data={}, content_type="application/json").status_code in (401, 403, 405)


def test_a_token_annotator_cannot_launch(client, annotator, world):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=annotator)
    response = client.post("/api/runs/rm/", data={}, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Token {token.key}")
    assert response.status_code == 403


def test_staff_can_open_every_dashboard_page(staff_client, world):
    """Every GET page renders for staff (with ids that exist)."""
    rm, ppo, project = world["rm"], world["ppo"], world["project"]
    args = {"run_id": ppo.pk, "job_id": None, "project_id": project.pk, "relative": "config.json", "kind": "ppo"}
    from training import jobs

    job = jobs.launch_rm_check(project=project, rm_run=rm)
    args["job_id"] = job.pk
    for pattern in training.urls.urlpatterns:
        kwargs = {name: args[name] for name in pattern.pattern.regex.groupindex}
        if pattern.name == "run_file":
            kwargs["run_id"] = rm.pk
        if pattern.name in ("run_cancel", "run_resume", "project_rm_check"):
            continue  # POST only
        if pattern.name == "run_log":
            continue  # no log file in this world (404 tested elsewhere)
        url = reverse(f"training:{pattern.name}", kwargs=kwargs)
        response = staff_client.get(url)
        expected = 286 if pattern.name == "run_live" else 200  # the PPO run has ended: stop polling
        assert response.status_code == expected, (url, response.status_code)
