"""Annotator pages: login, permissions, the ranking page's content, htmx submit / skip / draft endpoints."""

import json

import pytest
from django.urls import reverse

from annotate.models import Assignment, Draft, Ranking
from annotate.services.queue import lease_next_task
from annotate.services.submission import submit_ranking

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def project(make_project, alice, bob):
    return make_project(prompts=3, per_prompt=2, members=[alice, bob], guidelines="# Rank well\n\nPrefer **kind** answers.")


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def lease(project, alice):
    return lease_next_task(annotator=alice, project=project)


def payload(assignment, **extra):
    return {"payload": json.dumps({"tiers": [[rid] for rid in reversed(assignment.display_order)], **extra})}


@pytest.mark.parametrize("name, kwargs", [
    ("annotate:home", {}),
    ("annotate:project", {"project_id": 1}),
    ("annotate:guidelines", {"project_id": 1}),
    ("annotate:rank", {"assignment_id": 1}),
    ("annotate:draft", {"assignment_id": 1}),
])
def test_pages_need_login(client, name, kwargs):
    url = reverse(name, kwargs=kwargs)
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_submit_needs_login(client, lease):
    response = client.post(reverse("annotate:submit", args=[lease.pk]), payload(lease))
    assert response.status_code == 302 and reverse("login") in response["Location"]
    assert not Ranking.objects.exists()


def test_home_lists_own_projects_with_progress_and_start(alice_client, project, make_project):
    make_project("Secret project", prompts=1)
    response = alice_client.get("/")
    html = response.content.decode()
    assert project.name in html and "Secret project" not in html
    assert reverse("annotate:start", args=[project.pk]) in html
    assert response.context["rows"][0]["progress"].rankings_needed == 6


def test_staff_see_every_project(client, staff, project, make_project):
    make_project("Other project", prompts=1)
    client.force_login(staff)
    html = client.get("/").content.decode()
    assert project.name in html and "Other project" in html
    page = client.get(reverse("annotate:project", args=[project.pk])).content.decode()
    assert "Join as an annotator" in page and "Edit project" in page


def test_non_members_get_404_on_a_project(client, carol, project):
    client.force_login(carol)
    assert client.get(reverse("annotate:project", args=[project.pk])).status_code == 404
    assert client.post(reverse("annotate:start", args=[project.pk])).status_code == 404


def test_start_leases_and_opens_the_ranking_page(alice_client, project, alice):
    response = alice_client.post(reverse("annotate:start", args=[project.pk]))
    assignment = Assignment.objects.get(annotator=alice)
    assert response.status_code == 302 and response["Location"] == reverse("annotate:rank", args=[assignment.pk])
    # Starting again resumes the same task.
    assert alice_client.post(reverse("annotate:start", args=[project.pk]))["Location"] == response["Location"]


def test_ranking_page_shows_the_prompt_and_escaped_responses_in_display_order(alice_client, make_project, new_prompt,
                                                                              alice):
    project = make_project(prompts=0, members=[alice], guidelines="<script>alert('g')</script>Be **brief**.")
    new_prompt(project, text="Write <b>bold</b> HTML", responses=[
        "<script>alert('x')</script>",
        "Line one\nLine two",
        "Code:\n```python\nif a < b:\n    print('<tag>')\n```\nDone.",
        "Plain " + "long " * 300,
    ])
    lease = lease_next_task(annotator=alice, project=project)
    response = alice_client.get(reverse("annotate:rank", args=[lease.pk]))
    html = response.content.decode()
    assert "<script>alert('x')</script>" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "Write &lt;b&gt;bold&lt;/b&gt; HTML" in html
    assert '<pre class="code"><code data-lang="python">if a &lt; b:\n    print(&#x27;&lt;tag&gt;&#x27;)</code></pre>' in html
    assert "Line one<br>\nLine two" in html  # Markdown (the default) keeps the model's line breaks
    assert "collapsible collapsed" in html and "Show the full response" in html
    # The guidelines dialog: Markdown rendered, the script removed.
    assert "<strong>brief</strong>" in html and "alert('g')" not in html
    # Cards in the stored display order, labelled A, B, C, D.
    positions = [html.index(f'data-response-id="{rid}"') for rid in lease.display_order]
    assert positions == sorted(positions)
    for label in "ABCD":
        assert f'<span class="visually-hidden">Response </span>{label}</h3>' in html
    # Every response starts not ranked yet (no tiers, no rank badges); the keys panel is one key ("?") away.
    assert html.count('data-drop="unplaced"') == 1 and '<li class="tier' not in html.split('data-tier-list', 1)[1].split(
        "</ol>", 1)[0].replace('<li class="tier-gap"', "")
    assert 'aria-keyshortcuts="?"' in html and "<details class=\"shortcuts\" data-shortcuts>" in html
    assert 'aria-live="polite"' in html


