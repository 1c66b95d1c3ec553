# ruff: noqa: UP031 - JSON texts are built with % so that their braces stay readable
"""Hostile input (issue 13): every door refuses invalid Unicode, deep nesting, unstorable numbers and oversize
bodies with a 4xx naming the field, line or limit, and stores nothing; data stored before these checks never
turns a page into a 500. The first half reproduces the reported bugs; the second drives the services and the
endpoints with generated hostile values (hypothesis): never a 5xx, never a partial write, a valid retry after.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from urllib.parse import urlencode

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from annotate.models import Assignment, Draft, Project, Prompt, Ranking
from annotate.services.drafts import save_draft
from annotate.services.errors import TaskConflict, TaskNotFound
from annotate.services.importing import ImportFailed, api_records, import_records
from annotate.services.queue import lease_next_task
from annotate.services.submission import skip_task, submit_ranking
from webapp.boundary import BoundaryError, check_value, parse_json, scrub

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
LONE = "half an emoji \\ud83d"  # as it travels inside a JSON text: the escape of a lone high surrogate


def deep(n: int, inner: str = "1") -> str:
    """The JSON text of n nested lists (json.dumps itself would recurse)."""
    return "[" * n + inner + "]" * n


@pytest.fixture
def project(make_project, alice, bob):
    return make_project(prompts=3, per_prompt=1, members=[alice, bob])


@pytest.fixture
def lease(project, alice):
    return lease_next_task(annotator=alice, project=project)


@pytest.fixture
def api(alice):
    client = APIClient()
    client.force_authenticate(alice)
    return client


@pytest.fixture
def staff_api(staff):
    client = APIClient()
    client.force_authenticate(staff)
    return client


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def raw(client, method: str, url: str, body: str | bytes, **extra):
    return getattr(client, method)(url, data=body, content_type="application/json", **extra)


def sqlite_only():
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL refuses to store lone surrogates at all; SQLite's JSON text kept them")


# --- the checks themselves (known answers) -------------------------------------------------------------------


@pytest.mark.parametrize("text, field, words", [
    ('{"state": {"rationale": "a \\ud83d"}}', "state.rationale", "lone surrogate (U+D83D) at character 3"),
    ('{"tiers": [[1, "\\u0000"]]}', "tiers[0][1]", "NUL character"),
    ('{"a\\udfff": 1}', "<key>", "lone surrogate"),
    ('{"n": 1e999}', "n", "not a finite number"),
    ('{"n": NaN}', "body", "not valid JSON"),
    ('{"n": 99999999999999999999}', "n", "out of range"),
    (deep(50_000), "body", "nested more than"),
    (deep(40), "[0]", "nested more than 32"),
    ('{"x": "ok"', "body", "not valid JSON"),
])
def test_parse_json_names_the_field_and_the_limit(text, field, words):
    with pytest.raises(BoundaryError) as caught:
        parse_json(text)
    assert caught.value.field.endswith(field) and words in caught.value.message


def test_parse_json_takes_what_is_valid():
    assert parse_json('{"tiers": [[1], [2, 3]], "emoji": "\\ud83d\\ude00", "n": -5}') == {
        "tiers": [[1], [2, 3]], "emoji": "\U0001f600", "n": -5}
    assert parse_json(deep(31)) is not None
    with pytest.raises(BoundaryError) as caught:
        parse_json(b"\xff\xfe{}")
    assert "UTF-8" in caught.value.message
    with pytest.raises(BoundaryError) as caught:
        parse_json(b"[" + b" " * 100 + b"]", max_bytes=50)
    assert caught.value.status == 413 and "the limit is 50 bytes" in caught.value.message


def test_scrub_replaces_lone_surrogates_only():
    value = {"k\ud800": ["x\udfff", {"y": "\U0001f600"}], "n": 3}
    assert scrub(value) == {"k\ufffd": ["x\ufffd", {"y": "\U0001f600"}], "n": 3}
    check_value(scrub(value))  # the scrubbed copy passes the boundary


# --- issue 13 item 1: a lone surrogate in a draft, a submit, a skip ----------------------------------------


def test_api_draft_with_a_lone_surrogate_is_a_400_and_stores_nothing(api, lease):
    body = '{"revision": 0, "state": {"rationale": "%s"}}' % LONE
    response = raw(api, "put", f"/api/tasks/{lease.pk}/draft/", body)
    assert response.status_code == 400
    assert "lone surrogate" in response.json()["state.rationale"][0]
    assert not Draft.objects.exists()
    # and the task still works afterwards
    assert api.get(f"/api/tasks/{lease.pk}/").status_code == 200
    assert api.put(f"/api/tasks/{lease.pk}/draft/", {"revision": 0, "state": {"rationale": "ok"}},
                   format="json").status_code == 200


def test_web_draft_with_a_lone_surrogate_is_a_400_and_stores_nothing(alice_client, lease):
    body = '{"revision": 0, "state": {"rationale": "%s"}}' % LONE
    response = raw(alice_client, "post", reverse("annotate:draft", args=[lease.pk]), body)
    assert response.status_code == 400 and "lone surrogate" in response.json()["errors"]["state.rationale"][0]
    assert not Draft.objects.exists()


def test_submit_and_skip_with_a_lone_surrogate_are_400(api, alice_client, lease):
    tiers = json.dumps([[rid] for rid in lease.display_order])
    for url in (f"/api/tasks/{lease.pk}/submit/",):
        response = raw(api, "post", url, '{"tiers": %s, "rationale": "\\ud800"}' % tiers)
        assert response.status_code == 400 and "rationale" in response.json()
    response = raw(api, "post", f"/api/tasks/{lease.pk}/skip/", '{"reason": "\\ud800"}')
    assert response.status_code == 400 and "reason" in response.json()
    web = alice_client.post(reverse("annotate:submit", args=[lease.pk]),
                            {"payload": '{"tiers": %s, "rationale": "\\ud800"}' % tiers}, **HTMX)
    assert web.status_code == 400 and "lone surrogate" in web.content.decode()
    assert not Ranking.objects.exists()
    lease.refresh_from_db()
    assert lease.state == Assignment.State.LEASED


def test_a_stored_lone_surrogate_never_locks_the_annotator_out(api, alice_client, lease):
    sqlite_only()
    Draft.objects.create(assignment=lease, revision=3, state={"rationale": "half an emoji \ud83d"})
    assert alice_client.get(reverse("annotate:rank", args=[lease.pk])).status_code == 200
    assert "half an emoji \ufffd" in alice_client.get(reverse("annotate:rank", args=[lease.pk])).content.decode()
    for response in (api.get(f"/api/tasks/{lease.pk}/"), api.get(f"/api/tasks/{lease.pk}/draft/"),
                     api.post("/api/tasks/next/", {}, format="json"),
                     alice_client.get(reverse("annotate:draft", args=[lease.pk]))):
        assert response.status_code == 200
        assert "\ufffd" in json.dumps(response.json(), ensure_ascii=False)
    # the annotator gets past it: the next autosave (now valid text) and the submit work
    saved = api.put(f"/api/tasks/{lease.pk}/draft/", {"revision": 3, "state": {"rationale": "half an emoji \ufffd"}},
                    format="json")
    assert saved.status_code == 200
    assert api.post(f"/api/tasks/{lease.pk}/submit/", {"tiers": [lease.display_order]},
                    format="json").status_code == 201


# --- item 2: lone surrogates in imports and stored metadata ---------------------------------------------------


def test_import_command_names_the_line_and_field_of_a_lone_surrogate(tmp_path, project):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": "bad \\ud800 surrogate"}\n')
    with pytest.raises(CommandError) as caught:
        call_command("import_prompts", str(path), "--project", project.name, "--no-progress", stdout=io.StringIO())
    assert "bad.jsonl line 2, field 'prompt'" in str(caught.value) and "lone surrogate" in str(caught.value)
    path.write_text('{"prompt": "fine", "metadata": {"note": "\\udfff"}}\n')
    with pytest.raises(CommandError) as caught:
        call_command("import_prompts", str(path), "--project", project.name, "--no-progress", stdout=io.StringIO())
    assert "line 1, field 'metadata.note'" in str(caught.value)
    assert Prompt.objects.filter(project=project).count() == 3


def test_web_upload_and_api_import_refuse_lone_surrogates(client, staff, staff_api, project):
    client.force_login(staff)
    upload = io.BytesIO(b'{"prompt": "bad \\ud800 surrogate"}\n')
    upload.name = "bad.jsonl"
    response = client.post(reverse("annotate_data:import_upload", args=[project.pk]), {"file": upload})
    assert response.status_code == 400 and "bad.jsonl line 1, field &#x27;prompt&#x27;" in response.content.decode()
    body = '{"project": "%s", "records": [{"prompt": "bad \\ud800"}]}' % project.name
    api_response = raw(staff_api, "post", "/api/data/import/", body)
    assert api_response.status_code == 400 and "records[0].prompt" in api_response.json()
    assert Prompt.objects.filter(project=project).count() == 3


def test_stored_metadata_with_a_lone_surrogate_renders(client, staff, staff_api, project):
    sqlite_only()
    prompt = project.prompts.first()
    Prompt.objects.filter(pk=prompt.pk).update(metadata={"note": "bad \ud800"})
    listing = staff_api.get(f"/api/projects/{project.pk}/prompts/")
    assert listing.status_code == 200 and "bad \ufffd" in listing.content.decode()
    staff.is_superuser = True
    staff.save()
    client.force_login(staff)
    admin = client.get(reverse("admin:annotate_prompt_change", args=[prompt.pk]))
    assert admin.status_code == 200


def test_stored_metadata_with_a_lone_surrogate_exports(project, alice, lease, tmp_path):
    """The PPO launch exports the project's prompts: stored lone surrogates come out as U+FFFD, not a crash."""
    sqlite_only()
    from annotate.services.exporting import export_prompts, export_snapshot

    Prompt.objects.filter(project=project).update(metadata={"note": "bad \ud800"})
    submit_ranking(annotator=alice, assignment_id=lease.pk, tiers=valid_tiers(lease))
    path, count = export_prompts(project=project, path=tmp_path / "prompts.jsonl")
    assert count == 3 and "bad \ufffd" in path.read_text(encoding="utf-8")
    snapshot = export_snapshot(project=project, out_dir=tmp_path / "snap", format="jsonl", test_fraction=0)
    assert "bad \ufffd" in (tmp_path / "snap" / "kwise" / "train.jsonl").read_text(encoding="utf-8")
    assert snapshot.counts["kwise"]["train"] == 1


