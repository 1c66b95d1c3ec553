"""The annotation load benchmark runs end to end at toy sizes: its own SQLite database, gunicorn, a few annotators
for a few seconds, the database checks (the figures themselves are in bench/RESULTS.md)."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_annotation_load.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_annotation_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_annotation_load_smoke(tmp_path):
    bench = load_bench()
    results = bench.main(["--db", "sqlite", "--prompts", "40", "--annotators", "3", "--seconds", "3",
                          "--mode", "saturation", "paced", "--skip-rate", "0.2", "--abandon-rate", "0.2"])
    assert [(r.mode, r.annotators) for r in results] == [("saturation", 3), ("paced", 3)]
    for r in results:
        assert r.errors == 0, r.error_samples
        assert r.server_5xx_in_log == 0
        assert r.checks and all(r.checks.values()), r.checks
        assert r.latencies_ms["next"] and r.latencies_ms["draft"]
    assert results[0].submits > 0  # at saturation 3 annotators finish some rankings in 3 s

    out = tmp_path / "RESULTS.md"
    out.write_text("# Benchmark results\n\n## Someone else's section\n\nkeep me\n")
    bench.update_results(bench.table(results), "python bench/bench_annotation_load.py", path=out)
    bench.update_results(bench.table(results), "python bench/bench_annotation_load.py", path=out)
    text = out.read_text()
    assert "keep me" in text and text.count(bench.SECTION) == 1 and "| sqlite | paced | 40 | 3 |" in text
