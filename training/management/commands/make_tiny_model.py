"""`python manage.py make_tiny_model OUT_DIR`: build the demo task's tokenizer and tiny GPT-2 (offline)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from training.rlhf.chat_format import PromptFormat, format_prompt
from training.rlhf.configs import ConfigError, add_config_arguments, config_from_args
from training.rlhf.demo_task import demo_prompts
from training.rlhf.tiny_model import (
    TinyModelSpec,
    build_hash,
    build_tiny_model,
    generate_samples,
    read_build_info,
    tiny_model_is_current,
)


class Command(BaseCommand):
    help = (
        "Build the demo task's tiny policy into OUT_DIR, with no network: a byte-level BPE tokenizer trained "
        "on the demo corpus (PAD distinct from EOS) and a small GPT-2 pre-trained on it. Deterministic for "
        "a seed; does nothing when OUT_DIR already holds the same build. Loads with "
        "AutoTokenizer/AutoModelForCausalLM.from_pretrained(OUT_DIR). With --chat true the tokenizer also carries "
        "a tiny chat template ('### User:' / '### Assistant:' turns, ending with EOS): a stand-in for an instruct "
        "model, used with prompt_format chat."
    )

    def add_arguments(self, parser):
        parser.add_argument("out_dir", metavar="OUT_DIR", help="Directory to write the model and tokenizer to.")
        parser.add_argument("--samples", type=int, default=3, help="Sample generations to print at the end (default: 3).")
        add_config_arguments(parser, TinyModelSpec)

    def handle(self, *args, **options):
        try:
            spec = config_from_args(TinyModelSpec, options)
        except ConfigError as exc:
            flag = "--" + exc.field.replace("_", "-")
            raise CommandError(f"{flag}: {str(exc).removeprefix(exc.field + ': ')}") from exc
        if options["samples"] < 0:
            raise CommandError(f"--samples: must be >= 0, got {options['samples']}")
        out_dir = options["out_dir"]
        current = tiny_model_is_current(out_dir, spec=spec)
        verbose = options["verbosity"] >= 2
        try:
            path = build_tiny_model(
                out_dir, spec=spec, progress=options["verbosity"] >= 1 and not current,
                log=self.stdout.write if verbose else None,
            )
        except FileExistsError as exc:
            raise CommandError(str(exc)) from exc

        info = read_build_info(path) or {}
        state = "already up to date" if current else f"built in {info.get('build_seconds', '?')} s"
        self.stdout.write(self.style.SUCCESS(f"{path}: {state}"))
        self.stdout.write(
            f"hash {build_hash(spec)[:12]}, vocabulary {info.get('vocab_size')}, "
            f"{info.get('parameters', 0) / 1e6:.2f} M parameters, "
            f"held-out loss {info.get('eval_loss', float('nan')):.3f} nats/token"
        )
        if options["samples"]:
            prompts = demo_prompts(n=options["samples"], seed=spec.seed, split="test")
            fed = prompts
            if spec.chat:  # the model answers the prompt in its template, as every stage will give it
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(path)
                fed = [format_prompt(tokenizer, prompt, prompt_format=PromptFormat("chat")) for prompt in prompts]
            for prompt, response in zip(prompts, generate_samples(path, fed, seed=spec.seed)):
                self.stdout.write(f"  {prompt}{response}")
