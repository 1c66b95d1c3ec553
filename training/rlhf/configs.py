"""Helpers shared by the trainer configs: every field carries help text, and the same dataclass drives the
plain CLI, the manage.py commands, the dashboard's launch forms and the `config.json` saved with each run.

Declare fields with `option(default, "help text", choices=…)`; validate in `__post_init__` with the
`check_*` functions below (or by raising `ConfigError` that names the field).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is invalid; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def option(default: Any, help: str, *, choices: tuple | None = None, cli: bool = True) -> Any:  # noqa: A002
    """A dataclass field with help text (and optional choices); mutable defaults are copied per instance."""
    metadata = {"help": help, "choices": choices, "cli": cli}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# --- validation in __post_init__: each check raises ConfigError naming the field ---------------------------

BF16_CHOICES = ("auto", "true", "false")


def check_integer(config: Any, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, f"must be an integer ≥ {minimum}, got {value!r}")


def check_number(config: Any, name: str, low: float, high: float, *, low_open: bool = False,
                 high_open: bool = True) -> None:
    """A finite number in [low, high) by default; `low_open` / `high_open` choose the interval's ends."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(name, f"must be a number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ConfigError(name, f"must be in {lo}{low}, {high}{hi}, got {value!r}")


def check_choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    if getattr(config, name) not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {getattr(config, name)!r}")


def check_required(config: Any, *names: str) -> None:
    """Non-blank strings."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(name, "is required")


def check_strings(config: Any, *names: str) -> None:
    for name in names:
        if not isinstance(getattr(config, name), str):
            raise ConfigError(name, f"must be a string, got {getattr(config, name)!r}")


def check_booleans(config: Any, *names: str) -> None:
    for name in names:
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(name, f"must be true or false, got {getattr(config, name)!r}")


def normalise_bf16(config: Any) -> None:
    """`bf16` is auto/true/false; a plain bool (from a form or JSON) is accepted and stored as text."""
    if isinstance(config.bf16, bool):
        config.bf16 = "true" if config.bf16 else "false"
    check_choice(config, "bf16", BF16_CHOICES)


def normalise_lora_target_modules(config: Any) -> None:
    """`lora_target_modules`: a list of module names (a string is split on commas and spaces), or
    ["all-linear"] alone."""
    if isinstance(config.lora_target_modules, str):
        config.lora_target_modules = [m for m in config.lora_target_modules.replace(",", " ").split() if m]
    modules = config.lora_target_modules
    if not isinstance(modules, list) or not modules or not all(isinstance(m, str) and m.strip() for m in modules):
        raise ConfigError("lora_target_modules", "must name at least one module (or 'all-linear')")
    if "all-linear" in modules and len(modules) > 1:
        raise ConfigError("lora_target_modules", "'all-linear' cannot be combined with module names")


# --- conversions ------------------------------------------------------------------------------------------


def _resolved_types(config_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(config_cls)


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(plain type, optional?) for annotations like `int`, `float | None`, `str`, `list[str]`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        base, _ = _base_type(args[0])
        return base, True
    if origin in (list, tuple):
        return list, False
    return annotation, False


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(config_cls: type[T], values: dict[str, Any], *, strict: bool = True) -> T:
    """Build a config from a dict (a saved config.json, a form); unknown keys are an error when strict."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - names)
    if unknown and strict:
        raise ConfigError(unknown[0], f"unknown option for {config_cls.__name__}")
    return config_cls(**{k: v for k, v in values.items() if k in names})


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_config(config_cls: type[T], path: str | Path) -> T:
    return config_from_dict(config_cls, json.loads(Path(path).read_text(encoding="utf-8")), strict=False)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, *, exclude: set[str] = frozenset()) -> None:
    """Add one `--field-name` option per dataclass field, with its help text and default."""
    hints = _resolved_types(config_cls)
    group = parser.add_argument_group(f"{config_cls.__name__} options")
    for f in dataclasses.fields(config_cls):
        if f.name in exclude or not f.metadata.get("cli", True):
            continue
        base, optional = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        # argparse %-formats help strings: a literal "%" ("20 %") must be doubled.
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if base is bool:
            kwargs["type"] = _parse_bool
            kwargs["metavar"] = "BOOL"
        elif base is list:
            kwargs["nargs"] = "*"
        elif base in (int, float, str):
            kwargs["type"] = base
        else:
            kwargs["type"] = str
        del optional  # "none" for optional values is not offered on the CLI; leave the option out instead
        group.add_argument(flag, **kwargs)


def config_from_args(config_cls: type[T], args: argparse.Namespace | dict[str, Any], **overrides: Any) -> T:
    """A config from parsed options (only those given) plus explicit overrides."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    names = {f.name for f in dataclasses.fields(config_cls)}
    values = {k: v for k, v in given.items() if k in names and v is not None}
    values.update(overrides)
    return config_cls(**values)


def describe_fields(config_cls: type) -> list[dict[str, Any]]:
    """Field descriptions for generated forms: name, type, default, help, choices, optional."""
    hints = _resolved_types(config_cls)
    described = []
    for f in dataclasses.fields(config_cls):
        base, optional = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        described.append(
            {
                "name": f.name,
                "type": base.__name__ if isinstance(base, type) else str(base),
                "default": default,
                "help": f.metadata.get("help", ""),
                "choices": f.metadata.get("choices"),
                "optional": optional,
            }
        )
    return described
