"""Runs a trainer's plain CLI inside a `torchrun` process for tests/rlhf/test_multiprocess.py, and leaves behind
what the test checks on every rank (the CLI itself stays unchanged):

    torchrun --standalone --nproc_per_node 2 -m tests.rlhf.mp_driver training.rlhf.rm_cli --dataset … --model …

writes MP_DRIVER_OUT/rank<r>.json: the CLI's exit code, a digest of each trained module's weights, the metrics
that rank computed (the main rank reports them to events.jsonl; the others would report nowhere, so a shadow
reporter keeps them) and the process group's size. MP_STOP_AFTER=N asks the run to stop gracefully once
iteration N was reported (by creating OUTPUT_DIR/STOP, as a user would).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from pathlib import Path


def digest(module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def main() -> int:
    import torch

    from training.rlhf import ppo_trainer, reporter, rm_trainer

    torch.set_num_threads(1)
    cli_name, argv = sys.argv[1], sys.argv[2:]
    out = Path(os.environ["MP_DRIVER_OUT"])
    rank = int(os.environ.get("RANK", "0"))
    captured: dict = {}
    shadow: list = []

    class ShadowReporter(reporter.NullReporter):
        def on_metrics(self, step, metrics):
            shadow.append([step, dict(metrics)])

    rm_trainer.NullReporter = ShadowReporter
    ppo_trainer.NullReporter = ShadowReporter

    original_rm = rm_trainer.RewardModel.from_backbone

    def from_backbone(*args, **kwargs):
        model = original_rm(*args, **kwargs)
        captured["reward_model"] = model
        return model

    rm_trainer.RewardModel.from_backbone = from_backbone
    original_build = ppo_trainer.build_ppo_models

    def build(settings, *, device):
        models = original_build(settings, device=device)
        captured["actor"], captured["critic"] = models.actor, models.critic
        return models

    ppo_trainer.build_ppo_models = build
    cli = importlib.import_module(cli_name)
    stop_after = int(os.environ.get("MP_STOP_AFTER", "0"))
    if stop_after:
        make_reporter = cli.cli_reporter

        def stopping_reporter(output_dir, *, echo):
            inner = make_reporter(output_dir, echo=echo)
            report_metrics = inner.on_metrics

            def on_metrics(step, metrics):
                report_metrics(step, metrics)
                if step >= stop_after and "reward" in metrics:
                    (Path(output_dir) / "STOP").touch()

            inner.on_metrics = on_metrics
            return inner

        cli.cli_reporter = stopping_reporter
    code = cli.main(argv)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    (out / f"rank{rank}.json").write_text(json.dumps({
        "code": code, "world": world, "metrics": shadow,
        "digests": {name: digest(module) for name, module in captured.items()},
    }), encoding="utf-8")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
