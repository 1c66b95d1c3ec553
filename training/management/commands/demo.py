"""`python manage.py demo`: the whole RLHF loop on this machine, then the web app to explore it."""

from django.core.management.base import BaseCommand, CommandError

from training.demo import DemoOptions, DemoSize, run_demo, serve


class Command(BaseCommand):
    help = (
        "Run the RLHF loop end to end on the demo task (tiny local model, no network, no GPU): build the "
        "model, create users and a project, sample, simulate annotators, export, train the reward model and "
        "PPO, sample a new round, then serve the app on 127.0.0.1:8000 with a job worker."
    )

    def add_arguments(self, parser):
        parser.add_argument("--size", choices=[s.value for s in DemoSize], default=DemoSize.FULL.value,
                            help="'full' (the README figure, a few minutes) or 'small' (for tests).")
        parser.add_argument("--no-serve", action="store_true", help="Stop after the loop; do not start the server.")
        parser.add_argument("--addr", default="127.0.0.1:8000", help="Where to serve (default 127.0.0.1:8000).")
        parser.add_argument("--seed", type=int, default=0, help="Seed for prompts, sampling and annotators.")

    def handle(self, *args, **options):
        demo_options = DemoOptions(size=DemoSize(options["size"]), seed=options["seed"])
        try:
            result = run_demo(options=demo_options, out=self.stdout.write, style=self.style)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if not options["no_serve"]:
            serve(addr=options["addr"], result=result, out=self.stdout.write)
