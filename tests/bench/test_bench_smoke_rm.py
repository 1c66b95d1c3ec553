"""The reward-model benchmark runs end to end at toy sizes (the figures themselves are in bench/RESULTS.md)."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_rm_kwise.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_rm_kwise", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_rm_kwise_smoke(capsys, tmp_path):
    bench = load_bench()
    timings = bench.main(["--k", "4", "--rankings", "3", "--batch-rankings", "2", "--layers", "1", "--embd", "32",
                          "--heads", "2", "--repeats", "1"])
    kwise, pairwise = timings
    assert (kwise.method, pairwise.method) == ("kwise", "pairwise")
    # same data: the same comparisons; the pairwise way runs two sequences per comparison
    assert kwise.comparisons == pairwise.comparisons > 0
    assert kwise.sequences == 3 * 4 and pairwise.sequences == 2 * pairwise.comparisons
    out = capsys.readouterr().out
    assert "| 4 | K-wise (1 pass) |" in out and "| 4 | pairwise (2 passes/pair) |" in out

    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Someone else's section\n\nkeep me\n")
    bench.update_results("| table |", "python bench/bench_rm_kwise.py", path=results)
    bench.update_results("| new table |", "python bench/bench_rm_kwise.py", path=results)
    text = results.read_text()
    assert "keep me" in text and "| new table |" in text and "| table |\n" not in text
    assert text.count(bench.SECTION) == 1
