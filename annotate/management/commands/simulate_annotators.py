from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotate.models import Project
from annotate.services.simulation import MAX_SIMULATED_ANNOTATORS, simulate_annotations


class Command(BaseCommand):
    help = (
        "Rank a project's pending work with simulated annotators (users sim-1..sim-N) through the same queue, "
        "lease and submit services people use. Rankings are stored with source=simulated."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="Project name.")
        parser.add_argument(
            "--annotators", type=int, default=3, help=f"How many simulated annotators (1–{MAX_SIMULATED_ANNOTATORS})."
        )
        parser.add_argument(
            "--agreement", type=float, default=0.73,
            help="Pairwise agreement between two simulated annotators (InstructGPT's labelers: about 0.73).",
        )
        parser.add_argument("--seed", type=int, default=0, help="Seed of the simulated annotators' noise.")
        parser.add_argument("--limit", type=int, default=None, help="Stop after this many rankings.")

    def handle(self, *args, **options):
        project = Project.objects.filter(name=options["project"]).first()
        if project is None:
            known = ", ".join(Project.objects.values_list("name", flat=True)[:20]) or "none yet"
            raise CommandError(f"No project named {options['project']!r} (projects: {known}).")
        try:
            summary = simulate_annotations(
                project=project,
                annotators=options["annotators"],
                agreement=options["agreement"],
                seed=options["seed"],
                limit=options["limit"],
                progress=options["verbosity"] > 0,
            )
        except ValidationError as exc:
            raise CommandError(
                "; ".join(f"--{name.replace('_', '-')}: {' '.join(msgs)}" for name, msgs in exc.message_dict.items())
            ) from exc
        for line in summary.lines():
            self.stdout.write(line)
