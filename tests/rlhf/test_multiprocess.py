"""Two processes on the CPU (torchrun, gloo), as the README's multi-GPU commands run them with the process count
changed (issue 14): reward-model and PPO training end with identical weights on both ranks, the metrics are
reduced across ranks, only rank 0 writes, an encoder (BERT-style) reward model trains under DDP, and a PPO run
stopped and resumed in 2 processes ends exactly where the uninterrupted one does.

Each run goes through the plain CLI (`-m training.rlhf.rm_cli` / `ppo_cli`) inside tests/rlhf/mp_driver.py,
which leaves every rank's weight digests and metrics behind. Tiny models, a few steps: CI has 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TIMING = {"tokens_per_s", "iteration_s", "rollout_s", "optimise_s"}  # local clocks: differ between ranks


def torchrun(cli: str, args: list[str], *, out: Path, nproc: int = 2, stop_after: int = 0,
             timeout: int = 420) -> list[dict]:
    """`torchrun --standalone --nproc_per_node N -m tests.rlhf.mp_driver <cli> <args>`; every rank's record."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rank*.json"):
        old.unlink()
    env = {**os.environ, "MP_DRIVER_OUT": str(out), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "MP_STOP_AFTER": str(stop_after), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ACCELERATE_USE_CPU", None)  # the trainers must form the gloo group on their own
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "tests.rlhf.mp_driver", cli, *args]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    records = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    assert len(records) == nproc, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return records


def events(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "events.jsonl").read_text().splitlines()]


def assert_reduced_metrics_and_one_writer(records: list[dict], output_dir: Path, *, key: str) -> None:
    """Every rank computed the same metrics (they were reduced across ranks; each rank's own data differ),
    and only rank 0 reported: one event per step in events.jsonl."""
    reported = [(e["step"], e["metrics"]) for e in events(output_dir) if e["event"] == "metrics"
                and key in e["metrics"]]
    steps = [s for s, _ in reported]
    assert steps == sorted(set(steps)) and steps, steps  # each step once: a second writer would repeat them
    shadow = [(s, m) for s, m in records[1]["metrics"] if key in m]
    assert [s for s, _ in shadow] == steps
    for (step, ours), (_, theirs) in zip(reported, shadow):
        ours = {k: v for k, v in ours.items() if k not in TIMING}
        theirs = {k: v for k, v in theirs.items() if k not in TIMING}
        assert ours == theirs, f"step {step}: ranks disagree on {set(k for k in ours if ours[k] != theirs.get(k))}"
    assert records[0]["metrics"] == []  # rank 0's metrics went to the real reporter


# --- reward models ------------------------------------------------------------------------------------------


def rm_args(model: Path, dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--dataset", str(dataset), "--output-dir", str(out), "--batch-size", "2",
            "--max-steps", "3", "--learning-rate", "1e-3", "--checkpoint-every", "0", "--max-length", "64",
            "--log-every", "1", "--quiet", *extra]


def test_reward_model_trains_in_two_processes(random_lm_dir, ranking_dataset, tmp_path):
    out = tmp_path / "rm"
    records = torchrun("training.rlhf.rm_cli", rm_args(random_lm_dir, ranking_dataset, out), out=tmp_path / "mp")
    assert [r["code"] for r in records] == [0, 0] and [r["world"] for r in records] == [2, 2]
    assert records[0]["digests"] == records[1]["digests"]  # DDP kept the replicas identical
    assert (out / "reward_model.json").exists()
    assert any("× 2 process(es)" in e.get("message", "") for e in events(out))
    assert_reduced_metrics_and_one_writer(records, out, key="loss")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A tiny BERT-style encoder (with a pooler, as real checkpoints have) and a WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from tests.rlhf.conftest import make_ranking_rows

    directory = tmp_path_factory.mktemp("bert")
    words = sorted({w.strip(".:,").lower() for row in make_ranking_rows(24, k=4, seed=1)
                    for text in [row["prompt"], *row["responses"]] for w in text.split()} - {""})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ":", *words]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), model_max_length=128)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=128))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_encoder_reward_model_trains_under_ddp(bert_dir, ranking_dataset, tmp_path):
    out = tmp_path / "rm"
    records = torchrun("training.rlhf.rm_cli", rm_args(bert_dir, ranking_dataset, out), out=tmp_path / "mp")
    assert [r["code"] for r in records] == [0, 0] and [r["world"] for r in records] == [2, 2]
    assert records[0]["digests"] == records[1]["digests"]
    from training.rlhf.reward_model import RewardModel

    model = RewardModel.from_pretrained(out)
    assert type(model.backbone).__name__ == "BertModel" and model.end_token_id == model.tokenizer.sep_token_id
    assert len(model.score_texts(["Review place 1:"], [" It was fresh."])) == 1


