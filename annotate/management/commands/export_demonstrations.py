from django.core.management.base import BaseCommand, CommandError

from annotate.models import Project
from annotate.services.export_sft import SFT_FORMATS, export_sft_snapshot
from annotate.services.exporting import ExportError


class Command(BaseCommand):
    help = (
        "Export a project's accepted demonstrations as an SFT snapshot (prompt, response, and chat messages when "
        "the project uses the chat template), split train/test by prompt with manifest.json (counts, prompt "
        "format, content hash). The snapshot is recorded in the database with kind 'sft'; train_sft reads it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="Project name.")
        parser.add_argument("--out", required=True, help="Snapshot directory to create (must not exist).")
        parser.add_argument("--format", choices=SFT_FORMATS, default="jsonl", help="jsonl or parquet (default jsonl).")
        parser.add_argument("--test-fraction", type=float, default=0.1,
                            help="Share of prompts held out for the test split (default 0.1).")
        parser.add_argument("--seed", type=int, default=0,
                            help="Seed of the train/test split (default 0; the ranking export's split with the same "
                            "seed puts each prompt on the same side).")
        parser.add_argument("--round", type=int, nargs="+", action="extend", dest="rounds", default=None,
                            help="Only prompts of these rounds (repeatable).")
        parser.add_argument("--overwrite", action="store_true",
                            help="Replace an existing snapshot at --out (only once the new one is complete).")

    def handle(self, *args, **options):
        project = Project.objects.filter(name=options["project"]).first()
        if project is None:
            raise CommandError(f"No project named '{options['project']}'.")
        try:
            snapshot = export_sft_snapshot(
                project=project, out_dir=options["out"], format=options["format"],
                test_fraction=options["test_fraction"], seed=options["seed"], rounds=options["rounds"],
                overwrite=options["overwrite"],
            )
        except ExportError as exc:
            raise CommandError(str(exc)) from exc
        counts = snapshot.counts
        self.stdout.write(self.style.SUCCESS(
            f"Wrote SFT snapshot {snapshot.path} ({snapshot.format}, prompt format {project.prompt_format}), content "
            f"hash {snapshot.content_hash}: {counts['train']} train / {counts['test']} test demonstrations, prompts "
            f"{counts['prompts']['train']} train / {counts['prompts']['test']} test, {counts['annotators']} "
            f"annotators; {counts['not_accepted']} not accepted (not exported)."
        ))
