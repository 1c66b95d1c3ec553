from django.core.management.base import BaseCommand, CommandError

from annotate.models import Project
from annotate.services.exporting import FORMATS, GROUPS, ExportError, export_snapshot


class Command(BaseCommand):
    help = (
        "Export a project's rankings as a reward-model dataset snapshot: K-wise records and pairwise "
        "(prompt, chosen, rejected, margin) records, split train/test by prompt, with manifest.json "
        "(counts, parameters, content hash). The snapshot is recorded in the database."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="Project name.")
        parser.add_argument("--out", required=True, help="Snapshot directory to create (must not exist).")
        parser.add_argument("--format", choices=FORMATS, default="datasets",
                            help="datasets (save_to_disk), parquet or jsonl (default datasets).")
        parser.add_argument("--test-fraction", type=float, default=0.1,
                            help="Share of prompts held out for the test split (default 0.1).")
        parser.add_argument("--seed", type=int, default=0, help="Seed of the train/test split (default 0).")
        parser.add_argument("--drop-flagged", action="store_true", help="Leave out rankings with any flag.")
        parser.add_argument("--drop-all-bad", action="store_true", help="Leave out rankings marked 'all bad'.")
        parser.add_argument("--group", choices=GROUPS, default="per-annotator",
                            help="One record per annotator's ranking, or one Borda consensus per prompt.")
        parser.add_argument("--round", type=int, nargs="+", action="extend", dest="rounds", default=None,
                            help="Only prompts of these rounds (repeatable).")
        parser.add_argument("--overwrite", action="store_true",
                            help="Replace an existing snapshot at --out (only once the new one is complete).")

    def handle(self, *args, **options):
        try:
            project = Project.objects.get(name=options["project"])
        except Project.DoesNotExist:
            raise CommandError(f"No project named '{options['project']}'.") from None
        try:
            snapshot = export_snapshot(
                project=project,
                out_dir=options["out"],
                format=options["format"],
                test_fraction=options["test_fraction"],
                seed=options["seed"],
                drop_flagged=options["drop_flagged"],
                drop_all_bad=options["drop_all_bad"],
                group=options["group"],
                rounds=options["rounds"],
                overwrite=options["overwrite"],
            )
        except ExportError as exc:
            raise CommandError(str(exc)) from exc
        counts = snapshot.counts
        self.stdout.write(
            self.style.SUCCESS(
                f"Wrote snapshot {snapshot.path} ({snapshot.format}), content hash {snapshot.content_hash}: "
                f"K-wise {counts['kwise']['train']} train / {counts['kwise']['test']} test, pairwise "
                f"{counts['pairwise']['train']} train / {counts['pairwise']['test']} test, prompts "
                f"{counts['prompts']['train']} train / {counts['prompts']['test']} test; "
                f"{counts['tied_pairs_excluded']} tied pairs excluded, {counts['dropped_flagged']} flagged and "
                f"{counts['dropped_all_bad']} all-bad rankings dropped."
            )
        )
