"""The PPO benchmark's own trainer side runs end to end at toy sizes with --skip-trl (the figures themselves,
TRL's included, are in bench/RESULTS.md). It must not build the TRL virtualenv."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_ppo_vs_trl.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_ppo_vs_trl", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def random_reward_model(tiny_model_dir, tmp_path_factory) -> Path:
    """An untrained reward model on the tiny policy's backbone (random head): enough to time PPO, and seconds
    to build, unlike the trained demo RM of tests/rlhf/conftest.py."""
    from training.rlhf.reward_model import RewardModel

    out = tmp_path_factory.mktemp("random-rm") / "rm"
    RewardModel.from_backbone(str(tiny_model_dir), max_length=128).save_pretrained(out)
    return out


def test_bench_ppo_skip_trl_smoke(capsys, tmp_path, monkeypatch, tiny_model_dir, random_reward_model):
    bench = load_bench()
    monkeypatch.setattr(bench, "ensure_venv", lambda venv: pytest.fail("--skip-trl must not touch the TRL venv"))
    venv, work = tmp_path / "venv", tmp_path / "work"
    summary = bench.main(["--model", str(tiny_model_dir), "--reward-model", str(random_reward_model),
                          "--iterations", "2", "--rollout-batch-size", "8", "--mini-batch-size", "4",
                          "--ppo-epochs", "1", "--response-length", "8", "--eval-samples", "1",
                          "--pairs", "2", "--profile-ops",
                          "--skip-trl", "--venv", str(venv), "--work", str(work)])
    assert not venv.exists()
    assert summary["trl"] is None and summary["trl_error"] == "skipped (--skip-trl)"

    ours = summary["ours"]
    assert ours["iterations"] == 2 and len(ours["iteration_s_curve"]) == 2
    assert len(ours["s_per_iteration_runs"]) == 2  # two interleaved runs (no TRL here, so no pair ratios)
    phases = ours["phases"]
    assert phases["generation"] > 0 and phases["rollout_forwards"] > 0 and phases["update_and_rest"] > 0
    assert phases["generation"] + phases["rollout_forwards"] < phases["iteration"]
    assert any(line.startswith("matrix multiplies ") for line in ours["op_profile"])
    assert ours["s_per_iteration"] > 0 and 0 < ours["loop_s"] <= ours["total_s"]
    assert ours["rollout_tokens_per_s"] > 0 and 0 < ours["generated_tokens"] <= 2 * 8 * 8
    assert ours["generation_width"] <= 8
    assert len(ours["rm_score_curve"]) == len(ours["kl_curve"]) == 2
    assert all(math.isfinite(v) for v in ours["rm_score_curve"] + ours["kl_curve"])
    assert math.isfinite(ours["rm_score_slope"]) and math.isfinite(ours["heldout_oracle_gain_per_iteration"])
    for evaluation in (summary["start"], ours["evaluation"]):
        assert 0 < evaluation["response_length"] <= 8 and 0 <= evaluation["eos_rate"] <= 1
    assert summary["start"]["kl"] == pytest.approx(0.0, abs=1e-4)  # the start policy against itself
    assert (work / "ours-0" / "policy" / "config.json").exists() and (work / "ours-1" / "policy" / "config.json").exists()
    assert json.loads((work / "results.json").read_text())["ours"]["iterations"] == 2

    out = capsys.readouterr().out
    assert bench.SECTION in out and "TRL could not run here: skipped (--skip-trl)" in out
    for label, _key, _fmt, _lower in bench.ROWS:
        assert f"| {label} |" in out
    assert "| start |" in out and "| this trainer |" in out
    assert "--iterations 2" in out and str(tmp_path) not in summary["section"]  # no local paths in the command

    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Benchmark results\n\n## Someone else's section\n\nkeep me\n\n{bench.SECTION}\n\nold "
                       "figures\n\n## Last one\n\nme too\n")
    bench.update_results(summary["section"], path=results)
    text = results.read_text()
    assert "keep me" in text and "me too" in text and "old figures" not in text and "| this trainer |" in text
    assert text.index("keep me") < text.index(bench.SECTION) < text.index("## Last one")
    assert text.count(bench.SECTION) == 1
    results.write_text("# Benchmark results\n\n## Someone else's section\n\nkeep me\n")
    bench.update_results(summary["section"], path=results)
    text = results.read_text()
    assert "keep me" in text and text.count(bench.SECTION) == 1 and text.endswith("\n")


def test_tokens_to_first_stop():
    import torch

    bench = load_bench()
    responses = torch.tensor([[5, 0, 1, 1], [5, 6, 7, 8], [0, 1, 1, 1]])
    assert bench.tokens_to_first_stop(responses, [0]) == 2 + 4 + 1
