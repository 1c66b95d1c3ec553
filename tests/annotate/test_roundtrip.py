"""Round trip: import → sample with the demo's tiny model → simulated annotators → export → load with datasets."""

from __future__ import annotations

import json
from math import comb

import datasets
import pytest
from django.core.management import call_command

from annotate.models import DatasetSnapshot, Project, Ranking, Response
from annotate.services.stats import project_quality
from training.rlhf.data import load_ranking_records
from training.rlhf.demo_task import demo_prompts


@pytest.mark.slow
@pytest.mark.django_db
def test_import_sample_simulate_export_round_trip(tiny_model_dir, tmp_path, capsys):
    prompts = demo_prompts(n=7, seed=5)
    source = tmp_path / "demo.jsonl"
    source.write_text("".join(json.dumps({"prompt": p, "id": f"d{i}", "metadata": {"task": "demo"}}) + "\n"
                              for i, p in enumerate(prompts[:4])))
    call_command("import_prompts", str(source), "--project", "loop", "--no-progress")
    source2 = tmp_path / "demo2.jsonl"
    source2.write_text("".join(json.dumps({"prompt": p, "metadata": {"task": "demo"}}) + "\n" for p in prompts[4:]))
    call_command("import_prompts", str(source2), "--project", "loop", "--round", "2", "--no-progress")
    project = Project.objects.get(name="loop")
    project.annotators_per_prompt = 3
    project.save()

    common = ["--project", "loop", "--model", str(tiny_model_dir), "--max-new-tokens", "32", "--device", "cpu",
              "--no-progress", "--seed", "11"]
    call_command("sample_responses", *common, "--k", "4", "--round", "1")
    call_command("sample_responses", *common, "--k", "9", "--round", "2", "--batch-size", "16")
    assert Response.objects.filter(prompt__round=1).count() == 4 * 4
    assert Response.objects.filter(prompt__round=2).count() == 3 * 9
    assert set(Response.objects.values_list("origin", flat=True)) == {Response.Origin.MODEL}
    capsys.readouterr()
    call_command("sample_responses", *common, "--k", "4", "--round", "1")  # resumable: nothing left to do
    assert "sampled 0 prompts (0 responses)" in capsys.readouterr().out
    assert Response.objects.count() == 43

    call_command("simulate_annotators", project="loop", annotators=3, agreement=0.73)
    rankings = Ranking.objects.filter(prompt__project=project)
    assert rankings.count() == 7 * 3 and set(rankings.values_list("source", flat=True)) == {"simulated"}

    snapshot = DatasetSnapshot.objects.get(pk=_export(project, tmp_path / "snap-1"))
    again = DatasetSnapshot.objects.get(pk=_export(project, tmp_path / "snap-2"))
    assert snapshot.content_hash == again.content_hash  # same data, same parameters → same hash

    kwise = datasets.load_from_disk(str(tmp_path / "snap-1" / "kwise"))
    pairwise = datasets.load_from_disk(str(tmp_path / "snap-1" / "pairwise"))
    records = list(kwise["train"]) + list(kwise["test"])
    assert len(records) == 21 and snapshot.counts["kwise"]["train"] + snapshot.counts["kwise"]["test"] == 21
    assert sorted(len(r["responses"]) for r in records) == [4] * 12 + [9] * 9
    assert all(r["metadata"] == {"task": "demo"} and r["source"] == "simulated" for r in records)
    assert len({r["annotator"] for r in records}) == 3

    # Pairs: C(K, 2) per ranking minus its tied pairs; without ties K=4 → 6 and K=9 → 36.
    expected_pairs = 0
    tied = 0
    for record in records:
        k = len(record["responses"])
        ties = sum(comb(len(tier), 2) for tier in record["ranking"])
        tied += ties
        expected_pairs += comb(k, 2) - ties
    assert comb(4, 2) == 6 and comb(9, 2) == 36
    assert pairwise["train"].num_rows + pairwise["test"].num_rows == expected_pairs
    assert snapshot.counts["tied_pairs_excluded"] == tied
    # Ranking by ranking (whether the simulation tied some responses or not is up to its noise draws, which
    # differ between databases): C(K, 2) pairs minus the tied ones; an untied K=4 gives 6, an untied K=9 36.
    rows = list(pairwise["train"]) + list(pairwise["test"])
    for record in records:
        n = sum(1 for row in rows if row["prompt_id"] == record["prompt_id"] and row["annotator"] == record["annotator"])
        ties = sum(comb(len(tier), 2) for tier in record["ranking"])
        assert n == comb(len(record["responses"]), 2) - ties
        if ties == 0:
            assert n == {4: 6, 9: 36}[len(record["responses"])]

    # No split leakage: no prompt on both sides, in either view.
    assert not set(kwise["train"]["prompt"]) & set(kwise["test"]["prompt"])
    assert not set(pairwise["train"]["prompt"]) & set(pairwise["test"]["prompt"])
    assert snapshot.counts["prompts"]["test"] >= 1 and snapshot.counts["prompts"]["train"] >= 1

    # The reward-model trainer's reader takes the snapshot as it is.
    assert len(load_ranking_records(tmp_path / "snap-1", split="train")) == snapshot.counts["kwise"]["train"]

    # Agreement of the simulated annotators is in a sane range around the requested 0.73.
    quality = project_quality(project=project)
    assert quality["overall"]["annotator_pairs"] == 3
    assert 0.55 < quality["overall"]["agreement"] < 0.92


def _export(project, out):
    call_command("export_rankings", "--project", project.name, "--out", str(out), "--test-fraction", "0.3",
                 "--seed", "0")
    return DatasetSnapshot.objects.latest("created_at").pk
