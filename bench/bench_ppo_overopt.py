"""Benchmark: reward over-optimisation on the demo task, over seeds × torch thread counts.

Runs `train_ppo` with one recipe (the PPOConfig defaults, changed by `--set name=value`) for every seed and
thread count, one run after the other in this process, on the setting of tests/rlhf/test_ppo_demo.py: the tiny
demo policy, the demo reward model cached by the tests (var/test-cache/demo-rm-*), 96 training prompts and
the 24 held-out demo prompts × 8 samples. Per run it reports the held-out evaluation before → after (the
hidden oracle, the RM score, KL, the gain's 95 % interval over prompts), the rollouts' oracle, RM score, KL
and β per iteration, the held-out oracle at every selection point (on the same 192 samples as the final
evaluation: the run's peak, to compare the final policy with), the iteration kept as the final policy and
whether the run stopped early on KL.

A property holds for a recipe when it holds on every row: the held-out oracle gain (after − before) clearly
above 0, the final held-out oracle not far below the best periodic one, KL bounded. Thread counts change the
float reduction order (like AVX2 vs AVX-512 kernels), so each (seed, threads) is a different trajectory.

    python bench/bench_ppo_overopt.py                                 # 5 seeds × 1 and 2 threads, defaults
    python bench/bench_ppo_overopt.py --seeds 0 1 --threads 1 --set kl_target=0 --set select_every=0
    python bench/bench_ppo_overopt.py --json var/bench/overopt.json --label defaults

Not a test: nothing is asserted. Each run takes about a minute on one free core of a 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from training.rlhf.reporter import NullReporter  # noqa: E402 (after the path insert)

CACHE = REPO_ROOT / "var" / "test-cache"


class Recorder(NullReporter):
    def __init__(self) -> None:
        self.metrics: dict[int, dict[str, float]] = {}
        self.logs: list[str] = []

    def on_metrics(self, step, metrics):
        self.metrics[step] = dict(metrics)

    def on_log(self, message):
        self.logs.append(message)


def demo_reward_model(path: str | None) -> Path:
    if path:
        return Path(path)
    found = sorted(CACHE.glob("demo-rm-*/model/reward_model.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit("no demo reward model in var/test-cache: run tests/rlhf/test_ppo_demo.py once first, "
                         "or pass --reward-model")
    return found[-1].parent


def write_prompts(work: Path) -> tuple[Path, Path]:
    from training.rlhf.demo_task import DEMO_TASK, demo_prompts

    def write(path: Path, prompts: list[str]) -> Path:
        path.write_text("".join(json.dumps({"prompt": p, "metadata": {"task": DEMO_TASK}}) + "\n"
                                for p in prompts), encoding="utf-8")
        return path

    return (write(work / "train.jsonl", demo_prompts(n=96, seed=0, split="train")),
            write(work / "test.jsonl", demo_prompts(n=192, seed=0, split="test")))


def parse_value(name: str, text: str) -> Any:
    from training.rlhf.ppo_config import PPOConfig

    kinds = {f.name: f.default for f in fields(PPOConfig)}
    if name not in kinds:
        raise SystemExit(f"--set {name}: not a PPOConfig option")
    default = kinds[name]
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, list):
        return [t for t in text.split(",") if t]
    return text


def held_out_trace(config, test: Path, trace: list[tuple[int, dict[str, float]]]):
    """Patches that evaluate the actor on the held-out set (the same 192 samples and seed as the final
    evaluation) at every selection point, so the final policy can be compared with the best the run passed
    through on the same samples. A measurement of the benchmark only: the trainer never sees these figures."""
    from training.rlhf import ppo_eval, ppo_trainer
    from training.rlhf.prompts import load_prompts

    records = load_prompts(str(test))[: config.eval_max_prompts]
    runtimes = []
    original_init, original_offer = ppo_trainer.PolicyRuntime.__init__, ppo_trainer.BestPolicy.offer

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        runtimes.append(self)

    def offer(self, iteration, score, actor):
        runtime = runtimes[-1]
        summary, _ = ppo_eval.evaluate_policy(runtime, actor, runtime.models.critic, records,
                                              which="before" if iteration == 0 else "after", demo=True,
                                              seed=config.seed + 104729, samples=config.eval_samples)
        trace.append((iteration, {k: summary[k] for k in ("oracle_score", "rm_score", "kl")}))
        return original_offer(self, iteration, score, actor)

    return (ppo_trainer.PolicyRuntime, "__init__", init), (ppo_trainer.BestPolicy, "offer", offer)


def one_run(*, seed: int, threads: int, overrides: dict[str, Any], policy: Path, rm: Path, train: Path,
            test: Path, work: Path, trace_held_out: bool) -> dict[str, Any]:
    from unittest import mock

    from training.rlhf.ppo_config import PPOConfig
    from training.rlhf.ppo_trainer import train_ppo

    torch.set_num_threads(threads)
    options = {"sample_every": 0, "checkpoint_every": 0, **overrides}
    config = PPOConfig(policy=str(policy), reward_model=str(rm), prompts=str(train), eval_prompts=str(test),
                       eval_max_prompts=192, output_dir=str(work / f"ppo-s{seed}-t{threads}"), seed=seed, **options)
    recorder = Recorder()
    trace: list[tuple[int, dict[str, float]]] = []
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if trace_held_out and config.select_every:
            for target, name, patch in held_out_trace(config, test, trace):
                stack.enter_context(mock.patch.object(target, name, patch))
        result = train_ppo(config, reporter=recorder)
    seconds = time.perf_counter() - started
    steps = sorted(recorder.metrics)
    curve = {name: [recorder.metrics[i].get(name) for i in steps]
             for name in ("rm_score", "oracle_score", "kl", "beta", "eval/oracle_score", "eval/rm_score", "eval/kl")}
    before, after = result.evaluation.get("before", {}), result.evaluation.get("after", {})
    periodic = [(i, recorder.metrics[i]["eval/oracle_score"]) for i in steps if "eval/oracle_score" in recorder.metrics[i]]
    return {
        "seed": seed, "threads": threads, "seconds": round(seconds, 1), "iterations": result.iterations,
        "before": before, "after": after, "curve": curve, "periodic_oracle": periodic, "held_out_trace": trace,
        "delta_ci": result.evaluation.get("delta_ci", {}),
        "best_iteration": result.evaluation.get("selection", {}).get("best_iteration"),
        "stopped_early": result.evaluation.get("selection", {}).get("stopped_early"),
        "rollout_oracle_peak": max((v for v in curve["oracle_score"] if v is not None), default=None),
    }


def row(run: dict[str, Any]) -> str:
    b, a = run["before"], run["after"]
    gain = a.get("oracle_score", float("nan")) - b.get("oracle_score", float("nan"))
    gain_ci = run["delta_ci"].get("oracle_score", {})
    ci = [gain_ci.get("low", float("nan")), gain_ci.get("high", float("nan"))]
    trace = [t["oracle_score"] for _, t in run["held_out_trace"]]
    peak = max(trace, default=float("nan"))  # the best held-out oracle the run passed through (same samples)
    return (f"| {run['seed']} | {run['threads']} | {b.get('oracle_score', float('nan')):.3f} → "
            f"{a.get('oracle_score', float('nan')):.3f} | {gain:+.3f} [{ci[0]:+.2f}, {ci[1]:+.2f}] | {peak:.3f} | "
            f"{b.get('rm_score', float('nan')):.3f} → {a.get('rm_score', float('nan')):.3f} | {a.get('kl', float('nan')):.2f} | "
            f"{max(v for v in run['curve']['kl'] if v is not None):.2f} | {run['curve']['beta'][-1]:.3f} | "
            f"{run['rollout_oracle_peak']:.3f} | {run['best_iteration']} / {run['iterations']}"
            f"{' (KL stop)' if run['stopped_early'] else ''} | {run['seconds']:.0f} |")


HEADER = ("| seed | threads | held-out oracle before → after | gain [95 % CI] | held-out oracle peak | "
          "held-out RM before → after | held-out KL | max rollout KL | final β | rollout oracle peak | "
          "kept iteration / run | s |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a PPOConfig option for every run (repeatable)")
    parser.add_argument("--policy", default=str(CACHE / "tiny-model"))
    parser.add_argument("--reward-model", default=None)
    parser.add_argument("--json", default=None, help="write every run (curves included) to this file")
    parser.add_argument("--label", default="")
    parser.add_argument("--no-trace", action="store_true",
                        help="skip the held-out evaluation at every selection point (the peak column)")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = parse_value(name, value)
    rm = demo_reward_model(args.reward_model)
    print(f"recipe: PPOConfig defaults + {overrides or 'nothing'}; reward model {rm}", flush=True)
    print(HEADER, flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="overopt-") as tmp:
        work = Path(tmp)
        train, test = write_prompts(work)
        for threads in args.threads:
            for seed in args.seeds:
                run = one_run(seed=seed, threads=threads, overrides=overrides, policy=Path(args.policy), rm=rm,
                              train=train, test=test, work=work, trace_held_out=not args.no_trace)
                runs.append(run)
                print(row(run), flush=True)
                if args.json:
                    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.json).write_text(json.dumps({"label": args.label, "overrides": overrides,
                                                           "reward_model": str(rm), "runs": runs}, indent=1),
                                               encoding="utf-8")
    return runs


if __name__ == "__main__":
    main()