# --- item 3: deep nesting --------------------------------------------------------------------------------------


def test_deep_nesting_is_a_400_everywhere(api, staff_api, client, staff, alice_client, lease, project, tmp_path):
    body = '{"tiers": %s}' % deep(50_000)
    response = raw(api, "post", f"/api/tasks/{lease.pk}/submit/", body)
    assert response.status_code == 400 and "nested" in json.dumps(response.json())
    web = alice_client.post(reverse("annotate:submit", args=[lease.pk]), {"payload": body}, **HTMX)
    assert web.status_code == 400 and "nested" in web.content.decode()
    draft = raw(alice_client, "post", reverse("annotate:draft", args=[lease.pk]),
                '{"revision": 0, "state": {"tiers": %s}}' % deep(50_000))
    assert draft.status_code == 400
    imported = raw(staff_api, "post", "/api/data/import/",
                   '{"project": "x", "records": [{"prompt": "p", "metadata": {"a": %s}}]}' % deep(50_000))
    assert imported.status_code == 400
    path = tmp_path / "deep.jsonl"
    path.write_text('{"prompt": "p", "metadata": {"a": %s}}\n{"prompt": "q", "metadata": {"a": %s}}\n'
                    % (deep(50_000), deep(40)))
    with pytest.raises(CommandError) as caught:
        call_command("import_prompts", str(path), "--project", project.name, "--no-progress", stdout=io.StringIO())
    assert "deep.jsonl line 1" in str(caught.value) and "deep.jsonl line 2" in str(caught.value)
    client.force_login(staff)
    upload = io.BytesIO(path.read_bytes())
    upload.name = "deep.jsonl"
    page = client.post(reverse("annotate_data:import_upload", args=[project.pk]), {"file": upload})
    assert page.status_code == 400 and "deep.jsonl line 2" in page.content.decode()
    assert not Ranking.objects.exists() and Prompt.objects.count() == 3 and not Project.objects.filter(name="x")