# --- PPO ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ppo_inputs(random_lm_dir, tmp_path_factory) -> tuple[Path, Path]:
    import torch

    from training.rlhf.reward_model import RewardModel

    root = tmp_path_factory.mktemp("ppo-inputs")
    torch.manual_seed(1)
    rm_dir = RewardModel.from_backbone(str(random_lm_dir)).save_pretrained(root / "rm")
    places = ["harbour cafe", "night train", "jazz club", "village bakery", "city library", "bike shop"]
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Write a short review of the {p} number {i}:"}) + "\n"
                               for i in range(3) for p in places), encoding="utf-8")
    return rm_dir, prompts


def ppo_args(lm: Path, rm: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    # running score norm, whitened advantages and an adaptive β: per-rank and reduced state all in play
    return ["--policy", str(lm), "--reward-model", str(rm), "--prompts", str(prompts), "--output-dir", str(out),
            "--iterations", "4", "--rollout-batch-size", "4", "--mini-batch-size", "2", "--micro-batch-size", "1",
            "--ppo-epochs", "2", "--response-length", "6", "--lr", "1e-3", "--critic-lr", "1e-3",
            "--sample-every", "0", "--evaluate", "false", "--eval-fraction", "0", "--checkpoint-every", "2",
            "--score-norm", "running", "--kl-target", "0.5", "--kl-horizon", "64", "--select-every", "0",
            "--kl-stop-factor", "0", "--seed", "5", "--quiet", *extra]


def test_ppo_in_two_processes_and_resumed_ends_where_the_uninterrupted_run_does(random_lm_dir, ppo_inputs,
                                                                                 tmp_path):
    rm_dir, prompts = ppo_inputs
    straight_out = tmp_path / "straight"
    straight = torchrun("training.rlhf.ppo_cli", ppo_args(random_lm_dir, rm_dir, prompts, straight_out),
                        out=tmp_path / "mp-a")
    assert [r["code"] for r in straight] == [0, 0] and [r["world"] for r in straight] == [2, 2]
    assert straight[0]["digests"] == straight[1]["digests"]  # identical replicas on both ranks
    assert_reduced_metrics_and_one_writer(straight, straight_out, key="reward")
    assert (straight_out / "policy" / "config.json").exists()

    resumed_out = tmp_path / "resumed"
    half = torchrun("training.rlhf.ppo_cli", ppo_args(random_lm_dir, rm_dir, prompts, resumed_out),
                    out=tmp_path / "mp-b", stop_after=2)
    assert [r["code"] for r in half] == [3, 3]  # stopped on request, checkpoint written
    checkpoint = resumed_out / "checkpoints" / "iter-000002"
    assert sorted(p.name for p in checkpoint.glob("rank_state_*.pt")) == ["rank_state_0.pt", "rank_state_1.pt"]
    (resumed_out / "STOP").unlink()
    resumed = torchrun("training.rlhf.ppo_cli", ppo_args(random_lm_dir, rm_dir, prompts, resumed_out,
                                                         "--resume", "last"), out=tmp_path / "mp-c")
    assert [r["code"] for r in resumed] == [0, 0]
    assert resumed[0]["digests"] == resumed[1]["digests"]
    assert resumed[0]["digests"] == straight[0]["digests"]  # exactly where the uninterrupted run ended
    last = {e["step"]: e["metrics"] for e in events(straight_out) if e["event"] == "metrics"}[4]
    again = {e["step"]: e["metrics"] for e in events(resumed_out) if e["event"] == "metrics"}[4]
    assert {k: v for k, v in last.items() if k not in TIMING} == {k: v for k, v in again.items() if k not in TIMING}
