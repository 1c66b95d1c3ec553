"""Django admin: every annotation model is registered and its pages load; rankings are read-only."""

import pytest
from django.contrib import admin
from django.urls import reverse

from annotate.models import Assignment, DatasetSnapshot, Draft, Project, Prompt, Ranking, Response
from annotate.services.queue import lease_next_task
from annotate.services.submission import submit_ranking

pytestmark = pytest.mark.django_db

MODELS = [Project, Prompt, Response, Assignment, Ranking, Draft, DatasetSnapshot]


def test_every_model_is_registered():
    assert all(admin.site.is_registered(model) for model in MODELS)


def test_admin_pages_load_and_rankings_cannot_be_edited(client, django_user_model, make_project, alice):
    root = django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-1")
    project = make_project(prompts=1, members=[alice])
    lease = lease_next_task(annotator=alice, project=project)
    Draft.objects.create(assignment=lease, state={"rationale": "x"}, revision=1)
    DatasetSnapshot.objects.create(project=project, path="/tmp/snap", format="jsonl", content_hash="ab" * 32)
    ranking = submit_ranking(annotator=alice, assignment_id=lease.pk, tiers=[lease.display_order]).ranking
    client.force_login(root)
    for model in MODELS:
        meta = model._meta
        changelist = client.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
        assert changelist.status_code == 200, meta.model_name
        obj = model.objects.first()
        if obj is not None:
            page = client.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk]))
            assert page.status_code == 200, meta.model_name
    ranking_page = client.get(reverse("admin:annotate_ranking_change", args=[ranking.pk])).content.decode()
    assert 'name="_save"' not in ranking_page
    assert client.get(reverse("admin:annotate_ranking_add")).status_code == 403
