from django.core.management.base import BaseCommand, CommandError

from annotate.models import Project
from annotate.services.demonstrations_import import ImportFailed, RecordFileError, import_demonstrations_file


class Command(BaseCommand):
    help = (
        "Import demonstrations (prompt + ideal response) into a project from JSONL, CSV, Parquet or a datasets "
        "directory. A record: {\"prompt\": str, \"response\" (or \"completion\"): str, \"id\", \"metadata\", "
        "\"annotator\"}, or TRL's {\"messages\": [...]}. All or nothing: any bad record and nothing is written "
        "(errors name the line or row and the field). Imported demonstrations are accepted unless --needs-review."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", help="A .jsonl, .csv or .parquet file, or a datasets save_to_disk directory.")
        parser.add_argument("--project", required=True, help="Project name (must exist).")
        parser.add_argument("--round", type=int, default=1, help="Round the prompts belong to (default 1).")
        parser.add_argument("--needs-review", action="store_true",
                            help="Import as submitted (awaiting staff review) instead of accepted.")

    def handle(self, *args, **options):
        project = Project.objects.filter(name=options["project"]).first()
        if project is None:
            raise CommandError(f"No project named '{options['project']}'.")
        try:
            summary = import_demonstrations_file(project=project, path=options["path"], round=options["round"],
                                                 needs_review=options["needs_review"])
        except (ImportFailed, RecordFileError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(str(summary)))
