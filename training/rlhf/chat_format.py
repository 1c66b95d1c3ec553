"""The prompt format: how a prompt's text becomes the text a model continues. One function, `format_prompt`,
that every stage calls — sampling for annotation, SFT, the reward model's input, PPO rollouts, a new round and
the evaluations — so that a model sees its prompts the same way in all of them.

Two formats:
- **plain** — the prompt text as-is; the model continues it (the demo task, base models);
- **chat** — the tokenizer's own chat template (`tokenizer.apply_chat_template`) over
  `[{"role": "system", …}?, {"role": "user", "content": prompt}]` with the generation prompt added, so an
  instruct model answers the prompt instead of continuing it (OpenRLHF's `--apply_chat_template`, TRL's
  conversational datasets).

The response is always the assistant's text alone, followed by EOS (docs/architecture.md, "Model text
format"): a chat template's end-of-turn token is the tokenizer's EOS for the instruct models we know of
(Qwen2.5's `<|im_end|>`, the tiny demo chat model's `<|endoftext|>`).

A format is stored as a plain dict with every run and with every reward model (`PromptFormat.as_dict`);
`check_same_format` refuses a mismatch with a message that names both. A config carries it as two fields,
`prompt_format` and `system_prompt` (`format_of_config` turns them into a `PromptFormat` or a ConfigError); a
project as the same two columns (`format_of_project`: a plain project's leftover system prompt is unused).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from training.rlhf.configs import ConfigError

PROMPT_FORMATS = ("plain", "chat")
SYSTEM_PROMPT_MAX_CHARS = 4000


class PromptFormatError(ValueError):
    """A prompt format that cannot be applied (unknown kind, no chat template) or that does not match the one
    a model was trained with; the message is for the user."""


@dataclass(frozen=True)
class PromptFormat:
    """`kind` plain | chat; `system_prompt` (chat only) goes first as a system message when not empty."""

    kind: str = "plain"
    system_prompt: str = ""

    def __post_init__(self) -> None:
        if self.kind not in PROMPT_FORMATS:
            raise PromptFormatError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {self.kind!r}")
        if not isinstance(self.system_prompt, str):
            raise PromptFormatError(f"system_prompt must be text, got {self.system_prompt!r}")
        if self.system_prompt and self.kind != "chat":
            raise PromptFormatError("system_prompt needs prompt_format 'chat' (a plain prompt has no system turn)")
        if len(self.system_prompt) > SYSTEM_PROMPT_MAX_CHARS:
            raise PromptFormatError(f"system_prompt is {len(self.system_prompt)} characters; the limit is "
                                    f"{SYSTEM_PROMPT_MAX_CHARS}")

    @property
    def is_chat(self) -> bool:
        return self.kind == "chat"

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "system_prompt": self.system_prompt}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any] | None) -> PromptFormat:
        """From a stored dict; None or {} (a model saved before formats were recorded) is plain. The kind is
        read from "kind" (as `as_dict` writes it) or "format" (as the SFT snapshot manifest writes it)."""
        if not value:
            return cls()
        kind = value.get("kind", value.get("format", "plain"))
        return cls(kind=str(kind or "plain"), system_prompt=str(value.get("system_prompt", "") or ""))

    def describe(self) -> str:
        if not self.is_chat:
            return "plain text"
        return "the chat template" + (f" with the system prompt {self.system_prompt[:60]!r}" if self.system_prompt
                                      else " (no system prompt)")


PLAIN = PromptFormat()


def format_of_config(config: Any) -> PromptFormat:
    """The format a trainer config declares in its `prompt_format` and `system_prompt` fields; a bad value is
    a ConfigError naming the field (called from the configs' `__post_init__`)."""
    kind, system_prompt = config.prompt_format, config.system_prompt
    if kind not in PROMPT_FORMATS:
        raise ConfigError("prompt_format", f"must be one of {', '.join(PROMPT_FORMATS)}, got {kind!r}")
    try:
        return PromptFormat(kind=kind, system_prompt=system_prompt)
    except PromptFormatError as exc:
        raise ConfigError("system_prompt", str(exc)) from None


def format_of_project(*, kind: str, system_prompt: str) -> PromptFormat:
    """A project's format from its two columns: under plain the project's system prompt is unused (kept, so
    switching back to chat restores it), so it is dropped rather than refused."""
    return PromptFormat(kind=kind, system_prompt=system_prompt if kind == "chat" else "")


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_messages(prompt: str, *, system_prompt: str = "") -> list[dict[str, str]]:
    """The conversation a chat prompt stands for: an optional system turn, then the user's prompt."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": prompt}]


def format_prompt(tokenizer: Any, prompt: str, *, prompt_format: PromptFormat) -> str:
    """The text a model continues for `prompt` under `prompt_format`: the prompt itself (plain), or the
    tokenizer's chat template applied to the system + user turns with the assistant's generation prompt.

    Tokenise a chat-formatted text with `add_special_tokens=False` (the template writes its own BOS, if any).
    Raises PromptFormatError when the format is chat and the tokenizer has no chat template."""
    if not prompt_format.is_chat:
        return prompt
    return format_messages(tokenizer, chat_messages(prompt, system_prompt=prompt_format.system_prompt),
                           prompt_format=prompt_format)


def format_messages(tokenizer: Any, messages: Sequence[Mapping[str, str]], *, prompt_format: PromptFormat) -> str:
    """A conversation that ends with a user turn, as the text the model answers (chat template with the
    generation prompt). A system prompt of the format is put first when the conversation has none."""
    if not prompt_format.is_chat:
        raise PromptFormatError("a conversation (messages) needs prompt_format 'chat'")
    if not has_chat_template(tokenizer):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise PromptFormatError(f"prompt_format is 'chat' but the tokenizer of {name} has no chat template; use "
                                "prompt_format 'plain' or a model whose tokenizer carries one")
    turns = [dict(m) for m in messages]
    if prompt_format.system_prompt and not any(m.get("role") == "system" for m in turns):
        turns.insert(0, {"role": "system", "content": prompt_format.system_prompt})
    try:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja2's TemplateError, e.g. a template that allows no system turn
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise PromptFormatError(f"the chat template of {name} refused the conversation ({exc}); "
                                + ("try without a system prompt" if prompt_format.system_prompt
                                   else "check the roles it allows")) from exc


def split_conversation(messages: Sequence[Mapping[str, str]]) -> tuple[list[dict[str, str]], str]:
    """A demonstration's chat messages → (the turns before the last assistant turn, that assistant's text).
    Raises PromptFormatError when the conversation does not end with an assistant turn after a user turn."""
    turns = [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in messages]
    if len(turns) < 2 or turns[-1]["role"] != "assistant" or turns[-2]["role"] != "user":
        raise PromptFormatError("messages must end with a user turn followed by the assistant's answer")
    return turns[:-1], turns[-1]["content"]


def add_special_tokens_for(prompt_format: PromptFormat) -> bool:
    """Whether tokenising a formatted prompt should add the tokenizer's special tokens: plain text yes (as
    sampling always did), a chat-formatted text no (its template wrote them)."""
    return not prompt_format.is_chat


def check_same_format(*, trained: PromptFormat, requested: PromptFormat, what: str) -> None:
    """Refuse to use a model (`what`: "the reward model at …") with a prompt format it was not trained on."""
    if trained == requested:
        return
    if trained.describe() == requested.describe():  # two long system prompts that differ after the shown part
        detail = f"a different system prompt ({len(trained.system_prompt)} vs {len(requested.system_prompt)} characters)"
        raise PromptFormatError(f"{what} was trained on prompts in the chat template with another system prompt "
                                f"than this run's: {detail}; use the same prompt format (or retrain it)")
    raise PromptFormatError(f"{what} was trained on prompts in {trained.describe()}, but this run formats them "
                            f"as {requested.describe()}; use the same prompt format (or retrain it)")