def test_ranking_page_restores_the_draft(alice_client, lease):
    a, b, c, d = lease.display_order
    Draft.objects.create(assignment=lease, revision=3, state={
        "tiers": [[d], [b, c], [a]], "ratings": {str(b): 6}, "flags": {str(a): ["harmful"]},
        "rationale": "D is the only polite one", "all_bad": True, "seconds_spent": 30,
    })
    html = alice_client.get(reverse("annotate:rank", args=[lease.pk])).content.decode()
    positions = [html.index(f'data-response-id="{rid}"') for rid in (d, b, c, a)]
    assert positions == sorted(positions)
    assert "D is the only polite one</textarea>" in html
    assert f'name="rating-{lease.pk}-{b}" value="6" data-rating checked' in html
    assert 'value="harmful" data-flag checked' in html
    assert "data-all-bad checked" in html
    config = json.loads(html.split('<script type="application/json">', 1)[1].split("</script>", 1)[0])
    assert config["revision"] == 3 and config["state"]["tiers"] == [[d], [b, c], [a]]


def test_another_annotators_assignment_is_404_everywhere(client, bob, lease):
    client.force_login(bob)
    assert client.get(reverse("annotate:rank", args=[lease.pk])).status_code == 404
    assert client.get(reverse("annotate:draft", args=[lease.pk])).status_code == 404
    draft = client.post(reverse("annotate:draft", args=[lease.pk]), data=json.dumps({"revision": 0, "state": {}}),
                        content_type="application/json")
    assert draft.status_code == 404
    assert client.post(reverse("annotate:submit", args=[lease.pk]), payload(lease), **HTMX).status_code == 404
    assert client.post(reverse("annotate:skip", args=[lease.pk]), {"reason_choice": "unclear_prompt"}).status_code == 404
    assert not Ranking.objects.exists() and not Draft.objects.exists()
    lease.refresh_from_db()
    assert lease.state == Assignment.State.LEASED


def test_blind_no_one_sees_anothers_ranking(client, make_project, alice, bob):
    project = make_project("Blind", prompts=1, per_prompt=2, members=[alice, bob])
    alice_lease = lease_next_task(annotator=alice, project=project)
    submit_ranking(annotator=alice, assignment_id=alice_lease.pk, tiers=[alice_lease.display_order],
                   rationale="ALICE-SECRET-RATIONALE")
    bob_lease = lease_next_task(annotator=bob, project=project)
    assert bob_lease.prompt_id == alice_lease.prompt_id  # the same prompt, needing a second ranking
    client.force_login(bob)
    html = client.get(reverse("annotate:rank", args=[bob_lease.pk])).content.decode()
    assert "ALICE-SECRET-RATIONALE" not in html
    config = json.loads(html.split('<script type="application/json">', 1)[1].split("</script>", 1)[0])
    assert config["state"]["tiers"] == []  # nothing placed: every response starts unranked
    assert config["revision"] == 0


def test_htmx_submit_swaps_in_the_next_task_and_updates_progress(alice_client, lease, alice):
    response = alice_client.post(reverse("annotate:submit", args=[lease.pk]), payload(lease), **HTMX)
    assert response.status_code == 200
    ranking = Ranking.objects.get()
    assert ranking.tiers == [[rid] for rid in reversed(lease.display_order)]
    nxt = Assignment.objects.get(annotator=alice, state=Assignment.State.LEASED)
    assert nxt.pk != lease.pk
    assert response["HX-Push-Url"] == reverse("annotate:rank", args=[nxt.pk])
    html = response.content.decode()
    assert "data-rank-task" in html and f'data-assignment="{nxt.pk}"' in html
    assert 'id="task-progress" class="task-progress" hx-swap-oob="true"' in html
    assert '<strong data-stat="today">1</strong> done today' in html
    assert '<strong data-stat="left">5</strong> still needed (all annotators)' in html
    assert 'data-flash="Ranking submitted."' in html


def test_double_submit_makes_one_ranking(alice_client, lease):
    first = alice_client.post(reverse("annotate:submit", args=[lease.pk]), payload(lease), **HTMX)
    second = alice_client.post(reverse("annotate:submit", args=[lease.pk]), payload(lease), **HTMX)
    assert first.status_code == second.status_code == 200
    assert Ranking.objects.count() == 1
    assert 'data-flash="This ranking was already submitted."' in second.content.decode()


