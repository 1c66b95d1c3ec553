from django.core.management.base import BaseCommand

from training.jobs import reap_stale_runs


class Command(BaseCommand):
    help = (
        "Mark runs whose worker went silent (no heartbeat for WORKBENCH_STALE_AFTER_SECONDS) as failed, with "
        "'worker lost' and the time of the last heartbeat; also fails queued runs whose queue task ended "
        "without running them, and stale jobs. The dashboard does the same on every load; run this from cron "
        "when nobody is watching."
    )

    def handle(self, *args, **options):
        marked = reap_stale_runs()
        for run in marked:
            self.stdout.write(f"{run}: {run.error.splitlines()[0]}")
        self.stdout.write(self.style.SUCCESS(f"{len(marked)} stale run{'s' if len(marked) != 1 else ''} marked failed."))
