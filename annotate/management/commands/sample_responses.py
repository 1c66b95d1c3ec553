from django.core.management.base import BaseCommand, CommandError

from annotate.models import Project
from annotate.services.sampling import SamplingError, sample_project_responses


class Command(BaseCommand):
    help = (
        "Sample K responses for every prompt of a project that has fewer, from a causal language model "
        "(a local directory or a hub id) with transformers: batched, left-padded, on the GPU when there is "
        "one. Near-identical and empty responses are re-sampled. Resumable: prompts that already have K "
        "responses are skipped, so a second run continues where the first stopped."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="Project name.")
        parser.add_argument("--model", required=True, help="Model directory or hub id (AutoModelForCausalLM).")
        parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) to load.")
        parser.add_argument("--k", type=int, default=None, help="Responses per prompt (default: the project's k_min).")
        parser.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (default 1.0).")
        parser.add_argument("--top-p", type=float, default=1.0, help="Nucleus sampling threshold (default 1.0 = off).")
        parser.add_argument("--top-k", type=int, default=0, help="Top-k sampling (default 0 = off).")
        parser.add_argument("--max-new-tokens", type=int, default=64, help="Longest response in tokens (default 64).")
        parser.add_argument("--batch-size", type=int, default=8, help="Sequences per generate() call (default 8).")
        parser.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
        parser.add_argument("--round", type=int, default=None,
                            help="Only prompts of this round; the responses are recorded with it.")
        parser.add_argument("--limit", type=int, default=None, help="Sample at most this many prompts in this run.")
        parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu or cuda[:N].")
        parser.add_argument("--max-tries", type=int, default=4,
                            help="Generation rounds to replace duplicate or empty responses (default 4).")
        parser.add_argument("--similarity", type=float, default=0.9,
                            help="Responses at least this similar (difflib ratio) count as duplicates (0.9).")
        parser.add_argument("--no-progress", action="store_true", help="Do not show a progress bar.")

    def handle(self, *args, **options):
        try:
            project = Project.objects.get(name=options["project"])
        except Project.DoesNotExist:
            raise CommandError(f"No project named '{options['project']}'.") from None
        try:
            summary = sample_project_responses(
                project=project,
                model=options["model"],
                revision=options["revision"],
                k=options["k"],
                temperature=options["temperature"],
                top_p=options["top_p"],
                top_k=options["top_k"],
                max_new_tokens=options["max_new_tokens"],
                batch_size=options["batch_size"],
                seed=options["seed"],
                round=options["round"],
                limit=options["limit"],
                device=options["device"],
                max_tries=options["max_tries"],
                similarity=options["similarity"],
                progress=not options["no_progress"],
            )
        except SamplingError as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:  # transformers: no such model directory / hub id, or no weights in it
            raise CommandError(f"Cannot load the model '{options['model']}': {exc}") from exc
        if summary.model:
            self.stdout.write(f"Model {summary.model} (revision {summary.revision}).")
        style = self.style.WARNING if summary.prompts_incomplete else self.style.SUCCESS
        self.stdout.write(style(str(summary)))
