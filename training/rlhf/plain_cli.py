"""What the trainers' plain CLIs (`python -m training.rlhf.sft_cli | rm_cli | ppo_cli`) share: options generated
from the config dataclass, the JSONL reporter (OUTPUT_DIR/events.jsonl; OUTPUT_DIR/STOP stops gracefully), the
error exit and a one-line JSON summary on the main process.

Exit status: 0 trained and saved, 2 bad option or input, 3 stopped on request before the end.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from training.rlhf.configs import ConfigError, add_config_arguments, config_from_args
from training.rlhf.reporter import cli_reporter, is_main_process


def build_parser(*, prog: str, description: str, config_class: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_arguments(parser, config_class)
    parser.add_argument("--quiet", action="store_true", help="Do not echo progress lines to stdout.")
    return parser


def run_cli(argv: Sequence[str] | None, *, parser: argparse.ArgumentParser, config_class: type, trainer: str,
            errors: tuple[type[BaseException], ...], summary: Callable[[Any], dict[str, Any]],
            make_reporter: Callable[..., Any] = cli_reporter, needs_output_dir: bool = True) -> int:
    """Parse `argv`, build the config, train with `trainer` ("module:function", imported only now) and print
    `summary(result)` as JSON on the main process. `errors` are the input problems reported as exit 2;
    `make_reporter(output_dir, echo=…)` the reporter (the CLIs pass their own module's `cli_reporter`, which
    tests/rlhf/mp_driver.py swaps)."""
    args = parser.parse_args(argv)
    try:
        config = config_from_args(config_class, args)
    except ConfigError as exc:
        parser.error(str(exc))
    if needs_output_dir and not config.output_dir:
        parser.error("--output-dir is required")
    module, function = trainer.split(":")
    train = getattr(importlib.import_module(module), function)
    reporter = make_reporter(config.output_dir, echo=not args.quiet)
    try:
        result = train(config, reporter=reporter)
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if is_main_process() and not args.quiet:
        print(json.dumps(summary(result)))
    return 3 if result.stopped else 0
