"""Benchmark: this project's PPO trainer vs TRL's last PPO (`trl==1.12.0`, `trl.experimental.ppo.PPOTrainer`).

Both train the same tiny demo policy against the same reward model on the same demo prompts with the same
settings — the same prompt token ids, rollout batch, response length, PPO epochs, mini-batches (one optimizer
step per mini-batch), temperature, β (fixed, k1), clip ranges, vf coefficient, γ, λ, advantage whitening,
missing-EOS penalty, AdamW with a constant learning rate (TRL has one for policy and value: ours gets the same
for both) and no gradient clipping (TRL 1.12's PPO loop never clips, whatever `max_grad_norm` says) — and
report:

- seconds per PPO iteration (rollout + optimisation, model loading excluded), and rollout tokens/s
  (generated tokens up to and including the first EOS over the time spent in `generate`, counted and timed
  the same way for both: a wrapper around each trainer's generation call);
- reward gained per iteration: the slope of the rollouts' mean RM score over the iterations, and the change of
  the held-out RM score and demo-oracle score from the starting policy to the final one, divided by the
  iterations (the same evaluation, in this process, for both final policies: seeded samples of the held-out
  demo prompts, scored by the project's reward model and the oracle);
- the ratios (this trainer / TRL).

TRL runs in a separate virtualenv the benchmark creates (var/bench-venv: `pip install trl==1.12.0
torch==2.13.0`; torch pinned exactly so no CUDA packages come with it), through a runner script written
next to the results; the reward model is handed over as a backbone + score-head file (calibration folded into
the head), wrapped the way TRL's `get_reward` expects (`base_model_prefix`, `.score`).

    python bench/bench_ppo_vs_trl.py                     # tiny demo model, 20 iterations, 3 interleaved pairs
    python bench/bench_ppo_vs_trl.py --profile-ops --update-results
    python bench/bench_ppo_vs_trl.py --skip-trl --pairs 1  # only this trainer, once

The trainers run interleaved (this trainer, TRL, this trainer, TRL, … `--pairs` times): machine drift lands in
both halves of a pair, and the speed ratio is the median of the pairs' own ratios, shown with their range. Both
are timed by phase with the same wrappers (generation, the rollout's no-grad forwards, the update and the rest);
`--profile-ops` adds this trainer's update by op group (torch.profiler, a separate short run).

Both optimise the same reward: TRL's reward model is wrapped so that it reads the RM's text format, prompt +
response + EOS, also for a response cut at the length limit (TRL on its own would score such a response at its
last token, a text the RM never saw in training, and this demo RM scores those far higher: see RESULTS.md);
`--trl-native-rm-input` drops that wrapper.

Differences that remain (listed under the table): TRL takes rollout log-probs from generate's scores and puts
the score one token after EOS; ours recomputes them with a forward pass and puts the score on the EOS token;
TRL's update forwards the whole padded rollout width, ours trims each micro-batch to its longest response.
Not a test: nothing is asserted; `main` returns the summary (tests/bench/test_bench_smoke_ppo.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from training.rlhf.reporter import NullReporter  # noqa: E402 (after the path insert)

RESULTS_FILE = REPO_ROOT / "bench" / "RESULTS.md"
SECTION = "## PPO: this trainer vs TRL 1.12"
DEFAULT_VENV = REPO_ROOT / "var" / "bench-venv"
TRL_REQUIREMENTS = ("trl==1.12.0", "torch==2.13.0")
CACHE = Path(os.environ.get("WORKBENCH_TEST_CACHE", REPO_ROOT / "var" / "test-cache"))
MAX_PROMPT_LENGTH = 64  # prompts keep their last 64 tokens in both trainers (PPOConfig's default)
HELDOUT_PROMPTS = 24


# --- inputs: tiny model, reward model, prompts --------------------------------------------------------------


def ensure_tiny_model(path: Path | None) -> Path:
    from training.rlhf.tiny_model import build_tiny_model

    if path is not None:
        return path
    out = CACHE / "tiny-model"
    build_tiny_model(out)
    return out


def ensure_reward_model(path: Path | None, policy: Path, work: Path) -> Path:
    """The given RM, else the newest demo RM cached by the tests (tests/rlhf/conftest.py), else one trained here
    with the same recipe: K=4 samples of the tiny policy for 160 demo prompts, ranked by a simulated annotator
    (agreement 0.73), 2 epochs of train_rm with held-out calibration."""
    if path is not None:
        return path
    cached = sorted(CACHE.glob("demo-rm-*/model/reward_model.json"), key=lambda p: p.stat().st_mtime)
    if cached:
        return cached[-1].parent
    from training.rlhf.demo_task import DEMO_TASK, SimulatedAnnotator, demo_prompts
    from training.rlhf.reporter import NullReporter
    from training.rlhf.rm_config import RewardModelConfig
    from training.rlhf.rm_trainer import train_reward_model
    from training.rlhf.sampling import SamplingParams, load_policy, policy_generator, sample_distinct

    print("training a demo reward model (a few minutes)…", flush=True)
    prompts = list(dict.fromkeys(demo_prompts(n=160, seed=0, split="train") + demo_prompts(n=40, seed=0, split="test")))
    loaded = load_policy(policy, device="cpu", dtype=torch.float32)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=40, batch_size=64)
    sampled = sample_distinct(prompts, k=4, generate=policy_generator(loaded, params), seed=0).responses
    annotator = SimulatedAnnotator(agreement=0.73, seed=0)
    test = set(demo_prompts(n=40, seed=0, split="test"))
    rows = {"train": [], "test": []}
    for i, (prompt, texts) in enumerate(zip(prompts, sampled)):
        if len(texts) >= 2:
            rows["test" if prompt in test else "train"].append({
                "prompt_id": f"demo-{i}", "prompt": prompt, "responses": list(texts),
                "ranking": annotator.rank(prompt, texts), "annotator": annotator.name, "metadata": {"task": DEMO_TASK},
            })
    for split, records in rows.items():
        file = work / "rm-data" / "kwise" / f"{split}.jsonl"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    config = RewardModelConfig(model=str(policy), dataset=str(work / "rm-data"), output_dir=str(work / "rm"),
                               epochs=2, batch_size=8, learning_rate=3e-4, warmup_ratio=0.05, max_length=128,
                               checkpoint_every=0, seed=0)
    train_reward_model(config, reporter=NullReporter())
    return work / "rm"


def write_prompts(work: Path) -> tuple[Path, list[str]]:
    from training.rlhf.demo_task import DEMO_TASK, demo_prompts

    train = demo_prompts(n=96, seed=0, split="train")
    path = work / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "metadata": {"task": DEMO_TASK}}) + "\n" for p in train),
                    encoding="utf-8")
    return path, demo_prompts(n=HELDOUT_PROMPTS, seed=0, split="test")


def prompt_token_ids(policy: Path, prompts: Path) -> list[list[int]]:
    """The training prompts exactly as this trainer encodes them (sampling.encode_prompts: the tokenizer's own
    special tokens, no trailing EOS, the last MAX_PROMPT_LENGTH tokens), handed to TRL as its dataset."""
    from training.rlhf.policy import load_policy_tokenizer
    from training.rlhf.prompts import load_prompts
    from training.rlhf.sampling import encode_prompts

    tokenizer = load_policy_tokenizer(str(policy))
    return [ids[-MAX_PROMPT_LENGTH:] for ids in encode_prompts(tokenizer, [r.text for r in load_prompts(prompts)])]


def tokens_to_first_stop(responses: torch.Tensor, stop_ids: list[int]) -> int:
    """Generated tokens up to and including each row's first stop token (the whole width when it has none):
    the count both trainers' rollout tokens/s are based on."""
    stops = torch.isin(responses, torch.tensor(stop_ids, device=responses.device))
    width = torch.full_like(responses[:, 0], responses.shape[1], dtype=torch.long)
    return int(torch.where(stops.any(1), stops.long().argmax(1) + 1, width).sum())


