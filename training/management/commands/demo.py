"""`python manage.py demo`: the whole RLHF loop on this machine, then the web app to explore it."""

from django.core.management.base import BaseCommand, CommandError

from training.demo import DemoError, DemoOptions, DemoSize, demo_services, run_demo, serve_forever


class Command(BaseCommand):
    help = (
        "Run the RLHF loop end to end on the demo task (tiny local model, no network, no GPU): build the "
        "model, create users and a project, import prompts and sample responses, rank them with simulated "
        "annotators through the annotation queue, export a snapshot, train the reward model and PPO through the "
        "job queue (a db_worker started here runs them; watch them live on the dashboard), sample a new round "
        "from the PPO policy, then keep serving on 127.0.0.1:8000 until Ctrl+C. A second run reuses what is done."
    )

    def add_arguments(self, parser):
        parser.add_argument("--size", choices=[s.value for s in DemoSize], default=DemoSize.FULL.value,
                            help="'full' (the README figure, a few minutes on 2 CPU cores) or 'small' (about a "
                                 "minute; the tests run it).")
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
            services.stop()
