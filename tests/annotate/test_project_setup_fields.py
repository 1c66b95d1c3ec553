"""The project wizard's first step sets what annotators do and how prompts reach the model (issue 15); a
demonstrations-only project offers no ranking."""

from __future__ import annotations

import pytest
from django.urls import reverse

from annotate.models import Project

pytestmark = pytest.mark.django_db


def _create(client, **fields):
    data = {"name": "Support answers", "description": "", "task_types": "both", "demonstration_start": "blank",
            "k_min": 4, "k_max": 6, "annotators_per_prompt": 1, "lease_minutes": 30, "prompt_format": "chat",
            "system_prompt": "You are a helpful assistant.", "render_markdown": "on"}
    data.update(fields)
    return client.post(reverse("annotate:project_new"), data)


def test_the_wizard_sets_task_types_and_the_chat_format(client, staff):
    client.force_login(staff)
    response = _create(client)
    assert response.status_code == 302
    project = Project.objects.get(name="Support answers")
    assert (project.task_types, project.prompt_format, project.system_prompt) == (
        "both", "chat", "You are a helpful assistant.")


def test_a_system_prompt_needs_the_chat_format(client, staff):
    client.force_login(staff)
    response = _create(client, prompt_format="plain")
    assert response.status_code == 400
    assert "system_prompt needs prompt_format" in response.content.decode()
    assert not Project.objects.filter(name="Support answers").exists()


def test_a_demonstrations_only_project_offers_writing_not_ranking(client, alice, make_project):
    project = make_project(task_types="demonstrations", members=[alice])
    client.force_login(alice)
    page = client.get(reverse("annotate:project", args=[project.pk])).content.decode()
    assert "Write demonstrations" in page
    assert "Start ranking" not in page and "Nothing waiting for you" not in page
    both = make_project(name="Both", task_types="both", members=[alice])
    page = client.get(reverse("annotate:project", args=[both.pk])).content.decode()
    assert "Write demonstrations" in page and "Start ranking" in page