# --- this trainer --------------------------------------------------------------------------------------------


class _Collect(NullReporter):
    def __init__(self) -> None:
        self.metrics: dict[int, dict[str, float]] = {}

    def on_metrics(self, step, metrics):
        self.metrics[step] = dict(metrics)


def run_ours(args, policy: Path, rm: Path, prompts: Path, out: Path, *, profile_ops: bool = False
             ) -> dict[str, Any]:
    from training.rlhf import ppo_trainer
    from training.rlhf.ppo_config import PPOConfig

    config = PPOConfig(
        policy=str(policy), reward_model=str(rm), prompts=str(prompts), output_dir=str(out), seed=args.seed,
        iterations=args.iterations, rollout_batch_size=args.rollout_batch_size, mini_batch_size=args.mini_batch_size,
        micro_batch_size=args.mini_batch_size, inference_batch_size=args.rollout_batch_size,
        max_prompt_length=MAX_PROMPT_LENGTH, ppo_epochs=args.ppo_epochs, response_length=args.response_length,
        temperature=1.0, top_p=1.0, whiten_rewards=False, whiten_advantages=True, score_norm="none", reward_clip=0.0,
        missing_eos_penalty=args.missing_eos_penalty, kl_estimator="k1", init_kl_coef=args.kl_coef, kl_target=0.0,
        cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95, lr=args.lr, critic_lr=args.lr,
        warmup_ratio=0.0, min_lr_ratio=1.0, weight_decay=0.0, max_grad_norm=args.max_grad_norm, evaluate=False,
        eval_fraction=0.0, checkpoint_every=0, sample_every=0, cpu=True, bf16="false",
        # TRL has neither: no selection rollouts, no KL stop, so both trainers compute the same thing
        select_every=0, kl_stop_factor=0.0,
    )
    # Time the generate call itself, as the TRL runner does (the trainer's own rollout_s also covers decoding
    # and reward-model scoring).
    timing = {"generate_s": 0.0, "tokens": 0, "widths": []}
    original = ppo_trainer.generate_responses

    def timed_generation(*a, **k):
        started = time.perf_counter()
        raw = original(*a, **k)
        timing["generate_s"] += time.perf_counter() - started
        timing["tokens"] += tokens_to_first_stop(raw, list(k["stop_token_ids"]))
        timing["widths"].append(raw.shape[1])
        return raw

    # The rollout's no-grad forwards (log-probs, reference log-probs, values, reward scores), timed alike in the
    # TRL runner; a snapshot per iteration, taken when the update starts.
    forwards = {"s": 0.0}
    runtime_class = ppo_trainer.PolicyRuntime
    originals = {name: getattr(runtime_class, name)
                 for name in ("logprobs", "reference_logprobs", "values", "score_members")}

    def timed_forward(function):
        def wrapper(*a, **k):
            started = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                forwards["s"] += time.perf_counter() - started
        return wrapper

    snapshots: list[tuple[float, float]] = []
    original_update = ppo_trainer.ppo_update
    op_table: list[str] = []

    def snapshot_update(*a, **k):
        snapshots.append((timing["generate_s"], forwards["s"]))
        if profile_ops and len(snapshots) == 2:  # the second iteration's update (the first one warms up)
            return _profiled(original_update, op_table, *a, **k)
        return original_update(*a, **k)

    reporter = _Collect()
    ppo_trainer.generate_responses = timed_generation
    ppo_trainer.ppo_update = snapshot_update
    for name, function in originals.items():
        setattr(runtime_class, name, timed_forward(function))
    try:
        started = time.perf_counter()
        ppo_trainer.train_ppo(config, reporter=reporter)
        total = time.perf_counter() - started
    finally:
        ppo_trainer.generate_responses = original
        ppo_trainer.ppo_update = original_update
        for name, function in originals.items():
            setattr(runtime_class, name, function)
    steps = [reporter.metrics[i] for i in sorted(reporter.metrics)]
    return {
        "phases": _phases([m["iteration_s"] for m in steps], snapshots),
        "op_profile": op_table,
        "iteration_s": [m["iteration_s"] for m in steps],
        "rm_score": [m["score"] for m in steps],  # RM score − missing-EOS penalty, as TRL's objective/scores
        "kl": [m["kl"] for m in steps],
        "rollout_tokens_per_s": timing["tokens"] / max(timing["generate_s"], 1e-9),
        "generated_tokens": timing["tokens"],
        "generate_s": timing["generate_s"],
        "generation_width": sum(timing["widths"]) / max(1, len(timing["widths"])),
        "total_s": total,
        "policy_dir": str(out / "policy"),
    }


