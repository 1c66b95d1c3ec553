"""A stand-in for `manage.py train_rm --run-id N` in the worker tests: a real child process that uses the real
run services (`training.services.executing`, the RunReporter), but trains nothing.

    python tests/training/fake_trainer.py --run-id N --mode succeed|crash|die|until-cancel|ignore-cancel
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

import django  # noqa: E402

django.setup()

from training.models import TrainingRun  # noqa: E402
from training.services import RunCancelled, executing  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-id", type=int, required=True)
    parser.add_argument("--mode", default="succeed")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    run = TrainingRun.objects.get(pk=args.run_id)
    out = Path(run.output_dir)
    print(f"fake trainer for run {run.pk} in {out}", flush=True)
    with executing(run=run, echo=print) as reporter:
        step = 0
        while True:
            step += 1
            reporter.on_metrics(step, {"loss": 1.0 / step, "accuracy": 0.5 + 0.05 * step})
            reporter.on_log(f"step {step} loss {1.0 / step:.3f}")
            if args.mode == "crash" and step == 2:
                raise RuntimeError("boom: the fake trainer crashed at step 2")
            if args.mode == "die" and step == 2:
                print("about to vanish", flush=True)
                os._exit(3)
            if args.mode == "until-cancel" and reporter.should_stop():
                checkpoint = out / "checkpoints" / f"step-{step}"
                checkpoint.mkdir(parents=True, exist_ok=True)
                (checkpoint / "state.json").write_text(f'{{"step": {step}}}')
                reporter.on_checkpoint(step, str(checkpoint))
                reporter.on_log(f"stopped at step {step} with a checkpoint")
                raise RunCancelled()
            if args.mode in ("until-cancel", "ignore-cancel"):
                time.sleep(0.2)
                if step > 600:
                    raise RuntimeError("never cancelled")
                continue
            if step >= args.steps:
                break
        reporter.on_evaluation({"accuracy": 0.75})
    print("done", flush=True)


if __name__ == "__main__":
    main()
