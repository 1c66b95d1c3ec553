"""gunicorn config file for bench/bench_faults.py (`gunicorn -c bench/fault_gunicorn.py webapp.wsgi`).

With WORKBENCH_FAULT_MARKER=<path> in the environment, the first ranking any worker saves pauses inside its
submit transaction (after the Ranking row is inserted, before the commit), writes the worker's pid to <path>
and sleeps, so the benchmark can SIGKILL that worker in the middle of the submit. Only once: the marker's
".armed" file is removed when it fires. Without the variable this is a plain config.
"""

import os
import time
from pathlib import Path

workers = int(os.environ.get("WORKBENCH_FAULT_WORKERS", "2"))
timeout = 120
graceful_timeout = 5
accesslog = None


def post_worker_init(worker):
    marker = os.environ.get("WORKBENCH_FAULT_MARKER")
    if not marker:
        return
    from django.db.models.signals import post_save

    from annotate.models import Ranking

    armed = Path(marker + ".armed")

    def pause_mid_submit(sender, instance, created, **kwargs):
        if not created:
            return
        try:
            armed.unlink()  # atomic: exactly one worker, once, gets to pause
        except FileNotFoundError:
            return
        Path(marker).write_text(str(os.getpid()))
        time.sleep(300)

    post_save.connect(pause_mid_submit, sender=Ranking, weak=False, dispatch_uid="fault-pause")
