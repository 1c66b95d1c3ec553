"""Many annotators writing demonstrations at once (PostgreSQL, threads with their own connections): every prompt
gets exactly the demonstrations it needs, no annotator writes one prompt twice, no slot is over-filled."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.utils import timezone

from annotate.models import Demonstration, Project
from annotate.services.demonstrations import lease_next_demonstration, submit_demonstration
from tests.annotate.test_queue_concurrency import run_threads, using_database


def write_until_done(barrier, user_id, project_id, needed, log, violations):
    with using_database(None):
        user = get_user_model().objects.get(pk=user_id)
        project = Project.objects.get(pk=project_id)
        rng = random.Random(user_id)
        barrier.wait()
        while (demo := lease_next_demonstration(annotator=user, project=project)) is not None:
            now = timezone.now()
            filled = Demonstration.objects.filter(prompt_id=demo.prompt_id).filter(
                Q(status__in=("submitted", "accepted")) | Q(status="draft", lease_expires_at__gt=now)).count()
            if filled > needed:
                violations.append((demo.prompt_id, filled))
            time.sleep(rng.random() * 0.01)
            result = submit_demonstration(annotator=user, demonstration_id=demo.pk, text=f"by {user_id}")
            log.append((user_id, demo.prompt_id, result.created))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_many_writers_fill_every_prompt_exactly(postgres_only, make_user, make_project):
    prompts, needed = 12, 2
    users = [make_user(f"writer-{i}") for i in range(8)]
    project = make_project("Concurrent demos", prompts=prompts, per_prompt=needed, members=users,
                           task_types=Project.TaskTypes.DEMONSTRATIONS)
    log, violations = [], []
    errors = run_threads(write_until_done, [(u.pk, project.pk, needed, log, violations) for u in users])
    assert not errors, "\n".join(errors)
    assert not violations, f"over-filled (prompt, demonstrations): {violations}"
    assert len(log) == prompts * needed and all(created for *_, created in log)
    assert max(Counter((u, p) for u, p, _ in log).values()) == 1
    per_prompt = Counter(Demonstration.objects.filter(status="submitted").values_list("prompt_id", flat=True))
    assert len(per_prompt) == prompts and set(per_prompt.values()) == {needed}
    assert not Demonstration.objects.filter(status="draft").exists()