def test_invalid_submit_is_a_400_fragment_and_writes_nothing(alice_client, lease):
    bad = {"payload": json.dumps({"tiers": [[lease.display_order[0]]], "ratings": {str(lease.display_order[0]): 9}})}
    response = alice_client.post(reverse("annotate:submit", args=[lease.pk]), bad, **HTMX)
    assert response.status_code == 400
    assert response["HX-Retarget"] == f"#submit-status-{lease.pk}"
    html = response.content.decode()
    assert "every response shown must be ranked" in html and "from 1 to 7" in html
    assert not Ranking.objects.exists()
    garbled = alice_client.post(reverse("annotate:submit", args=[lease.pk]), {"payload": "{nope"}, **HTMX)
    assert garbled.status_code == 400 and "could not be read" in garbled.content.decode()


def test_last_task_submitted_shows_done(client, make_project, alice):
    project = make_project(prompts=1, members=[alice])
    lease = lease_next_task(annotator=alice, project=project)
    client.force_login(alice)
    response = client.post(reverse("annotate:submit", args=[lease.pk]), payload(lease), **HTMX)
    assert response.status_code == 200 and "Nothing left for you" in response.content.decode()
    assert response["HX-Push-Url"] == reverse("annotate:project", args=[project.pk])


def test_non_htmx_submit_redirects(alice_client, lease, alice):
    response = alice_client.post(reverse("annotate:submit", args=[lease.pk]), payload(lease))
    nxt = Assignment.objects.get(annotator=alice, state=Assignment.State.LEASED)
    assert response.status_code == 302 and response["Location"] == reverse("annotate:rank", args=[nxt.pk])


def test_skip_with_reason(alice_client, lease):
    response = alice_client.post(reverse("annotate:skip", args=[lease.pk]),
                                 {"reason_choice": "no_expertise", "reason_text": "medical"}, **HTMX)
    assert response.status_code == 200
    lease.refresh_from_db()
    assert lease.state == Assignment.State.SKIPPED
    assert lease.skip_reason == "I can't judge this (needs expertise I don't have): medical"


def test_skip_other_needs_details(alice_client, lease):
    response = alice_client.post(reverse("annotate:skip", args=[lease.pk]), {"reason_choice": "other"}, **HTMX)
    assert response.status_code == 400 and "Say why" in response.content.decode()
    assert response["HX-Retarget"] == f"#skip-status-{lease.pk}"
    lease.refresh_from_db()
    assert lease.state == Assignment.State.LEASED


def test_draft_endpoint_saves_restores_and_detects_stale_revisions(alice_client, lease):
    url = reverse("annotate:draft", args=[lease.pk])
    assert alice_client.get(url).json() == {"revision": 0, "state": None, "updated_at": None}
    state = {"tiers": [[rid] for rid in lease.display_order], "rationale": "hmm"}
    saved = alice_client.post(url, json.dumps({"revision": 0, "state": state}), content_type="application/json")
    assert saved.status_code == 200 and saved.json()["revision"] == 1 and saved.json()["lease_live"] is True
    assert alice_client.get(url).json()["state"]["rationale"] == "hmm"
    stale = alice_client.post(url, json.dumps({"revision": 0, "state": {"rationale": "other device"}}),
                              content_type="application/json")
    assert stale.status_code == 409 and stale.json()["code"] == "stale_draft"
    assert stale.json()["draft"]["state"]["rationale"] == "hmm"
    bad = alice_client.post(url, json.dumps({"revision": 1, "state": {"ratings": {"x": 1}}}),
                            content_type="application/json")
    assert bad.status_code == 400 and "ratings" in bad.json()["errors"]
    junk = alice_client.post(url, "not json", content_type="application/json")
    assert junk.status_code == 400


def test_draft_needs_the_csrf_token(client, alice, lease):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    response = strict.post(reverse("annotate:draft", args=[lease.pk]), json.dumps({"revision": 0, "state": {}}),
                           content_type="application/json")
    assert response.status_code == 403


def test_project_page_guards_the_upload_link(client, staff, project):
    client.force_login(staff)
    response = client.get(reverse("annotate:project", args=[project.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    try:
        upload = reverse("annotate_data:import_upload", kwargs={"project_id": project.pk})
    except Exception:
        assert "Upload prompts" not in html
    else:
        assert upload in html


def test_guidelines_page_is_sanitised_markdown(alice_client, project):
    project.guidelines = "## Tone\n\n<img src=x onerror=alert(1)> [link](javascript:alert(2)) *ok*"
    project.save()
    html = alice_client.get(reverse("annotate:guidelines", args=[project.pk])).content.decode()
    assert "<h2>Tone</h2>" in html and "<em>ok</em>" in html
    assert "onerror" not in html and "javascript:" not in html
