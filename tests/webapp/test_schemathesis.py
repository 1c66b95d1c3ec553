"""Schemathesis against the app's own OpenAPI schema (drf-spectacular), over WSGI (no server), with an
annotator's and a staff token and a database holding real tasks, so every operation is reached with ids that
exist: no 5xx from any generated request, and every response conforms to the schema (body and content type).

Bounded: SCHEMATHESIS_EXAMPLES examples per operation (default 12), schema-valid and schema-violating
(negative) requests mixed; hypothesis' example database is off, so a run depends only on the code.
Status codes are not checked against the documented list: the API answers documented errors (400 naming the
field, 404 for other people's tasks, 409 for state conflicts, 413 for size) that the schema does not list per
operation.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import override_settings
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from annotate.models import Project, Prompt, Response
from annotate.services.queue import lease_next_task
from annotate.services.submission import submit_ranking

pytestmark = pytest.mark.django_db

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "12"))
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
# Operations that start background work or write files: exercised by their own tests.
SKIP = {("POST", "/api/data/projects/{project_id}/snapshots/"), ("POST", "/api/auth/token/")}


@pytest.fixture
def world(django_user_model):
    """Two projects with prompts, responses, a live lease, a draft and a submitted ranking; two users."""
    annotator = django_user_model.objects.create_user("ann", password="pw-ann-1")
    staff = django_user_model.objects.create_user("boss", password="pw-boss-1", is_staff=True, is_superuser=True)
    for name in ("Alpha", "Beta"):
        project = Project.objects.create(name=name, annotators_per_prompt=1)
        project.annotators.add(annotator, staff)
        for i in range(4):
            prompt = Prompt.objects.create(project=project, text=f"{name} prompt {i}", metadata={"i": i})
            for k in range(4):
                Response.objects.create(prompt=prompt, text=f"answer {k} to {name} {i}")
    first = lease_next_task(annotator=annotator, project=Project.objects.get(name="Alpha"))
    submit_ranking(annotator=annotator, assignment_id=first.pk, tiers=[[r] for r in first.display_order])
    lease_next_task(annotator=annotator, project=Project.objects.get(name="Alpha"))
    lease_next_task(annotator=staff, project=Project.objects.get(name="Beta"))
    return {"annotator": annotator, "staff": staff}


def real_ids() -> dict[str, list[int]]:
    """Path parameters drawn from the rows that exist (one id that does not, too), so the operations are
    reached beyond their 404."""
    from annotate.models import Assignment

    return {
        "assignment_id": [*Assignment.objects.values_list("pk", flat=True), 10**9],
        "project_id": [*Project.objects.values_list("pk", flat=True), 10**9],
    }


@pytest.fixture
def keep_connection():
    """Calling the WSGI handler directly fires request_started/finished, whose close_old_connections would close
    the test's connection (it is inside the test transaction: not autocommit) — on PostgreSQL every later query
    then fails. Django's own test client disconnects it the same way."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def load_schema():
    spec = SchemaGenerator().get_schema(request=None, public=True)
    ids = real_ids()
    for operations in spec["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if parameter.get("in") == "path" and parameter["name"] in ids:
                    parameter["schema"] = {"type": "integer", "enum": ids[parameter["name"]]}
    schema = schemathesis.openapi.from_dict(spec)
    schema.app = WSGIHandler()
    return schema


@pytest.mark.slow
@pytest.mark.parametrize("who", ["annotator", "staff"])
def test_api_matches_its_schema_and_never_fails(world, who, settings, tmp_path, keep_connection):
    # launches that get through write under these roots: keep them out of var/
    settings.WORKBENCH_RUNS_ROOT = tmp_path / "runs"
    settings.WORKBENCH_DATA_ROOT = tmp_path / "data"
    user = world[who]
    headers = {"Authorization": f"Token {Token.objects.get_or_create(user=user)[0].key}"}
    schema = load_schema()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, "the schema lists the API"
    failures: list[str] = []
    tried = 0
    for operation in operations:
        if (operation.method.upper(), operation.path) in SKIP:
            continue
        tried += 1

        @hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=st.one_of(operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
                              operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)))
        def run(case):
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            with override_settings(ALLOWED_HOSTS=["*"]):
                run()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:1500]}")
    assert tried >= 10
    assert not failures, "\n\n".join(failures)
