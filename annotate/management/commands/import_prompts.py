from django.core.management.base import BaseCommand, CommandError

from annotate.services.importing import ImportFailed, import_file


class Command(BaseCommand):
    help = (
        "Import prompts (optionally with responses to rank and existing rankings) into a project from a JSONL, "
        "CSV or Parquet file or a datasets directory saved with save_to_disk. The project is created with "
        "default settings if missing. All or nothing: any bad record aborts the import and is reported with "
        "its line or row and field. Prompts already in the project's round are skipped and counted; a prompt repeated "
        "with other responses has them merged into its first copy (de-duplicated, counted) unless --strict."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="A .jsonl, .csv or .parquet file, or a datasets directory.")
        parser.add_argument("--project", required=True, help="Project name (created if it does not exist).")
        parser.add_argument(
            "--round", type=int, default=None, help="Round of the imported prompts (default: the project's latest)."
        )
        parser.add_argument(
            "--max-record-bytes", type=int, default=None,
            help="Largest accepted record (default: settings.WORKBENCH_MAX_IMPORT_RECORD_BYTES or 1 MiB).",
        )
        parser.add_argument(
            "--strict", action="store_true",
            help="Reject the file if a prompt appears twice with different responses (default: merge them).",
        )
        parser.add_argument("--no-progress", action="store_true", help="Do not show a progress bar.")

    def handle(self, *args, **options):
        if options["max_record_bytes"] is not None and options["max_record_bytes"] < 1:
            raise CommandError("--max-record-bytes must be positive")
        try:
            summary = import_file(
                path=options["file"],
                project_name=options["project"],
                round=options["round"],
                progress=not options["no_progress"],
                max_bytes=options["max_record_bytes"],
                strict=options["strict"],
            )
        except ImportFailed as exc:
            raise CommandError(str(exc)) from exc
        if summary.project_created:
            self.stdout.write(f"Created project '{summary.project}' with default settings.")
        self.stdout.write(self.style.SUCCESS(str(summary)))
