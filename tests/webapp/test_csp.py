"""Content-Security-Policy: every page type sends it, and no page needs what it forbids (inline scripts, event
handler attributes, inline styles, <style> blocks, javascript: URLs, htmx's eval). The browser test
(tests/browser/test_csp_browser.py) checks the same from Chromium's side: zero violations reported."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.urls import reverse
from django.utils import timezone

from annotate.models import Project, Prompt, Response
from annotate.services.queue import lease_next_task
from training.models import Job, Metric, Sample, TrainingRun

pytestmark = pytest.mark.django_db


def policy(response) -> dict[str, list[str]]:
    header = response.headers.get("Content-Security-Policy")
    assert header, f"no Content-Security-Policy on {response.request['PATH_INFO']}"
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


class InlineFinder(HTMLParser):
    """What a strict CSP would block in a page: executable inline scripts, on* handlers, style attributes,
    <style> elements, javascript: URLs, and hx-vals/hx-on that htmx could only evaluate with eval."""

    def __init__(self):
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs_d = dict(attrs)
        if tag == "script":
            kind = (attrs_d.get("type") or "text/javascript").lower()
            executable = kind in ("text/javascript", "module", "application/javascript")
            if executable and not attrs_d.get("src"):
                self.problems.append(f"inline <script> at {self.getpos()}")
        if tag == "style":
            self.problems.append(f"<style> element at {self.getpos()}")
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"{name}= handler on <{tag}> at {self.getpos()}")
            if name == "style":
                self.problems.append(f"style= attribute on <{tag}> at {self.getpos()}")
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                self.problems.append(f"javascript: URL on <{tag}> at {self.getpos()}")
            if name.startswith("hx-on") or (name == "hx-vals" and (value or "").lstrip().startswith("js:")):
                self.problems.append(f"{name} (needs eval) on <{tag}> at {self.getpos()}")


def inline_problems(html: str) -> list[str]:
    finder = InlineFinder()
    finder.feed(html)
    return finder.problems


def test_the_finder_finds_what_it_must():
    page = ('<p style="width: 3%">x</p><button onclick="go()">b</button><script>alert(1)</script>'
            '<script type="application/json">{}</script><script src="/s.js"></script><style>p{}</style>'
            '<a href="javascript:void(0)">a</a><div hx-vals=\'js:{a: 1}\'></div>')
    found = inline_problems(page)
    assert len(found) == 6, found
    assert not inline_problems('<script type="application/json" id="d">{"a": 1}</script><p class="x">ok</p>')


@pytest.fixture
def world(django_user_model, tmp_path):
    staff = django_user_model.objects.create_user("csp-staff", password="pw", is_staff=True, is_superuser=True)
    annotator = django_user_model.objects.create_user("csp-annotator", password="pw")
    project = Project.objects.create(name="CSP", k_min=4, k_max=4, guidelines="# Rank **well**")
    project.annotators.add(annotator, staff)
    for i in range(3):
        prompt = Prompt.objects.create(project=project, text=f"Prompt {i}")
        for j in range(4):
            Response.objects.create(prompt=prompt, text=f"Answer {j} to {i}")
    assignment = lease_next_task(annotator=annotator, project=project)
    run = TrainingRun.objects.create(kind="rm", status="running", project=project, started_at=timezone.now(),
                                     output_dir=str(tmp_path))
    Metric.objects.bulk_create([Metric(run=run, step=s, name="loss", value=1.0 / (s + 1)) for s in range(5)])
    ppo = TrainingRun.objects.create(kind="ppo", status="succeeded", project=project)
    Sample.objects.create(run=ppo, step=1, prompt="p", response="r", reward=0.5)
    job = Job.objects.create(kind=Job.Kind.choices[0][0], project=project)
    return {"staff": staff, "annotator": annotator, "project": project, "assignment": assignment, "run": run,
            "ppo": ppo, "job": job}


def annotator_pages(world):
    p, a = world["project"].pk, world["assignment"].pk
    return [reverse("annotate:home"), reverse("annotate:project", args=[p]), reverse("annotate:guidelines", args=[p]),
            reverse("annotate:rank", args=[a])]


def staff_pages(world):
    p, run, ppo = world["project"].pk, world["run"].pk, world["ppo"].pk
    return [
        reverse("training:run_list"), reverse("training:run_detail", args=[run]),
        reverse("training:run_detail", args=[ppo]), reverse("training:run_live", args=[run]),
        reverse("training:run_samples", args=[ppo]), reverse("training:compare") + f"?runs={run}&runs={ppo}",
        reverse("training:launch_rm"), reverse("training:launch_ppo"), reverse("training:new_round"),
        reverse("training:job_detail", args=[world["job"].pk]), reverse("training:project_list"),
        reverse("training:project_stats", args=[p]), reverse("annotate_data:import_upload", args=[p]),
        reverse("annotate_data:export", args=[p]),
    ]


def assert_strict(directives):
    for name in ("script-src", "style-src"):
        assert directives[name] == ["'self'"], (name, directives[name])
    assert directives["default-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"] and directives["frame-ancestors"] == ["'none'"]
    assert all("'unsafe-eval'" not in values for values in directives.values())


def test_every_page_type_sends_a_strict_policy_it_satisfies(client, world):
    checked = 0
    login = client.get(reverse("login"))
    assert_strict(policy(login))
    assert inline_problems(login.content.decode()) == []
    client.force_login(world["annotator"])
    for url in annotator_pages(world):
        response = client.get(url)
        assert response.status_code == 200, url
        assert_strict(policy(response))
        assert inline_problems(response.content.decode()) == [], url
        checked += 1
    client.force_login(world["staff"])
    for url in staff_pages(world):
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        assert_strict(policy(response))
        assert inline_problems(response.content.decode()) == [], url
        checked += 1
    assert checked == len(annotator_pages(world)) + len(staff_pages(world))


def test_json_api_error_and_admin_responses_carry_the_policy_too(client, world):
    client.force_login(world["staff"])
    for url in (reverse("api-projects"), "/api/schema/", reverse("admin:index"), "/no-such-page/"):
        response = client.get(url)
        assert response.status_code in (200, 404), url
        assert_strict(policy(response))


def test_the_admin_and_the_browsable_api_satisfy_it_too(client, world):
    client.force_login(world["staff"])
    project = world["project"].pk
    for url in (reverse("admin:index"), reverse("admin:annotate_project_changelist"),
                reverse("admin:annotate_project_change", args=[project]), reverse("api-projects") + "?format=api"):
        response = client.get(url, HTTP_ACCEPT="text/html")
        assert response.status_code == 200, url
        assert inline_problems(response.content.decode()) == [], url


def test_the_api_docs_page_relaxes_the_policy_for_its_cdn_only(client, world):
    client.force_login(world["staff"])
    page = client.get(reverse("api-docs"))
    assert page.status_code == 200
    directives = policy(page)
    assert "https://cdn.jsdelivr.net" in directives["script-src"] and "'unsafe-inline'" not in directives["script-src"]
    # The Swagger UI init script is a separate file (the split view), not inline.
    assert "<script>" not in page.content.decode().replace(" ", "")
    script = client.get(reverse("api-docs") + "?script=")
    assert script.status_code == 200 and b"SwaggerUIBundle" in script.content


def test_htmx_runs_without_eval_and_without_injected_styles(client, world):
    client.force_login(world["annotator"])
    html = client.get(reverse("annotate:home")).content.decode()
    assert '"allowEval": false' in html and '"includeIndicatorStyles": false' in html
