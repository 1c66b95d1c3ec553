"""Benchmark: reward-model training throughput, InstructGPT K-wise (one forward pass over a ranking's K
responses, all C(K,2) comparisons from it) vs the naive pairwise way (every comparison a separate
(chosen, rejected) example: two forward passes per pair, as pairwise trainers do).

Both train the same model on the same rankings (demo-task prompts, grammar responses, simulated annotators),
with the same number of sequences per optimizer step, over the same data: every comparison of every ranking
once. Reported per K: rankings/s, comparisons/s, sequences/s, and the K-wise/pairwise speed ratio (in
theory (2·C(K,2) − 2·ties) / K ≈ K − 1).

    python bench/bench_rm_kwise.py                       # K = 4 and 9, a random GPT-2 (4 layers, d = 256)
    python bench/bench_rm_kwise.py --model var/models/tiny --k 4 9 --rankings 64
    python bench/bench_rm_kwise.py --update-results      # also rewrite the section in bench/RESULTS.md

Not a test: nothing is asserted (tests/bench/test_bench_smoke_rm.py only runs it at toy sizes).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from training.rlhf.data import tiers_to_ranks  # noqa: E402
from training.rlhf.demo_task import SimulatedAnnotator, demo_prompts, sample_demo_responses  # noqa: E402
from training.rlhf.reward_model import RewardModel, pad_sequences  # noqa: E402
from training.rlhf.rm_loss import kwise_ranking_loss, pairwise_loss  # noqa: E402

RESULTS_FILE = REPO_ROOT / "bench" / "RESULTS.md"
SECTION = "## Reward model: K-wise vs pairwise"


@dataclass
class Timing:
    k: int
    method: str
    rankings: int
    comparisons: int
    sequences: int
    seconds: float

    @property
    def rankings_per_s(self) -> float:
        return self.rankings / self.seconds

    @property
    def comparisons_per_s(self) -> float:
        return self.comparisons / self.seconds

    @property
    def sequences_per_s(self) -> float:
        return self.sequences / self.seconds


def build_random_model(directory: Path, *, layers: int, embd: int, heads: int, seed: int) -> Path:
    """A randomly initialised GPT-2 with the demo tokenizer (throughput does not depend on the weights)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from training.rlhf.demo_task import demo_corpus
    from training.rlhf.tiny_model import train_demo_tokenizer

    tokenizer = train_demo_tokenizer(demo_corpus(n=2000, seed=seed), vocab_size=1024, model_max_length=128)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_layer=layers, n_embd=embd, n_head=heads,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def make_rankings(n: int, k: int, seed: int) -> list[tuple[str, list[str], list[list[int]]]]:
    annotator = SimulatedAnnotator(seed=seed, name="bench")
    out = []
    for prompt in demo_prompts(n=n, seed=seed):
        responses = sample_demo_responses(prompt, k=k, seed=seed)
        out.append((prompt, responses, annotator.rank(prompt, responses)))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_kwise(model, optimizer, rankings, *, per_batch: int, device) -> tuple[int, int]:
    """One pass: batches of `per_batch` rankings, one forward over all their responses. → (comparisons, seqs)"""
    comparisons = sequences = 0
    for start in range(0, len(rankings), per_batch):
        chunk = rankings[start:start + per_batch]
        encoded = [model.encode([p] * len(rs), rs) for p, rs, _ in chunk]
        flat = [seq for item in encoded for seq in item]
        ids, mask = pad_sequences(flat, pad_id=model.pad_token_id)
        k = max(len(item) for item in encoded)
        ranks = torch.tensor([tiers_to_ranks(r, len(rs)) for _, rs, r in chunk])
        rewards = model(ids.to(device), mask.to(device), calibrated=False).view(len(chunk), k)
        loss, _ = kwise_ranking_loss(rewards, ranks.to(device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sequences += len(flat)
        comparisons += sum(len(rs) * (len(rs) - 1) // 2 - _ties(r) for _, rs, r in chunk)
    return comparisons, sequences


def _ties(ranking: list[list[int]]) -> int:
    return sum(len(t) * (len(t) - 1) // 2 for t in ranking)


def run_pairwise(model, optimizer, rankings, *, pairs_per_batch: int, device) -> tuple[int, int]:
    """One pass over every (chosen, rejected) comparison of the same rankings; each pair costs two sequences
    (the chosen and the rejected forward), batched `pairs_per_batch` pairs at a time."""
    pairs = []
    for prompt, responses, ranking in rankings:
        ranks = tiers_to_ranks(ranking, len(responses))
        for w in range(len(responses)):
            for lo in range(len(responses)):
                if ranks[w] < ranks[lo]:
                    pairs.append((prompt, responses[w], responses[lo]))
    sequences = 0
    for start in range(0, len(pairs), pairs_per_batch):
        chunk = pairs[start:start + pairs_per_batch]
        chosen_ids, chosen_mask = pad_sequences(model.encode([p for p, _, _ in chunk], [c for _, c, _ in chunk]),
                                                pad_id=model.pad_token_id)
        rejected_ids, rejected_mask = pad_sequences(
            model.encode([p for p, _, _ in chunk], [r for _, _, r in chunk]), pad_id=model.pad_token_id)
        chosen = model(chosen_ids.to(device), chosen_mask.to(device), calibrated=False)
        rejected = model(rejected_ids.to(device), rejected_mask.to(device), calibrated=False)
        loss = pairwise_loss(chosen, rejected)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sequences += 2 * len(chunk)
    return len(pairs), sequences


def bench(args: argparse.Namespace, out=print) -> list[Timing]:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or str(build_random_model(Path(tmp) / "model", layers=args.layers, embd=args.embd,
                                                         heads=args.heads, seed=args.seed))
        timings: list[Timing] = []
        for k in args.k:
            rankings = make_rankings(args.rankings, k, args.seed)
            for method in ("kwise", "pairwise"):
                torch.manual_seed(args.seed)
                model = RewardModel.from_backbone(model_dir).to(device)
                model.train()
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
                warm = rankings[: max(1, args.batch_rankings)]

                def one_pass(data, model=model, optimizer=optimizer, method=method, k=k):
                    if method == "kwise":
                        return run_kwise(model, optimizer, data, per_batch=args.batch_rankings, device=device)
                    return run_pairwise(model, optimizer, data, pairs_per_batch=args.batch_rankings * k // 2,
                                        device=device)

                one_pass(warm)  # warm-up (allocator, kernels)
                _sync(device)
                best = None
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    comparisons, sequences = one_pass(rankings)
                    _sync(device)
                    elapsed = time.perf_counter() - started
                    if best is None or elapsed < best.seconds:
                        best = Timing(k, method, len(rankings), comparisons, sequences, elapsed)
                timings.append(best)
                del model, optimizer
        out(format_table(timings, args, device, model_dir))
        return timings


def format_table(timings: list[Timing], args: argparse.Namespace, device: torch.device, model_dir: str) -> str:
    by_k: dict[int, dict[str, Timing]] = {}
    for t in timings:
        by_k.setdefault(t.k, {})[t.method] = t
    model = args.model or f"random GPT-2, {args.layers} layers, d={args.embd}, {args.heads} heads"
    lines = [
        f"{args.rankings} rankings per K; {args.batch_rankings}·K sequences per optimizer step in both ways "
        f"(K-wise: {args.batch_rankings} rankings in one forward; pairwise: {args.batch_rankings}·K/2 pairs, a "
        f"chosen and a rejected forward); model: {model}; "
        f"device: {device.type} ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads); best of {args.repeats}.",
        "",
        "| K | method | sequences | comparisons | time (s) | rankings/s | comparisons/s | K-wise speed-up "
        "(sequence ratio) |",
        "|---|--------|-----------|-------------|----------|------------|---------------|-----------------"
        "-----------------|",
    ]
    for k, methods in sorted(by_k.items()):
        kwise, pairwise = methods["kwise"], methods["pairwise"]
        ratio = pairwise.seconds / kwise.seconds
        for t in (kwise, pairwise):
            speed = f"**{ratio:.2f}×** ({pairwise.sequences / kwise.sequences:.2f}×)" if t is kwise else "1.00×"
            label = "K-wise (1 pass)" if t.method == "kwise" else "pairwise (2 passes/pair)"
            lines.append(f"| {k} | {label} | {t.sequences} | {t.comparisons} | {t.seconds:.2f} | "
                         f"{t.rankings_per_s:.1f} | {t.comparisons_per_s:.1f} | {speed} |")
    return "\n".join(lines)


def update_results(text: str, command: str, path: Path = RESULTS_FILE, note: str = "") -> None:
    """Replace (or append) only this benchmark's section of bench/RESULTS.md."""
    body = (f"{SECTION}\n\n`{command}`\n\n{text}\n\nSame model, same rankings, every comparison once; the "
            "pairwise way runs two forward passes per comparison (chosen, rejected), the K-wise way one pass "
            "per response, so it encodes (2·C(K,2) − 2·ties)/K ≈ K − 1 times fewer sequences (the sequence "
            "ratio in brackets)." + (f" {note}" if note else "") + "\n")
    existing = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if SECTION in existing:
        before, rest = existing.split(SECTION, 1)
        after = rest.split("\n## ", 1)
        tail = ("\n## " + after[1]) if len(after) == 2 else ""
        new = before + body + tail
    else:
        new = existing.rstrip("\n") + "\n\n" + body
    path.write_text(new, encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[4, 9], help="Responses per ranking (default 4 9).")
    parser.add_argument("--rankings", type=int, default=48, help="Rankings per K (default 48).")
    parser.add_argument("--batch-rankings", type=int, default=4, help="Rankings per K-wise forward (default 4); "
                                                                      "the pairwise way uses as many sequences.")
    parser.add_argument("--model", help="A model directory (default: a random GPT-2 built here).")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--embd", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="Timed passes per method; the best counts.")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
    parser.add_argument("--update-results", action="store_true", help="Rewrite this section of bench/RESULTS.md.")
    parser.add_argument("--note", default="", help="A sentence added under the table in RESULTS.md.")
    return parser


def main(argv: list[str] | None = None) -> list[Timing]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    captured: list[str] = []

    def out(text: str) -> None:
        captured.append(text)
        print(text, flush=True)

    timings = bench(args, out=out)
    if args.update_results:
        given = list(argv if argv is not None else sys.argv[1:])
        if "--note" in given:  # the note goes under the table, not into the command line shown
            at = given.index("--note")
            del given[at:at + 2]
        update_results(captured[-1], " ".join(["python bench/bench_rm_kwise.py", *given]), note=args.note)
    return timings


if __name__ == "__main__":
    main()
