"""Fixtures for the annotation tests: users, projects with prompts and responses."""

from __future__ import annotations

import itertools

import pytest

from annotate.models import Project, Prompt, Response

_counter = itertools.count(1)


def add_prompt(project: Project, *, k: int = 4, round: int = 1, text: str | None = None,
               responses: list[str] | None = None) -> Prompt:
    n = next(_counter)
    prompt = Prompt.objects.create(project=project, text=text or f"Prompt {n}: describe the café.", round=round)
    for body in responses or [f"Response {i} to prompt {n}." for i in range(k)]:
        Response.objects.create(prompt=prompt, text=body)
    return prompt


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """PBKDF2 takes most of a second per user on a loaded 2-core box; tests need no real hashing."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def make_user(django_user_model):
    def make(username: str, *, staff: bool = False, password: str = "pw-for-tests-1"):
        return django_user_model.objects.create_user(username=username, password=password, is_staff=staff)

    return make


@pytest.fixture
def make_project():
    def make(name: str = "Cafés", *, prompts: int = 3, k: int = 4, per_prompt: int = 1, lease_minutes: int = 30,
             members=(), **fields) -> Project:
        project = Project.objects.create(
            name=name, annotators_per_prompt=per_prompt, lease_minutes=lease_minutes, **fields
        )
        project.annotators.add(*members)
        for _ in range(prompts):
            add_prompt(project, k=k)
        return project

    return make


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def bob(make_user):
    return make_user("bob")


@pytest.fixture
def carol(make_user):
    return make_user("carol")


@pytest.fixture
def staff(make_user):
    return make_user("sam-staff", staff=True)


@pytest.fixture
def new_prompt():
    """``new_prompt(project, k=4, round=1, text=None, responses=None)`` adds a prompt with responses."""
    return add_prompt
