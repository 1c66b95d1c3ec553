"""`manage.py demo` stops all its children on SIGINT and on SIGTERM, also when started in the background (where
the shell hands it SIGINT ignored)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from django.core.management import CommandError, call_command

from training.management.commands import demo as demo_command


class FakeServices:
    def __init__(self):
        self.children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
        self.web, self.worker = self.children
        self.stopped_runs = False

    def stop_runs(self, *, out):
        self.stopped_runs = True

    def stop(self):
        for child in self.children:
            child.terminate()
            child.wait(timeout=10)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("background", [False, True])
def test_a_signal_stops_the_demo_and_all_its_children(monkeypatch, signum, background):
    services = FakeServices()

    def run_demo(**_):
        os.kill(os.getpid(), signum)
        time.sleep(5)  # interrupted by the handler long before this ends
        raise AssertionError("the signal did not interrupt the demo")

    monkeypatch.setattr(demo_command, "demo_services", lambda: services)
    monkeypatch.setattr(demo_command, "run_demo", run_demo)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    if background:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(CommandError) as stopped:
            call_command("demo", "--no-serve")
        assert stopped.value.returncode == 130
        assert services.stopped_runs  # the runs were asked to stop at a checkpoint
        assert all(child.poll() is not None for child in services.children)  # no child left running
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]  # handlers restored
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        for child in services.children:
            if child.poll() is None:
                child.kill()
