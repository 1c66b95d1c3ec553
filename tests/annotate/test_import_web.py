"""The staff upload page and the import API: same service, size limit, staff only, CSRF."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token

from annotate.models import Project, Prompt

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff():
    return get_user_model().objects.create_user("boss", password="pw-123456", is_staff=True)


@pytest.fixture
def annotator():
    return get_user_model().objects.create_user("ann", password="pw-123456")


@pytest.fixture
def project():
    return Project.objects.create(name="web")


def jsonl(*records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def upload(client, project, content, name="prompts.jsonl", **extra):
    return client.post(
        reverse("annotate_data:import_upload", kwargs={"project_id": project.pk}),
        {"file": SimpleUploadedFile(name, content), **extra},
    )


def test_upload_page_imports_through_the_service(client, staff, project):
    client.force_login(staff)
    url = reverse("annotate_data:import_upload", kwargs={"project_id": project.pk})
    page = client.get(url)
    assert page.status_code == 200 and b"Import prompts into web" in page.content
    response = upload(client, project, jsonl({"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}), round="3")
    assert response.status_code == 302 and response["Location"] == url
    assert sorted(Prompt.objects.filter(project=project, round=3).values_list("text", flat=True)) == ["a", "b"]
    follow = client.get(url)
    assert "imported 2 prompts" in follow.content.decode() and "skipped 1 duplicates" in follow.content.decode()
    assert Prompt.objects.get(text="a").source == "prompts.jsonl"


def test_upload_bad_file_shows_errors_and_writes_nothing(client, staff, project):
    client.force_login(staff)
    response = upload(client, project, jsonl({"prompt": "ok"}, {"prompt": 5}))
    assert response.status_code == 400
    text = response.content.decode()
    assert "Nothing was imported" in text
    assert "prompts.jsonl line 2, field &#x27;prompt&#x27;: expected a string, got an integer" in text
    assert not Prompt.objects.exists()
    empty = upload(client, project, b"", name="empty.csv")
    assert empty.status_code == 400 and "The submitted file is empty." in empty.content.decode()
    header_only = upload(client, project, b"id,prompt\n", name="header.csv")
    assert "header.csv: the file has a header but no records" in header_only.content.decode()
    assert upload(client, project, b"x", name="data.xlsx").status_code == 400
    assert not Prompt.objects.exists()


def test_upload_size_limit(client, staff, project, settings):
    settings.WORKBENCH_MAX_UPLOAD_BYTES = 200
    client.force_login(staff)
    response = upload(client, project, jsonl(*({"prompt": f"prompt {i}"} for i in range(50))))
    assert response.status_code == 400
    assert "the limit is 200\xa0bytes (WORKBENCH_MAX_UPLOAD_BYTES)" in response.content.decode()
    assert not Prompt.objects.exists()


def test_upload_staff_only_and_csrf(staff, annotator, project):
    url = reverse("annotate_data:import_upload", kwargs={"project_id": project.pk})
    anonymous = Client()
    assert anonymous.get(url).status_code == 302  # to the login page
    client = Client()
    client.force_login(annotator)
    assert client.get(url).status_code == 403
    assert upload(client, project, jsonl({"prompt": "a"})).status_code == 403
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(staff)
    assert upload(strict, project, jsonl({"prompt": "a"})).status_code == 403  # no CSRF token
    assert not Prompt.objects.exists()


def test_api_import(staff, annotator):
    url = reverse("annotate_data:api_import")
    body = {"project": "api-project", "records": [{"prompt": "x", "id": 1}, {"prompt": "y"}], "round": 2}
    assert Client().post(url, body, content_type="application/json").status_code in (401, 403)
    client = Client()
    client.force_login(annotator)
    assert client.post(url, body, content_type="application/json").status_code == 403
    token = Token.objects.create(user=staff)
    api = Client(headers={"Authorization": f"Token {token.key}"})
    response = api.post(url, body, content_type="application/json")
    assert response.status_code == 201, response.content
    data = response.json()
    assert (data["imported"], data["project_created"], data["round"], data["source"]) == (2, True, 2, "api")
    assert Project.objects.get(name="api-project").prompts.count() == 2
    bad = api.post(url, {"project": "api-project", "records": [{"prompt": "z"}, {"prompt": ""}, 7]},
                   content_type="application/json")
    assert bad.status_code == 400
    assert bad.json()["errors"] == ["record 2, field 'prompt': is empty", "record 3: expected a JSON object, got an integer"]
    assert bad.json()["summary"]["rejected"] == 2
    assert Prompt.objects.count() == 2
    assert api.post(url, {"project": "p", "records": []}, content_type="application/json").status_code == 400


def test_api_import_size_limit(staff, settings):
    settings.WORKBENCH_MAX_UPLOAD_BYTES = 100
    client = Client()
    client.force_login(staff)
    body = {"project": "big", "records": [{"prompt": "x" * 200}]}
    response = client.post(reverse("annotate_data:api_import"), body, content_type="application/json")
    assert response.status_code == 413 and "WORKBENCH_MAX_UPLOAD_BYTES" in response.json()["detail"]
    assert not Project.objects.filter(name="big").exists()


def test_upload_parquet_and_csv(client, staff, project):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"prompt": "from parquet", "lang": "en"}]), buffer)
    client.force_login(staff)
    assert upload(client, project, buffer.getvalue(), name="p.parquet").status_code == 302
    assert upload(client, project, b"prompt,topic\nfrom csv,food\n", name="p.csv").status_code == 302
    assert dict(Prompt.objects.values_list("text", "metadata")) == {
        "from parquet": {"lang": "en"}, "from csv": {"topic": "food"}
    }