# --- item 4: the limits agree ----------------------------------------------------------------------------------


def test_a_12_mb_import_body_reaches_the_import_and_a_big_prompt_is_refused_like_in_a_file(staff_api, settings):
    settings.WORKBENCH_MAX_IMPORT_RECORD_BYTES = 1000
    records = [{"prompt": f"prompt {i} " + "x" * 640} for i in range(20_000)]  # ~13 MB
    body = json.dumps({"project": "Big", "records": records})
    assert len(body) > 12 * 1024 * 1024
    response = raw(staff_api, "post", "/api/data/import/", body)
    assert response.status_code == 201, response.content[:300]
    big = raw(staff_api, "post", "/api/data/import/",
              json.dumps({"project": "Big2", "records": [{"prompt": "y" * 2000}]}))
    assert big.status_code == 400
    assert "record 1: the record is larger than the 1,000 byte limit" in big.json()["errors"][0]
    assert not Project.objects.filter(name="Big2").exists()


def test_body_limit_on_the_task_endpoints(api, lease, settings):
    settings.WORKBENCH_MAX_BODY_BYTES = 1000
    response = raw(api, "put", f"/api/tasks/{lease.pk}/draft/",
                   json.dumps({"revision": 0, "state": {"rationale": "x" * 2000}}))
    assert response.status_code == 413 and "WORKBENCH_MAX_BODY_BYTES" in json.dumps(response.json())


