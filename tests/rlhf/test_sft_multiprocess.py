"""The SFT trainer in two processes on the CPU (torchrun, gloo), as `accelerate launch -m training.rlhf.sft_cli`
runs it on several GPUs: both ranks finish, only rank 0 reports (each step once in events.jsonl) and saves the
model; a stop asked for through OUTPUT_DIR/STOP stops both ranks at the same step with a checkpoint, and
`--resume last` in two processes continues it to the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def torchrun_sft(args: list[str], *, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ACCELERATE_USE_CPU", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "training.rlhf.sft_cli", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def sft_args(model: Path, dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--dataset", str(dataset), "--output-dir", str(out), "--batch-size", "2",
            "--max-steps", "4", "--learning-rate", "1e-3", "--checkpoint-every", "0", "--sample-prompts", "2",
            "--max-new-tokens", "8", "--log-every", "1", "--cpu", "true", "--quiet", *extra]


@pytest.fixture
def sft_dataset(tmp_path) -> Path:
    rows = [{"prompt_id": str(i), "prompt": f"Review place {i}:", "response": " It was lovely and warm."}
            for i in range(16)]
    directory = tmp_path / "sft"
    directory.mkdir()
    (directory / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:12]), encoding="utf-8")
    (directory / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[12:]), encoding="utf-8")
    return directory


def test_sft_trains_in_two_processes_and_stops_and_resumes_together(random_lm_dir, sft_dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "STOP").touch()  # asked to stop before the first step ends: both ranks stop after step 1
    done = torchrun_sft(sft_args(random_lm_dir, sft_dataset, out))
    assert done.returncode != 0, done.stderr[-3000:]  # exit 3 on both ranks (torchrun reports the failure)
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-1"], (checkpoints, done.stderr[-3000:])
    assert not (out / "model").exists()

    (out / "STOP").unlink()
    done = torchrun_sft(sft_args(random_lm_dir, sft_dataset, out, "--resume", "last"))
    assert done.returncode == 0, done.stderr[-4000:]
    log = events(out)
    assert any("× 2 process(es)" in e.get("message", "") for e in log)  # one DDP group of two
    starts = [(e["total_steps"], e["start_step"]) for e in log if e["event"] == "start"]
    assert starts == [(4, 0), (4, 1)]  # one writer: rank 0 only
    steps = [e["step"] for e in log if e["event"] == "metrics" and "loss" in e["metrics"]]
    assert steps == [1, 2, 3, 4]  # each step once, the resumed run continuing from the checkpoint
    assert [e["outputs"] for e in log if e["event"] == "outputs"] == [{"model": str(out / "model")}]
    assert (out / "model" / "model.safetensors").exists() and (out / "model" / "sft.json").exists()
    [evaluation] = [e["results"] for e in log if e["event"] == "evaluation"]
    assert evaluation["after"]["loss"] > 0 and evaluation["data"]["train_demonstrations"] == 12
