"""project_quality selector and the staff quality endpoint on hand-made rankings."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from annotate.models import Project
from annotate.services.exporting import annotator_pseudonym
from annotate.services.stats import consensus_rankings, project_quality
from tests.annotate.data_fixtures import make_ranked_prompt

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup():
    User = get_user_model()
    alice, bob, carol = (User.objects.create_user(n) for n in ("alice", "bob", "carol"))
    project = Project.objects.create(name="quality")
    # p1: alice and bob agree fully, carol reverses; all shown in index order 0..3.
    order = {u: [0, 1, 2, 3] for u in (alice, bob, carol)}
    p1 = make_ranked_prompt(project, "p1", {alice: [[0], [1], [2], [3]], bob: [[0], [1], [2], [3]],
                                            carol: [[3], [2], [1], [0]]}, display_orders=order)
    # p2: alice and bob disagree on one pair of four.
    make_ranked_prompt(project, "p2", {alice: [[0], [1], [2], [3]], bob: [[1], [0], [2], [3]]})
    return project, (alice, bob, carol), p1


def test_project_quality_known_answers(setup):
    project, (alice, bob, carol), p1 = setup
    q = project_quality(project=project)
    assert (q["rankings"], q["prompts_ranked"], q["prompts_with_several_rankings"]) == (5, 2, 2)
    pairs = {(p["a"]["label"], p["b"]["label"]): p for p in q["pairs"]}
    # alice–bob: p1 6 of 6 agree, p2 5 of 6 → 11/12; tau_b (1 + 4/6)/2.
    ab = pairs[("alice", "bob")] if ("alice", "bob") in pairs else pairs[("bob", "alice")]
    assert (ab["agree"], ab["disagree"], ab["prompts"]) == (11, 1, 2)
    assert ab["agreement"] == pytest.approx(11 / 12) and ab["tau_b"] == pytest.approx((1 + 4 / 6) / 2)
    ac = pairs.get(("alice", "carol")) or pairs[("carol", "alice")]
    assert ac["agreement"] == 0.0 and ac["tau_b"] == pytest.approx(-1.0)
    # Pooled: alice–bob 11/12, alice–carol 0/6, bob–carol 0/6 → 11/24.
    assert q["overall"]["agreement"] == pytest.approx(11 / 24) and q["overall"]["annotator_pairs"] == 3
    annotators = {a["label"]: a for a in q["annotators"]}
    assert annotators["alice"]["pseudonym"] == annotator_pseudonym(f"user:{alice.pk}")
    # carol vs the consensus of alice and bob on p1 (0>1>2>3): all 6 pairs disagree.
    assert annotators["carol"]["consensus"]["agreement"] == 0.0 and annotators["carol"]["rankings"] == 1
    # Position bias (only p1 has display orders): alice and bob rank the first shown on top, carol last.
    assert q["position_bias"]["rankings"] == 3
    assert q["position_bias"]["first_wins"] == pytest.approx(2 / 3)
    assert q["position_bias"]["earlier_preferred"] == pytest.approx(12 / 18)
    # Length bias: responses get longer with their index ("w" * i), and index 0 mostly wins → shorter wins.
    # Strict pairs where the longer won: carol's 6 + bob's p2 pair (1 over 0) = 7 of 6·5 = 30.
    assert q["length_bias"]["pairs"] == 30 and q["length_bias"]["longer_preferred"] == pytest.approx(7 / 30)
    assert "consensus" not in q
    consensus = project_quality(project=project, include_consensus=True)["consensus"]
    ids = list(p1.responses.order_by("pk").values_list("pk", flat=True))
    assert consensus[str(p1.pk)] == [[ids[0]], [ids[1]], [ids[2]], [ids[3]]]
    assert consensus_rankings(project=project)[p1.pk] == consensus[str(p1.pk)]


def test_quality_api_staff_only(setup):
    project, (alice, _, _), _ = setup
    url = reverse("annotate_data:api_quality", kwargs={"project_id": project.pk})
    assert Client().get(url).status_code in (401, 403)
    client = Client()
    client.force_login(alice)
    assert client.get(url).status_code == 403
    alice.is_staff = True
    alice.save()
    data = client.get(url, {"round": "1", "consensus": "1"}).json()
    assert data["rankings"] == 5 and data["rounds"] == [1] and len(data["consensus"]) == 2
    assert client.get(url, {"round": "x"}).status_code == 400
    assert client.get(reverse("annotate_data:api_quality", kwargs={"project_id": 999})).status_code == 404