def test_csv_header_errors_say_what_is_wrong(client, staff, project):
    client.force_login(staff)
    upload = io.BytesIO(b"text,id\nhello,1\n")
    upload.name = "nohead.csv"
    response = client.post(reverse("annotate_data:import_upload", args=[project.pk]), {"file": upload})
    html = response.content.decode()
    assert response.status_code == 400 and "no &#x27;prompt&#x27; column" in html
    assert "0 of 0" not in html


# --- query strings and ids in the path -------------------------------------------------------------------------


def test_query_strings_with_nul_and_ids_out_of_range(staff_api, api, project):
    response = staff_api.get("/api/rankings/", {"annotator": "a\x00b"})
    assert response.status_code == 400 and "NUL" in response.json()["annotator"][0]
    assert staff_api.get("/api/rankings/", {"project": "9" * 30}).status_code == 200
    assert staff_api.get(f"/api/data/projects/{project.pk}/quality/", {"round": "9" * 30}).status_code == 400
    assert staff_api.get(f"/api/projects/{'9' * 25}/prompts/").status_code == 404
    assert api.get(f"/api/tasks/{'9' * 25}/").status_code == 404
    assert api.post("/api/tasks/next/", {"project": 10**20}, format="json").status_code == 400


# --- properties (hypothesis) -----------------------------------------------------------------------------------

HOSTILE_TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["\ud83d", "\ud800", "a\udfffb", "\x00", "nul\x00", "\U0001f600", "", " ", "x" * 6000]),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
)
HOSTILE_SCALAR = st.one_of(
    HOSTILE_TEXT, st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
HOSTILE_VALUE = st.recursive(
    HOSTILE_SCALAR,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(HOSTILE_TEXT, children, max_size=4)),
    max_leaves=12,
)
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)


def to_json_text(value) -> str:
    """JSON text of any generated value: lone surrogates travel as escapes, NaN/Infinity as the bare words some
    clients send."""
    return json.dumps(value, ensure_ascii=True, allow_nan=True)


def foreign_ids(lease: Assignment) -> st.SearchStrategy:
    other = list(
        Assignment.objects.exclude(pk=lease.pk).values_list("display_order", flat=True)
    ) or [[10**6]]
    return st.sampled_from([rid for order in other for rid in order] or [10**6])


def hostile_submission(lease: Assignment) -> st.SearchStrategy:
    own = st.sampled_from(lease.display_order)
    ids = st.one_of(own, foreign_ids(lease), HOSTILE_SCALAR)
    tiers = st.one_of(HOSTILE_VALUE, st.lists(st.lists(ids, max_size=5), max_size=5),
                      st.integers(5, 200).map(lambda n: {"deep": n}))
    return st.fixed_dictionaries(
        {"tiers": tiers},
        optional={"ratings": st.one_of(HOSTILE_VALUE, st.dictionaries(st.one_of(own.map(str), HOSTILE_TEXT),
                                                                      HOSTILE_SCALAR, max_size=3)),
                  "flags": HOSTILE_VALUE, "rationale": HOSTILE_VALUE, "all_bad": HOSTILE_VALUE,
                  "seconds_spent": HOSTILE_VALUE, "extra": HOSTILE_VALUE},
    )


