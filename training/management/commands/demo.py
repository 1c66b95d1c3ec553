"""`python manage.py demo`: the whole RLHF loop on this machine, then the web app to explore it."""

import signal
from contextlib import contextmanager

from django.core.management.base import BaseCommand, CommandError

from training.demo import DemoError, DemoOptions, DemoSize, demo_services, run_demo, serve_forever


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM both interrupt the demo, so that it stops its children (worker, web server) on the
    way out. Installed explicitly: a shell starts a background job with SIGINT ignored, which Python then
    keeps, and SIGTERM's default ends the process without running any cleanup."""
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, _interrupt)
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_children(services) -> None:
    """Stop the worker and the web server; a further signal while waiting for them kills them at once."""
    try:
        services.stop()
    except KeyboardInterrupt:
        for child in (getattr(services, "web", None), getattr(services, "worker", None)):
            if child is not None and child.poll() is None:
                child.kill()


class Command(BaseCommand):
    help = (
        "Run the RLHF loop end to end on the demo task (tiny local model, no network, no GPU): build the "
        "model, create users and a project, import prompts, have simulated annotators write demonstrations "
        "(accepted in staff review) and fine-tune the model on them (SFT), sample responses from the SFT model and "
        "rank them through the annotation queue, export a snapshot, train the reward model and PPO from the SFT "
        "model through the job queue (a db_worker started here runs them; watch them live on the dashboard), "
        "compare the oracle score of the pre-trained, SFT and PPO models on the same held-out prompts, sample a "
        "new round from the PPO policy, then keep serving on 127.0.0.1:8000 until Ctrl+C. A second run reuses "
        "what is done."
    )

    def add_arguments(self, parser):
        parser.add_argument("--size", choices=[s.value for s in DemoSize], default=DemoSize.FULL.value,
                            help="'full' (the README figure, a few minutes on 2 CPU cores) or 'small' (under two "
                                 "minutes; the tests run it).")
        parser.add_argument("--no-serve", action="store_true",
                            help="Run the loop and stop; do not start the web server.")
        parser.add_argument("--addr", default="127.0.0.1:8000", help="Where to serve (default 127.0.0.1:8000).")
        parser.add_argument("--seed", type=int, default=0, help="Seed for prompts, sampling, annotators and training.")
        parser.add_argument("--fresh", action="store_true",
                            help="Start over in a new demo project (the earlier ones, their rankings and runs are kept).")

    def handle(self, *args, **options):
        demo_options = DemoOptions(size=DemoSize(options["size"]), seed=options["seed"], fresh=options["fresh"])
        addr = None if options["no_serve"] else options["addr"]
        services = demo_services()
        with stop_on_signals():
            self._run(demo_options=demo_options, addr=addr, services=services)

    def _run(self, *, demo_options, addr, services):
        try:
            result = run_demo(options=demo_options, services=services, out=self.stdout.write, serve_addr=addr)
            if addr:
                serve_forever(addr=addr, result=result, services=services, out=self.stdout.write)
        except (DemoError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        except KeyboardInterrupt:
            self.stderr.write("\nInterrupted.")
            services.stop_runs(out=self.stdout.write)
            raise CommandError("Interrupted: run the demo again to continue where it stopped (a run cut off with "
                               "a checkpoint resumes from it).", returncode=130) from None
        finally:
            _stop_children(services)
