"""The staff export page and the snapshots API: same service, paths inside WORKBENCH_DATA_ROOT."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from annotate.models import DatasetSnapshot, Project
from tests.annotate.data_fixtures import make_ranked_prompt

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff():
    return get_user_model().objects.create_user("boss", is_staff=True)


@pytest.fixture
def project(staff, settings, tmp_path):
    settings.WORKBENCH_DATA_ROOT = tmp_path / "data"
    project = Project.objects.create(name="web-export")
    make_ranked_prompt(project, "p", {staff: [[0], [1], [2], [3]]})
    make_ranked_prompt(project, "q", {staff: [[3], [2], [1], [0]]})
    return project


def test_export_page(client, staff, project, tmp_path):
    client.force_login(staff)
    url = reverse("annotate_data:export", kwargs={"project_id": project.pk})
    assert client.get(url).status_code == 200
    response = client.post(url, {"name": "first", "format": "jsonl", "test_fraction": "0.5", "seed": "0",
                                 "group": "per-annotator", "rounds": "1"})
    assert response.status_code == 302
    snapshot = DatasetSnapshot.objects.get()
    assert Path(snapshot.path) == (tmp_path / "data" / "snapshots" / f"{project.pk}-first").resolve()
    assert (Path(snapshot.path) / "manifest.json").exists() and snapshot.created_by == staff
    page = client.get(url).content.decode()
    assert snapshot.content_hash[:12] in page and "Exported 2 rankings (12 pairs)" in page
    again = client.post(url, {"name": "first", "format": "jsonl", "test_fraction": "0.5", "seed": "0",
                              "group": "per-annotator"})
    assert again.status_code == 400 and "already exists" in again.content.decode()
    bad = client.post(url, {"name": "../escape", "format": "jsonl", "test_fraction": "0.1", "seed": "0",
                            "group": "per-annotator"})
    assert bad.status_code == 400 and DatasetSnapshot.objects.count() == 1


def test_export_page_staff_only(project):
    client = Client()
    client.force_login(get_user_model().objects.create_user("ann"))
    assert client.get(reverse("annotate_data:export", kwargs={"project_id": project.pk})).status_code == 403


def test_snapshots_api(staff, project):
    url = reverse("annotate_data:api_snapshots", kwargs={"project_id": project.pk})
    assert Client().get(url).status_code in (401, 403)
    client = Client()
    client.force_login(staff)
    created = client.post(url, {"name": "api-1", "format": "parquet", "test_fraction": 0}, content_type="application/json")
    assert created.status_code == 201, created.content
    data = created.json()
    assert data["format"] == "parquet" and data["counts"]["pairwise"]["train"] == 12
    assert [s["id"] for s in client.get(url).json()] == [data["id"]]
    empty = Project.objects.create(name="empty")
    nothing = client.post(reverse("annotate_data:api_snapshots", kwargs={"project_id": empty.pk}), {"name": "x"},
                          content_type="application/json")
    assert nothing.status_code == 400 and "has no rankings to export" in nothing.json()["detail"]