def body_text(body: dict) -> str:
    """Some generated bodies ask for deep nesting: {"deep": n} becomes n nested lists."""
    tiers = body.get("tiers")
    if isinstance(tiers, dict) and set(tiers) == {"deep"} and isinstance(tiers["deep"], int):
        rest = to_json_text({k: v for k, v in body.items() if k != "tiers"})
        return '{"tiers": %s%s' % (deep(tiers["deep"]), ", " + rest[1:] if rest != "{}" else "}")
    return to_json_text(body)


def valid_tiers(lease: Assignment) -> list[list[int]]:
    return [[rid] for rid in lease.display_order]


def test_property_api_submit_never_5xx_never_partial(api, lease):
    seen = Counter()

    @PROPERTY
    @given(body=hostile_submission(lease))
    def hostile(body):
        response = raw(api, "post", f"/api/tasks/{lease.pk}/submit/", body_text(body))
        seen[response.status_code] += 1
        assert response.status_code < 500
        if response.status_code >= 400:
            assert not Ranking.objects.filter(assignment=lease).exists()
            lease.refresh_from_db()
            assert lease.state == Assignment.State.LEASED
        else:
            # a generated body that happens to be valid is a whole ranking: undo it for the next example
            Ranking.objects.filter(assignment=lease).delete()
            Assignment.objects.filter(pk=lease.pk).update(state=Assignment.State.LEASED, finished_at=None)

    hostile()
    assert seen[400] >= 10, seen  # the generator reached the checks
    assert raw(api, "post", f"/api/tasks/{lease.pk}/submit/",
               json.dumps({"tiers": valid_tiers(lease)})).status_code == 201


def test_property_web_submit_never_5xx_never_partial(alice_client, lease):
    @PROPERTY
    @given(body=hostile_submission(lease))
    def hostile(body):
        response = alice_client.post(reverse("annotate:submit", args=[lease.pk]), {"payload": body_text(body)},
                                     **HTMX)
        assert response.status_code < 500
        if response.status_code >= 400:
            assert not Ranking.objects.filter(assignment=lease).exists()
        else:
            Ranking.objects.filter(assignment=lease).delete()
            Assignment.objects.filter(pk=lease.pk).update(state=Assignment.State.LEASED, finished_at=None)

    hostile()
    ok = alice_client.post(reverse("annotate:submit", args=[lease.pk]),
                           {"payload": json.dumps({"tiers": valid_tiers(lease)})}, **HTMX)
    assert ok.status_code == 200 and Ranking.objects.filter(assignment=lease).count() == 1


def test_property_drafts_api_and_web(api, alice_client, lease):
    @PROPERTY
    @given(state=st.one_of(HOSTILE_VALUE, hostile_submission(lease)), revision=st.one_of(st.just(0), HOSTILE_SCALAR),
           web=st.booleans())
    def hostile(state, revision, web):
        before = list(Draft.objects.filter(assignment=lease).values_list("revision", "state"))
        text = body_text({"revision": revision, "state": state}) if not isinstance(state, dict) else \
            '{"revision": %s, "state": %s}' % (to_json_text(revision), body_text(state))
        if web:
            response = raw(alice_client, "post", reverse("annotate:draft", args=[lease.pk]), text)
        else:
            response = raw(api, "put", f"/api/tasks/{lease.pk}/draft/", text)
        assert response.status_code < 500
        if response.status_code >= 400:
            assert list(Draft.objects.filter(assignment=lease).values_list("revision", "state")) == before
        # whatever is stored can be read back and rendered
        assert api.get(f"/api/tasks/{lease.pk}/draft/").status_code == 200

    hostile()
    current = Draft.objects.filter(assignment=lease).values_list("revision", flat=True).first() or 0
    assert api.put(f"/api/tasks/{lease.pk}/draft/", {"revision": current, "state": {"rationale": "fine"}},
                   format="json").status_code == 200
    assert alice_client.get(reverse("annotate:rank", args=[lease.pk])).status_code == 200