def _phases(iteration_s: list[float], snapshots: list[tuple[float, float]]) -> dict[str, float]:
    """Mean seconds per iteration (the first left out) in generation, in the rollout's no-grad forwards and in
    the rest (the PPO update, advantages, bookkeeping), from per-iteration snapshots of the running totals
    (generation, forwards) taken at the same point of every iteration."""
    marks = [(0.0, 0.0), *snapshots]
    rows = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]
    # a snapshot falls between the rollout and the update, so iteration i's rollout is rows[i]
    pairs = list(zip(iteration_s, rows))[1:] or list(zip(iteration_s, rows))
    if not pairs:
        return {}
    n = len(pairs)
    generation = sum(r[0] for _, r in pairs) / n
    forwards = sum(r[1] for _, r in pairs) / n
    total = sum(t for t, _ in pairs) / n
    return {"generation": generation, "rollout_forwards": forwards, "update_and_rest": total - generation - forwards,
            "iteration": total}


OP_GROUPS = (("matrix multiplies", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul")),
             ("attention", ("scaled_dot_product", "aten::_softmax")),
             ("activations", ("gelu", "tanh", "aten::pow")),
             ("optimizer", ("adam", "Optimizer", "aten::lerp", "aten::addcdiv", "aten::addcmul", "aten::sqrt")),
             ("layer norm", ("layer_norm",)))


def _profiled(function, table: list[str], *a, **k):
    """Run `function` under torch.profiler and append its CPU self-time by op group to `table`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = function(*a, **k)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        group = next((g for g, keys in OP_GROUPS if any(key in event.key for key in keys)), "everything else")
        totals[group] = totals.get(group, 0.0) + event.self_cpu_time_total / 1e6
    whole = sum(totals.values()) or 1.0
    table.extend(f"{group} {seconds:.2f} s ({seconds / whole:.0%})"
                 for group, seconds in sorted(totals.items(), key=lambda kv: -kv[1]))
    return out


# --- TRL in its own virtualenv --------------------------------------------------------------------------------

TRL_RUNNER = '''
"""Runs trl.experimental.ppo.PPOTrainer (in the benchmark's virtualenv) and writes timings and scores."""
import json, sys, time
from pathlib import Path

import torch
from torch import nn

spec = json.loads(Path(sys.argv[1]).read_text())
torch.set_num_threads(spec["threads"])
import datasets
import trl
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, set_seed
from trl.experimental.ppo import PPOConfig, PPOTrainer
from trl.experimental.ppo import ppo_trainer as ppo_module

set_seed(spec["seed"])  # PPOTrainer seeds torch but not numpy, whose permutation draws its mini-batches


class ScalarModel(nn.Module):
    """Backbone + linear score on every position: what TRL's get_reward reads (base_model_prefix, .score)."""

    base_model_prefix = "transformer"

    def __init__(self, backbone_dir, head_file):
        super().__init__()
        self.transformer = AutoModel.from_pretrained(backbone_dir)
        head = load_file(head_file)
        self.score = nn.Linear(head["weight"].shape[1], 1)
        self.score.load_state_dict(head)
        self.config = self.transformer.config


class EndTokenBackbone(nn.Module):
    """The RM's backbone as get_reward calls it, reading the RM's text format (prompt + response + EOS): a row
    whose last real token is not EOS (a response cut at the length limit) gets an EOS appended, and the hidden
    state of that EOS is returned at the last real position, the one get_reward scores. Rows that end with EOS
    are untouched (causal attention: appending changes no earlier hidden state)."""

    def __init__(self, backbone, eos_token_id):
        super().__init__()
        self.backbone = backbone
        self.eos_token_id = eos_token_id
        self.config = backbone.config

    def forward(self, input_ids, attention_mask, position_ids=None, **kwargs):
        batch, width = input_ids.shape
        mask = attention_mask.bool()
        last = width - 1 - mask.flip(1).long().argmax(1)  # real tokens are contiguous (left-padded query)
        rows = torch.arange(batch, device=input_ids.device)
        needs = input_ids[rows, last] != self.eos_token_id
        ids = torch.cat([input_ids, torch.zeros_like(input_ids[:, :1])], 1)
        mask = torch.cat([mask, torch.zeros_like(mask[:, :1])], 1)
        ids[rows[needs], last[needs] + 1] = self.eos_token_id
        mask[rows[needs], last[needs] + 1] = True
        positions = mask.long().cumsum(1) - mask.long()
        kwargs.update(output_hidden_states=True, return_dict=True)
        out = self.backbone(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        hidden = out.hidden_states[-1][:, :width].clone()
        hidden[rows[needs], last[needs]] = out.hidden_states[-1][rows[needs], last[needs] + 1]
        out.hidden_states = (hidden,)
        return out


tokenizer = AutoTokenizer.from_pretrained(spec["policy"])
tokenizer.padding_side = "left"
policy = AutoModelForCausalLM.from_pretrained(spec["policy"])
reference = AutoModelForCausalLM.from_pretrained(spec["policy"])
reward_model = ScalarModel(spec["rm_backbone"], spec["rm_head"])
if spec["rm_appends_eos"]:
    reward_model.transformer = EndTokenBackbone(reward_model.transformer, tokenizer.eos_token_id)
value_model = ScalarModel(spec["rm_backbone"], spec["value_head"])
# the prompts as the project's trainer encodes them (same token ids for both)
dataset = datasets.Dataset.from_dict({"input_ids": spec["prompt_ids"]})

timing = {"generate_s": 0.0, "tokens": 0, "widths": []}
original_generation = ppo_module.batch_generation


def timed_generation(model, queries, batch_size, pad_token_id, generation_config):
    started = time.perf_counter()
    query_responses, logits = original_generation(model, queries, batch_size, pad_token_id, generation_config)
    timing["generate_s"] += time.perf_counter() - started
    responses = query_responses[:, queries.shape[1]:]
    eos = responses == tokenizer.eos_token_id  # tokens up to and including the first EOS, as for this trainer
    width = torch.full_like(responses[:, 0], responses.shape[1], dtype=torch.long)
    timing["tokens"] += int(torch.where(eos.any(1), eos.long().argmax(1) + 1, width).sum())
    timing["widths"].append(responses.shape[1])
    return query_responses, logits


ppo_module.batch_generation = timed_generation
forwards = {"s": 0.0}  # the rollout's no-grad forwards (reference log-probs, values, reward scores), as ours


def timed_when_no_grad(function):
    def wrapper(*a, **k):
        if torch.is_grad_enabled():  # the update's forward
            return function(*a, **k)
        started = time.perf_counter()
        try:
            return function(*a, **k)
        finally:
            forwards["s"] += time.perf_counter() - started
    return wrapper


ppo_module.forward = timed_when_no_grad(ppo_module.forward)
ppo_module.get_reward = timed_when_no_grad(ppo_module.get_reward)
snapshots = []
config = PPOConfig(
    output_dir=spec["out"], per_device_train_batch_size=spec["rollout_batch_size"], gradient_accumulation_steps=1,
    num_mini_batches=spec["rollout_batch_size"] // spec["mini_batch_size"],
    local_rollout_forward_batch_size=spec["rollout_batch_size"], num_ppo_epochs=spec["ppo_epochs"],
    response_length=spec["response_length"], total_episodes=spec["rollout_batch_size"] * spec["iterations"],
    temperature=1.0, kl_coef=spec["kl_coef"], kl_estimator="k1", cliprange=0.2, cliprange_value=0.2, vf_coef=0.1,
    gamma=1.0, lam=0.95, whiten_rewards=False, missing_eos_penalty=spec["missing_eos_penalty"], stop_token="eos",
    learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
    max_grad_norm=spec["max_grad_norm"], num_sample_generations=0, report_to="none",
    logging_steps=1, save_strategy="no", seed=spec["seed"], bf16=False, use_cpu=True, disable_tqdm=True,
)
trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=reference,
                     reward_model=reward_model, value_model=value_model, train_dataset=dataset)
logged = []
original_log = trainer.log


def log(metrics, *a, **k):
    logged.append({"time": time.perf_counter(), **metrics})
    snapshots.append((timing["generate_s"], forwards["s"]))
    return original_log(metrics, *a, **k)


trainer.log = log
started = time.perf_counter()
trainer.train()
total = time.perf_counter() - started
trainer.save_model(spec["out"] + "/policy")
tokenizer.save_pretrained(spec["out"] + "/policy")
times = [started] + [m["time"] for m in logged]
result = {
    "trl_version": trl.__version__,
    "iteration_s": [b - a for a, b in zip(times, times[1:])],
    "rm_score": [m["objective/scores"] for m in logged],
    "kl": [m["objective/kl"] for m in logged],
    "rollout_tokens_per_s": timing["tokens"] / max(timing["generate_s"], 1e-9),
    "generated_tokens": timing["tokens"],
    "generate_s": timing["generate_s"],
    "generation_width": sum(timing["widths"]) / max(1, len(timing["widths"])),
    "lr": [m["lr"] for m in logged],
    "total_s": total,
    "policy_dir": spec["out"] + "/policy",
    "snapshots": snapshots,
}
Path(spec["result"]).write_text(json.dumps(result))
'''


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import trl, sys; from trl.experimental.ppo import PPOTrainer; print(trl.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {venv} with {' '.join(TRL_REQUIREMENTS)} (a few minutes)…", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *TRL_REQUIREMENTS], check=True)
    check = subprocess.run(probe, capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"TRL is not importable in {venv}:\n{check.stderr[-2000:]}")
    return python


def export_for_trl(rm_dir: Path, work: Path) -> dict[str, str]:
    """The RM as TRL reads it: a plain backbone directory and score/value heads with the calibration folded in
    (gain·(w·h + b) + bias = (gain·w)·h + (gain·b + bias)); the value head starts as the raw RM head, as ours."""
    from safetensors.torch import save_file

    from training.rlhf.policy import is_peft_model
    from training.rlhf.reward_model import RewardModel

    rm = RewardModel.from_pretrained(rm_dir)
    backbone = rm.backbone.merge_and_unload() if is_peft_model(rm.backbone) else rm.backbone
    backbone.save_pretrained(work / "trl-rm-backbone")
    weight, bias = rm.score_head.weight.detach().float(), rm.score_head.bias.detach().float()
    gain, shift = rm.calibration.gain, rm.calibration.bias
    save_file({"weight": (weight * gain).contiguous(), "bias": (bias * gain + shift).contiguous()},
              str(work / "trl-rm-head.safetensors"))
    save_file({"weight": weight.contiguous(), "bias": bias.contiguous()}, str(work / "trl-value-head.safetensors"))
    return {"rm_backbone": str(work / "trl-rm-backbone"), "rm_head": str(work / "trl-rm-head.safetensors"),
            "value_head": str(work / "trl-value-head.safetensors")}


def run_trl(args, python: Path, policy: Path, rm: Path, prompts: Path, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    spec = {
        "policy": str(policy), "prompt_ids": prompt_token_ids(policy, prompts), "out": str(work / "trl-out"),
        "result": str(work / "trl.json"),
        "iterations": args.iterations, "rollout_batch_size": args.rollout_batch_size,
        "mini_batch_size": args.mini_batch_size, "ppo_epochs": args.ppo_epochs, "response_length": args.response_length,
        "kl_coef": args.kl_coef, "missing_eos_penalty": args.missing_eos_penalty, "lr": args.lr,
        "max_grad_norm": args.max_grad_norm, "seed": args.seed, "threads": args.threads,
        "rm_appends_eos": not args.trl_native_rm_input,
        **export_for_trl(rm, work),
    }
    (work / "trl-spec.json").write_text(json.dumps(spec))
    (work / "trl_runner.py").write_text(textwrap.dedent(TRL_RUNNER))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([str(python), str(work / "trl_runner.py"), str(work / "trl-spec.json")], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the TRL run failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads((work / "trl.json").read_text())
    result["phases"] = _phases(result["iteration_s"], [tuple(x) for x in result.pop("snapshots", [])])
    return result


# --- one evaluation for every policy ------------------------------------------------------------------------


@torch.no_grad()
def evaluate(policy_dir: Path, start_dir: Path, rm_dir: Path, prompts: list[str], *, response_length: int,
             seed: int, samples: int = 4) -> dict[str, float]:
    """Seeded samples (T = 1) of the held-out prompts: mean calibrated RM score, demo-oracle score, KL to the
    starting policy (Σ_t k1 per response) and response length."""
    from transformers import AutoModelForCausalLM

    from training.rlhf.demo_task import oracle_score
    from training.rlhf.policy import load_policy_tokenizer
    from training.rlhf.reward_model import RewardModel
    from training.rlhf.rollout import (
        generate_responses,
        join_prompt_response,
        response_logprobs,
        truncate_after_stop,
    )
    from training.rlhf.sampling import encode_prompts, left_pad

    tokenizer = load_policy_tokenizer(str(policy_dir))
    model = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    start = AutoModelForCausalLM.from_pretrained(start_dir).eval()
    rm = RewardModel.from_pretrained(rm_dir)
    texts = [p for p in prompts for _ in range(samples)]
    ids, mask = left_pad(encode_prompts(tokenizer, texts), tokenizer.pad_token_id)
    raw = generate_responses(model, ids, mask, max_new_tokens=response_length, temperature=1.0, top_p=1.0,
                             stop_token_ids=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id,
                             batch_size=64, generator_seed=seed)
    response_ids, response_mask, has_stop = truncate_after_stop(raw, [tokenizer.eos_token_id], tokenizer.pad_token_id)
    sequences = join_prompt_response(ids, mask, response_ids, response_mask)
    kl = ((response_logprobs(model, sequences, temperature=1.0)[0]
           - response_logprobs(start, sequences, temperature=1.0)[0]) * response_mask).sum(1)
    lengths = response_mask.sum(1)
    responses = [tokenizer.decode(response_ids[b, : int(lengths[b]) - int(has_stop[b])].tolist(),
                                  skip_special_tokens=True) for b in range(len(texts))]
    scores = rm.score_texts(texts, responses)
    return {
        "rm_score": sum(scores) / len(scores),
        "oracle_score": sum(oracle_score(p, r) for p, r in zip(texts, responses)) / len(texts),
        "kl": float(kl.mean()),
        "response_length": float(lengths.float().mean()),
        "eos_rate": float(has_stop.float().mean()),
    }


def slope(values: list[float]) -> float:
    """Least-squares slope of values against 1, 2, … (per iteration)."""
    n = len(values)
    if n < 2:
        return float("nan")
    xs = range(1, n + 1)
    mx, my = (n + 1) / 2, sum(values) / n
    return sum((x - mx) * (y - my) for x, y in zip(xs, values)) / sum((x - mx) ** 2 for x in xs)


def _steady_mean(iteration_s: list[float]) -> float:
    steady = iteration_s[1:] or iteration_s  # the first iteration carries one-off warm-up
    return sum(steady) / len(steady)


def summarise(name: str, run: dict[str, Any], evaluation: dict[str, float], start: dict[str, float],
              iterations: int, *, repeats: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One trainer's figures: timings are medians over `repeats` (the interleaved runs, `run` among them), the
    reward figures come from `run` (seeded: every repeat follows the same trajectory)."""
    repeats = repeats or [run]
    per_run = [_steady_mean(r["iteration_s"]) for r in repeats]
    phases = {key: statistics.median(r["phases"][key] for r in repeats)
              for key in (repeats[0].get("phases") or {})}
    return {
        "name": name,
        "iterations": len(run["iteration_s"]),
        "s_per_iteration": statistics.median(per_run),
        "s_per_iteration_runs": per_run,
        "phases": phases,
        "op_profile": run.get("op_profile") or [],
        "rollout_tokens_per_s": statistics.median(r["rollout_tokens_per_s"] for r in repeats),
        "generated_tokens": run.get("generated_tokens"),
        "generation_width": run.get("generation_width"),
        "total_s": run["total_s"],  # the whole training call (ours: with model loading and saving)
        "loop_s": sum(run["iteration_s"]),  # the iterations themselves, measured the same way for both
        "rm_score_slope": slope(run["rm_score"]),
        "heldout_rm_gain_per_iteration": (evaluation["rm_score"] - start["rm_score"]) / iterations,
        "heldout_oracle_gain_per_iteration": (evaluation["oracle_score"] - start["oracle_score"]) / iterations,
        "evaluation": evaluation,
        "iteration_s_curve": run["iteration_s"],
        "rm_score_curve": run["rm_score"],
        "kl_curve": run["kl"],
    }


ROWS = [("seconds per PPO iteration", "s_per_iteration", "{:.3f}", True),
        ("rollout tokens/s", "rollout_tokens_per_s", "{:.0f}", False),
        ("RM score gained per iteration (slope of rollout scores)", "rm_score_slope", "{:+.4f}", False),
        ("held-out RM score gained per iteration", "heldout_rm_gain_per_iteration", "{:+.4f}", False),
        ("held-out oracle score gained per iteration", "heldout_oracle_gain_per_iteration", "{:+.4f}", False)]


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return path.name


def describe_reward_model(rm: Path) -> str:
    """Which reward model ran, and how good it is (its recorded held-out evaluation)."""
    shown = _shown(rm)
    try:
        heldout = json.loads((rm / "reward_model.json").read_text(encoding="utf-8"))["evaluation"]["heldout"]
        oracle = heldout["oracle"]
        return (f"reward model `{shown}` (held-out accuracy {heldout['accuracy']:.3f} vs the annotator, "
                f"{oracle['accuracy']:.3f} vs the demo oracle, {oracle['pairs']} pairs)")
    except (OSError, KeyError, TypeError, ValueError):
        return f"reward model `{shown}`"


def command_line(argv: list[str]) -> str:
    """The command shown in RESULTS.md: the given options without machine-local paths and the note."""
    shown, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--work", "--venv", "--note", "--model", "--reward-model"):
            skip = "=" not in arg
            continue
        shown.append(arg)
    return " ".join(["python bench/bench_ppo_vs_trl.py", *shown])


def markdown(args, start: dict[str, float], ours: dict[str, Any], trl: dict[str, Any] | None,
             trl_error: str | None, environment: str, command: str, models: str = "") -> str:
    clipping = (f"gradient-norm clip {args.max_grad_norm} for this trainer only (TRL 1.12's PPO loop never "
                "clips)" if args.max_grad_norm > 0 else "no gradient clipping (TRL 1.12's PPO loop never clips)")
    rm_input = ("TRL's reward model scores responses cut at the length limit as they are (--trl-native-rm-input), "
                "this trainer's with the EOS appended" if args.trl_native_rm_input else
                "both reward models read prompt + response + EOS, the RM's training format (TRL's through a wrapper "
                "that appends the EOS to a response cut at the length limit, as this trainer does)")
    lines = [SECTION, "",
             f"`{command}`", "",
             f"Same tiny demo policy, reward model, prompt token ids and {args.iterations} iterations each: rollout "
             f"batch {args.rollout_batch_size}, {args.rollout_batch_size // args.mini_batch_size} mini-batches of "
             f"{args.mini_batch_size} (one optimizer step each), {args.ppo_epochs} PPO epochs, responses ≤ "
             f"{args.response_length} tokens, T = 1, β = {args.kl_coef} (k1, fixed), AdamW at a constant lr "
             f"{args.lr} for policy and value (no warm-up, no weight decay), {clipping}, clip 0.2/0.2, vf_coef "
             f"0.1, γ = 1, λ = 0.95, advantages whitened, rewards not, missing-EOS penalty "
             f"{args.missing_eos_penalty}; {rm_input}. " + (f"{models}. " if models else "") + f"{environment}.",
             ""]
    if trl is not None:
        lines += [f"| | this trainer | TRL {trl.get('version') or '1.12'} | ratio (this / TRL) |",
                  "|---|---:|---:|---:|"]
        for label, key, fmt, lower_better in ROWS:
            a, b = ours[key], trl[key]
            # a ratio of gains means something only when both are gains
            ratio = f"{a / b:.2f}" if math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0 else "n/a"
            if key == "s_per_iteration" and ours.get("pair_ratios"):
                ratio = f"{statistics.median(ours['pair_ratios']):.2f}"
            note = " (lower is better)" if lower_better else ""
            lines.append(f"| {label}{note} | {fmt.format(a)} | {fmt.format(b)} | {ratio} |")
    else:
        lines += ["| | this trainer |", "|---|---:|"]
        for label, key, fmt, _ in ROWS:
            lines.append(f"| {label} | {fmt.format(ours[key])} |")
        lines += ["", f"TRL could not run here: {trl_error}"]
    pairs = ours.get("pair_ratios") or []
    if pairs:
        lines += ["", f"Seconds per iteration are medians over {len(pairs)} interleaved pairs (this trainer, then "
                      f"TRL, repeated); the ratio is the median of the pairs' own ratios: "
                      f"{', '.join(f'{r:.2f}' for r in pairs)} (range {min(pairs):.2f}–{max(pairs):.2f})."]
    if ours.get("phases"):
        lines += ["", "Where an iteration's time goes (seconds per iteration, medians over the runs; the same "
                      "wrappers in both trainers):", ""]
        names = [("generation (`generate`)", "generation"),
                 ("rollout forwards (log-probs, reference, values, reward; no grad)", "rollout_forwards"),
                 ("PPO update and the rest", "update_and_rest"), ("whole iteration", "iteration")]
        if trl is not None and trl.get("phases"):
            lines += ["| phase | this trainer | TRL | ratio |", "|---|---:|---:|---:|"]
            for label, key in names:
                a, b = ours["phases"][key], trl["phases"][key]
                lines.append(f"| {label} | {a:.3f} | {b:.3f} | {a / b:.2f} |" if b > 0 else
                             f"| {label} | {a:.3f} | {b:.3f} | n/a |")
        else:
            lines += ["| phase | this trainer |", "|---|---:|"]
            lines += [f"| {label} | {ours['phases'][key]:.3f} |" for label, key in names]
    if ours.get("op_profile"):
        lines += ["", "This trainer's PPO update by op (torch.profiler, CPU self-time of the second iteration's "
                      f"update, in a separate 3-iteration run): {'; '.join(ours['op_profile'])}."]
    heldout = f"{HELDOUT_PROMPTS} demo test prompts × {args.eval_samples} seeded samples"
    lines += ["", f"Held-out evaluation ({heldout}, the same seed for every policy, scored in one place):", "",
              "| policy | RM score | oracle score | KL to start | length | EOS rate |", "|---|---:|---:|---:|---:|---:|"]
    for name, ev in [("start", start), ("this trainer", ours["evaluation"])] + (
            [("TRL 1.12", trl["evaluation"])] if trl is not None else []):
        lines.append(f"| {name} | {ev['rm_score']:+.3f} | {ev['oracle_score']:+.3f} | {ev['kl']:.2f} | "
                     f"{ev['response_length']:.1f} | {ev['eos_rate']:.2f} |")
    lines += ["", f"Rollout score (RM − missing-EOS penalty) per iteration, this trainer: "
                  f"{', '.join(f'{v:+.2f}' for v in ours['rm_score_curve'])}."]
    if trl is not None:
        lines.append(f"Rollout score per iteration, TRL: {', '.join(f'{v:+.2f}' for v in trl['rm_score_curve'])}.")
    lines += ["", f"Seconds per iteration leave out the first (one-off warm-up); all {args.iterations} iterations "
                  f"took {ours['loop_s']:.1f} s with this trainer"
                  + (f", {trl['loop_s']:.1f} s with TRL" if trl is not None else "") + ". Rollout tokens/s: tokens up "
                  "to and including the first EOS over the time inside `generate`, timed and counted the same way "
                  f"for both ({ours['generated_tokens']} tokens, mean generated width "
                  f"{ours['generation_width']:.1f} for this trainer"
                  + (f"; {trl['generated_tokens']} tokens, width {trl['generation_width']:.1f} for TRL"
                     if trl is not None else "") + ")."]
    lines += ["", "Remaining differences: TRL takes the rollout log-probs from generate's scores and places the score "
              "one token after EOS; ours recomputes log-probs with a forward pass (the same code path as the update) "
              "and scores the EOS token; TRL's update forwards the whole padded rollout width, ours "
              "trims each micro-batch to its longest response; TRL steps one AdamW over policy and value together, "
              "ours one per model (the same update without clipping); prompt order and sampling draws differ (each "
              "trainer's own RNG), so the reward figures carry sampling noise: compare their signs and sizes, not "
              "the third decimal."]
    if args.note:
        lines += ["", args.note]
    lines.append("")
    return "\n".join(lines)


def update_results(section: str, path: Path = RESULTS_FILE) -> None:
    """Replace (or append) only this benchmark's section of bench/RESULTS.md."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n\n"
    if SECTION in text:
        start = text.index(SECTION)
        following = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section.rstrip() + "\n" + (text[following:] if following != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n", encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="Policy directory (default: the cached tiny demo model).")
    parser.add_argument("--reward-model", type=Path, help="Reward-model directory (default: the cached demo RM).")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--rollout-batch-size", type=int, default=64)
    parser.add_argument("--mini-batch-size", type=int, default=16)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--response-length", type=int, default=24)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-grad-norm", type=float, default=0.0,
                        help="Gradient-norm clip for this trainer (default 0: none, as TRL 1.12's PPO loop, which "
                             "never clips).")
    parser.add_argument("--missing-eos-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both trainers.")
    parser.add_argument("--eval-samples", type=int, default=8, help="Seeded samples per held-out prompt.")
    parser.add_argument("--trl-native-rm-input", action="store_true",
                        help="Let TRL score a response cut at the length limit as it is (its own way) instead of "
                             "with the EOS appended that the reward model was trained on and this trainer adds.")
    parser.add_argument("--pairs", type=int, default=3,
                        help="Interleaved runs: this trainer, then TRL, this many times; timings are medians and "
                             "the speed ratio is the median of the pairs' ratios (default 3).")
    parser.add_argument("--profile-ops", action="store_true",
                        help="Profile this trainer's second PPO update by op group (torch.profiler).")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--work", type=Path, help="Working directory (default: a temporary one).")
    parser.add_argument("--update-results", action="store_true", help=f"Rewrite '{SECTION}' in bench/RESULTS.md.")
    parser.add_argument("--note", default="", help="A paragraph added under the section in RESULTS.md.")
    return parser


def _load() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"
    return f"{one:.2f}/{five:.2f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns {"start", "ours", "trl", "trl_error", "section"} (also in WORK/results.json)."""
    given = list(argv if argv is not None else sys.argv[1:])
    args = build_parser().parse_args(given)
    if args.rollout_batch_size % args.mini_batch_size:
        raise SystemExit("--mini-batch-size must divide --rollout-batch-size")
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-ppo-"))
    work.mkdir(parents=True, exist_ok=True)

    policy = ensure_tiny_model(args.model)
    rm = ensure_reward_model(args.reward_model, policy, work)
    prompts, heldout = write_prompts(work)
    load_before = _load()
    start = evaluate(policy, policy, rm, heldout, response_length=args.response_length, seed=args.seed + 1,
                     samples=args.eval_samples)

    trl_python, trl_error = None, None
    if args.skip_trl:
        trl_error = "skipped (--skip-trl)"
    else:
        try:
            trl_python = ensure_venv(args.venv)
        except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
            trl_error = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            print(f"TRL could not run: {exc}", file=sys.stderr)
    # A B A B …: each pair runs this trainer, then TRL, so machine drift lands in both halves of a pair's ratio
    ours_runs, trl_runs = [], []
    for pair in range(args.pairs):
        print(f"pair {pair + 1}/{args.pairs}: this trainer…", flush=True)
        ours_runs.append(run_ours(args, policy, rm, prompts, work / f"ours-{pair}"))
        if trl_python is not None and trl_error is None:
            print(f"pair {pair + 1}/{args.pairs}: TRL…", flush=True)
            try:
                trl_runs.append(run_trl(args, trl_python, policy, rm, prompts, work / f"trl-{pair}"))
            except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
                trl_error = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
                print(f"TRL could not run: {exc}", file=sys.stderr)
    op_profile: list[str] = []
    if args.profile_ops:  # a run of its own (3 iterations): the profiler's overhead stays out of the timings
        print("profiling this trainer's update…", flush=True)
        op_profile = run_ours(argparse.Namespace(**{**vars(args), "iterations": min(3, args.iterations)}), policy,
                              rm, prompts, work / "ours-profile", profile_ops=True)["op_profile"]
    # Both trainers are seeded, so every pair repeats the same trajectory: the first one is evaluated.
    ours = summarise("this trainer", ours_runs[0], evaluate(Path(ours_runs[0]["policy_dir"]), policy, rm, heldout,
                                                            response_length=args.response_length,
                                                            seed=args.seed + 1, samples=args.eval_samples),
                     start, args.iterations, repeats=ours_runs)
    ours["op_profile"] = op_profile
    trl = None
    if trl_runs and trl_error is None:
        trl = summarise("TRL", trl_runs[0], evaluate(Path(trl_runs[0]["policy_dir"]), policy, rm, heldout,
                                                     response_length=args.response_length, seed=args.seed + 1,
                                                     samples=args.eval_samples),
                        start, args.iterations, repeats=trl_runs)
        trl["version"] = trl_runs[0].get("trl_version")
        trl["lr_curve"] = trl_runs[0].get("lr")
        ours["pair_ratios"] = [a / b for a, b in zip(ours["s_per_iteration_runs"], trl["s_per_iteration_runs"])]
    environment = (f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other "
                   f"jobs, {args.threads} torch thread(s) per trainer), torch {torch.__version__}, load average "
                   f"(1/5 min) {load_before} before and {_load()} after")
    models = f"Policy `{_shown(policy)}`, {describe_reward_model(rm)}"
    section = markdown(args, start, ours, trl, trl_error, environment, command_line(given), models)
    print(section)
    summary = {"start": start, "ours": ours, "trl": trl, "trl_error": trl_error, "section": section}
    (work / "results.json").write_text(json.dumps(summary, indent=2))
    if args.update_results:
        update_results(section)
        print(f"updated {RESULTS_FILE}")
    return summary


if __name__ == "__main__":
    main()