def test_property_skip_api_web_and_service(api, alice_client, alice, lease):
    @PROPERTY
    @given(reason=HOSTILE_VALUE, door=st.sampled_from(["api", "web", "service"]))
    def hostile(reason, door):
        Assignment.objects.filter(pk=lease.pk).update(state=Assignment.State.LEASED, skip_reason="", finished_at=None)
        if door == "api":
            status = raw(api, "post", f"/api/tasks/{lease.pk}/skip/", to_json_text({"reason": reason})).status_code
        elif door == "web":
            text = reason if isinstance(reason, str) else to_json_text(reason)
            # the raw form body, lone surrogates as the (invalid) UTF-8 bytes a broken client would send
            form = urlencode({"reason_choice": "other", "reason_text": text}, errors="surrogatepass")
            status = alice_client.post(reverse("annotate:skip", args=[lease.pk]), form,
                                       content_type="application/x-www-form-urlencoded", **HTMX).status_code
        else:
            try:
                check_value(reason)  # the doors' check, before the service
                skip_task(annotator=alice, assignment_id=lease.pk, reason=reason)
                status = 200
            except (ValidationError, BoundaryError):
                status = 400
        assert status < 500
        lease.refresh_from_db()
        assert (lease.state == Assignment.State.SKIPPED) == (status < 400)
        if status < 400:
            check_value(lease.skip_reason)  # what was stored is storable text

    hostile()
    Assignment.objects.filter(pk=lease.pk).update(state=Assignment.State.LEASED, skip_reason="", finished_at=None)
    assert api.post(f"/api/tasks/{lease.pk}/skip/", {"reason": "unclear"}, format="json").status_code == 200


def test_property_services_refuse_without_writing(alice, bob, lease):
    """The services behind the doors: a hostile value is a ValidationError / TaskNotFound / TaskConflict
    (or, for values that only the boundary refuses, the boundary check fails first) — never a crash."""
    @PROPERTY
    @given(body=hostile_submission(lease), who=st.sampled_from(["alice", "bob"]))
    def hostile(body, who):
        annotator = alice if who == "alice" else bob
        body = {k: v for k, v in body.items() if k != "extra"}
        if isinstance(body.get("tiers"), dict) and "deep" in body["tiers"]:
            body["tiers"] = [[1]]
        try:
            check_value(body)
        except BoundaryError:
            return  # the doors refuse it before any service sees it
        try:
            submit_ranking(annotator=annotator, assignment_id=lease.pk, **body)
        except (ValidationError, TaskNotFound, TaskConflict):
            assert not Ranking.objects.filter(assignment=lease).exists()
        else:
            Ranking.objects.filter(assignment=lease).delete()
            Assignment.objects.filter(pk=lease.pk).update(state=Assignment.State.LEASED, finished_at=None)
        try:
            save_draft(annotator=annotator, assignment_id=lease.pk, state=body, base_revision=0)
        except (ValidationError, TaskNotFound, TaskConflict):
            pass
        Draft.objects.filter(assignment=lease).delete()

    hostile()
    assert submit_ranking(annotator=alice, assignment_id=lease.pk, tiers=valid_tiers(lease)).created


def hostile_records() -> st.SearchStrategy:
    record = st.fixed_dictionaries(
        {"prompt": st.one_of(HOSTILE_TEXT, HOSTILE_VALUE)},
        optional={"metadata": HOSTILE_VALUE, "responses": st.one_of(HOSTILE_VALUE, st.lists(HOSTILE_TEXT, max_size=5)),
                  "ranking": HOSTILE_VALUE, "id": HOSTILE_SCALAR},
    )
    return st.lists(st.one_of(record, HOSTILE_VALUE), min_size=1, max_size=4)


def test_property_import_service_and_api_all_or_nothing(staff_api, project):
    seen = Counter()

    @PROPERTY
    @given(records=hostile_records(), through_api=st.booleans())
    def hostile(records, through_api):
        before = Prompt.objects.count()
        if through_api:
            response = raw(staff_api, "post", "/api/data/import/",
                           to_json_text({"project": project.name, "records": records}))
            seen[response.status_code] += 1
            assert response.status_code < 500
            ok = response.status_code == 201
        else:
            try:
                check_value(records)  # the API's parser did this; the service sees only storable values
            except BoundaryError:
                return
            try:
                import_records(project_name=project.name, records=api_records(records), source="test")
                ok = True
            except ImportFailed:
                ok = False
        if not ok:
            assert Prompt.objects.count() == before
        else:
            Prompt.objects.filter(project=project, source__in=["api", "test"]).delete()

    hostile()
    assert seen[400] >= 5, seen
    response = staff_api.post("/api/data/import/", {"project": project.name, "records": [{"prompt": "fine"}]},
                              format="json")
    assert response.status_code == 201 and response.json()["imported"] == 1
