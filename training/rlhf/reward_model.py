"""The reward model: any `AutoModel` backbone (causal or encoder, local path or hub id, optionally with LoRA
adapters) plus a scalar head on the hidden state of the last real (non-pad) token.

    r(x, y) = gain · (w · h_last(x ⊕ y ⊕ EOS) + b) + bias          (gain, bias: calibration, see calibration.py)

- Text format (docs/architecture.md "Model text format"): `prompt_ids + response_ids + [eos]`, prompt and
  response tokenised separately, so the boundary is the same in RM training, sampling and PPO. The prompt is
  first put in the model's prompt format (`chat_format.format_prompt`: as-is, or the chat template), which the
  model records and `check_format` holds every later user to. PAD ≠ EOS:
  a tokenizer without its own pad token gets `<|pad|>` added (and the embeddings resized).
- The last real token is found from the attention mask, so left, right (or mixed) padding give the same
  score; position ids are derived from the mask too (GPT-2 would otherwise count left pads as positions).
- Head initialised N(0, 1/√(d+1)), bias 0 (Stiennon et al. 2020 / the "N implementation details of RLHF"
  blog, 2023); dropout disabled everywhere (Huang et al. 2024, N+ implementation details).

`last_token_index`, `gather_last_hidden`, `position_ids_from_mask` and `disable_dropout` are public: PPO's
value model uses the same conventions. PPO's critic is initialised from `.backbone` and `.score_head`.

A saved reward model is one directory:

    reward_model.json      format, base model, kind (full | lora), hidden size, calibration, the training
                           config, the snapshot hash, the evaluation, text format, prompt format (kind and
                           system prompt; absent in older models: plain) and max length
    backbone/              the full backbone (save_pretrained)       ─┐ one of the two
    adapter/               the LoRA adapter (base named in the json) ─┘
    score_head.safetensors the head's weight (1, d) and bias (1,)
    tokenizer/             the tokenizer (with its pad token)

`RewardModel.from_pretrained(dir)` loads it in one call.
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training.rlhf.calibration import Calibration
from training.rlhf.chat_format import PLAIN, PromptFormat, check_same_format, format_prompt

FORMAT_NAME = "rlhf-workbench/reward-model"
FORMAT_VERSION = 1
METADATA_FILE = "reward_model.json"
HEAD_FILE = "score_head.safetensors"
DEFAULT_PAD_TOKEN = "<|pad|>"
TEXT_FORMAT = "prompt_ids + response_ids + [eos]"


# --- the math: pure functions on tensors --------------------------------------------------------------------


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, whatever the padding side.

    attention_mask: (B, T), 1 for real tokens, 0 for padding.  returns: (B,) long.
    The largest position t with mask[b, t] = 1, computed as argmax_t(mask[b, t] · t); a row without any real
    token maps to 0. Loop form:  for b: idx[b] = max(t for t in range(T) if mask[b, t])
    """
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(dim=-1)


def gather_last_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """hidden: (B, T, D), attention_mask: (B, T) → (B, D), the hidden state at `last_token_index`."""
    index = last_token_index(attention_mask)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) → (B, T) long: 0, 1, 2, … over the real tokens (pads get 0), so a left-padded row gets the
    same positions as the right-padded one. position = cumsum(mask) − 1, clamped at 0."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp_min(0)


def init_score_head(head: nn.Linear) -> None:
    """weight ~ N(0, σ²) with σ = 1/√(d+1), bias = 0 (d = hidden size)."""
    nn.init.normal_(head.weight, mean=0.0, std=1.0 / math.sqrt(head.in_features + 1))
    if head.bias is not None:
        nn.init.zeros_(head.bias)


_DROPOUT_ATTRIBUTES = ("attention_dropout", "attn_dropout", "dropout", "dropout_rate", "hidden_dropout")


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability to 0: nn.Dropout modules, float attributes some attention classes read
    directly (`self.attention_dropout`), and the config's *dropout*/*pdrop* fields. LoRA's own adapter
    dropout (`lora_dropout`, an explicit option) is left as configured."""
    for name, module in model.named_modules():
        if "lora_dropout" in name:
            continue
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attribute in _DROPOUT_ATTRIBUTES:
            value = getattr(module, attribute, None)
            if isinstance(value, float) and not isinstance(value, bool):
                setattr(module, attribute, 0.0)
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            for key, value in config.to_dict().items():
                if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
                    try:
                        setattr(config, key, 0.0)
                    except (AttributeError, TypeError):  # read-only properties on some configs
                        pass
    return model


# --- tokenisation -----------------------------------------------------------------------------------------


def end_token_id(tokenizer: Any) -> int:
    """The token appended after a response: EOS, else SEP (encoders), else an error."""
    for name in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ValueError("the tokenizer has neither an EOS nor a SEP token; cannot mark the end of a response")


def ensure_pad_token(tokenizer: Any) -> bool:
    """Give the tokenizer a pad token distinct from EOS (adding `<|pad|>`); True when one was added."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos:
        return False
    tokenizer.add_special_tokens({"pad_token": DEFAULT_PAD_TOKEN})
    if tokenizer.pad_token_id == eos:
        raise ValueError("could not give the tokenizer a pad token distinct from EOS")
    return True


def encode_prompt_response(
    tokenizer: Any, prompt: str, response: str, *, max_length: int, prompt_ids: list[int] | None = None
) -> list[int]:
    """`prompt_ids + response_ids + [eos]`, each part tokenised on its own without special tokens.

    Longer sequences keep their last `max_length` tokens (the end of the response and EOS are what the head
    reads; the prompt's start is cut first).
    """
    if prompt_ids is None:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = list(prompt_ids) + list(response_ids) + [end_token_id(tokenizer)]
    return ids[-max_length:] if len(ids) > max_length else ids


def encode_pairs(
    tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], *, max_length: int,
    prompt_format: PromptFormat = PLAIN,
) -> list[list[int]]:
    """`encode_prompt_response` for many pairs, each prompt first put in `prompt_format`
    (`chat_format.format_prompt`); distinct prompts and responses are tokenised once each, in batches (a
    prompt with K responses is tokenised once)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    unique_prompts = list(dict.fromkeys(prompts))
    unique_responses = list(dict.fromkeys(responses))
    formatted = [format_prompt(tokenizer, prompt, prompt_format=prompt_format) for prompt in unique_prompts]
    prompt_ids = dict(zip(unique_prompts, _batch_tokenize(tokenizer, formatted)))
    response_ids = dict(zip(unique_responses, _batch_tokenize(tokenizer, unique_responses)))
    end = [end_token_id(tokenizer)]
    out = []
    for prompt, response in zip(prompts, responses):
        ids = prompt_ids[prompt] + response_ids[response] + end
        out.append(ids[-max_length:] if len(ids) > max_length else ids)
    return out


def _batch_tokenize(tokenizer: Any, texts: list[str], chunk: int = 1024) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(texts), chunk):
        out.extend(list(ids) for ids in tokenizer(texts[start:start + chunk], add_special_tokens=False)["input_ids"])
    return out


def pad_sequences(
    sequences: Sequence[Sequence[int]], *, pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id lists to one (B, T) batch. returns (input_ids (B, T) long, attention_mask (B, T) long)."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max((len(s) for s in sequences), default=0)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if not seq:
            continue
        values = torch.as_tensor(list(seq), dtype=torch.long)
        if side == "right":
            input_ids[row, : len(seq)] = values
            attention_mask[row, : len(seq)] = 1
        else:
            input_ids[row, width - len(seq):] = values
            attention_mask[row, width - len(seq):] = 1
    return input_ids, attention_mask


# --- loading ------------------------------------------------------------------------------------------------


@dataclass
class LoraSettings:
    """LoRA adapters on the backbone (peft); the score head stays fully trainable."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


def _local_reference(name_or_path: str) -> str:
    """An existing local path made absolute (so a saved adapter finds its base from anywhere); hub ids as-is."""
    candidate = Path(name_or_path).expanduser()
    return str(candidate.resolve()) if candidate.exists() else name_or_path


def load_backbone(
    name_or_path: str, *, dtype: torch.dtype | str | None = None, trust_remote_code: bool = False
) -> nn.Module:
    """The bare transformer (`AutoModel`: GPT2Model, BertModel, LlamaModel…) of a causal or encoder checkpoint,
    without its LM head. A checkpoint saved with a head (GPT2LMHeadModel) loads its base weights."""
    from transformers import AutoModel

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        backbone = AutoModel.from_pretrained(name_or_path, **kwargs)
    except OSError as exc:
        raise OSError(f"could not load a model from {name_or_path!r}: {exc}") from exc
    if hasattr(backbone.config, "use_cache"):
        backbone.config.use_cache = False
    if isinstance(getattr(backbone, "pooler", None), nn.Module):
        # An encoder's pooler (BERT's tanh layer over [CLS]) is never read — the head reads the last real
        # token's hidden state — and weights without a gradient break DDP ("Expected to have finished
        # reduction in the prior iteration"). BertModel and its kin skip a pooler that is None.
        backbone.pooler = None
    return backbone


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise OSError(f"could not load a tokenizer from {name_or_path!r}: {exc}") from exc


def _resize_for_tokenizer(backbone: nn.Module, tokenizer: Any) -> None:
    embeddings = backbone.get_input_embeddings()
    if embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
        backbone.resize_token_embeddings(len(tokenizer))


def enable_gradient_checkpointing(backbone: nn.Module) -> None:
    """Recompute activations in the backward pass (non-reentrant, so frozen inputs under LoRA still work)."""
    if hasattr(backbone, "activation_checkpointing_enable"):  # transformers ≥ 5.x name
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def apply_lora(backbone: nn.Module, settings: LoraSettings) -> nn.Module:
    """Wrap the backbone in peft LoRA adapters: only the adapters train (the base weights are frozen)."""
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = list(settings.target_modules)
    if targets == ["all-linear"]:
        targets = "all-linear"
    from transformers.pytorch_utils import Conv1D

    # GPT-2 style Conv1D layers store weights transposed (fan_in × fan_out); peft must be told.
    fan_in_fan_out = any(isinstance(module, Conv1D) for module in backbone.modules())
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets,
        bias="none", fan_in_fan_out=fan_in_fan_out,
    )
    return get_peft_model(backbone, config)


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _base_module(model: nn.Module) -> nn.Module:
    return model.get_base_model() if _is_peft(model) else model


def max_positions(backbone: nn.Module) -> int | None:
    """The longest sequence the backbone was built or trained for (`n_positions` / `max_position_embeddings`),
    or None when the config names none."""
    config = getattr(_base_module(backbone), "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _hidden_size(backbone: nn.Module) -> int:
    config = getattr(_base_module(backbone), "config", None)
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return int(backbone.get_input_embeddings().embedding_dim)


def saved_prompt_format(directory: str | Path) -> PromptFormat:
    """The prompt format a saved reward model was trained with, read from its reward_model.json without
    loading the weights (a model saved before formats were recorded: plain)."""
    meta_path = Path(directory) / METADATA_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FileNotFoundError(f"{directory}: not a reward model directory (no {METADATA_FILE})") from exc
    return PromptFormat.from_dict(meta.get("prompt_format"))


def check_saved_format(directory: str | Path, prompt_format: PromptFormat, *, what: str | None = None) -> None:
    """Refuse (PromptFormatError naming both formats) a reward model directory trained on another format."""
    check_same_format(trained=saved_prompt_format(directory), requested=prompt_format,
                      what=what or f"the reward model at {directory}")


# --- the module --------------------------------------------------------------------------------------------


class RewardModel(nn.Module):
    """Backbone + scalar head; `forward` returns calibrated rewards (B,) unless `calibrated=False`."""

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        *,
        score_head: nn.Linear | None = None,
        calibration: Calibration | None = None,
        base_model: str = "",
        max_length: int = 1024,
        info: dict[str, Any] | None = None,
        prompt_format: PromptFormat = PLAIN,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.hidden_size = _hidden_size(backbone)
        if score_head is None:
            score_head = nn.Linear(self.hidden_size, 1)
            init_score_head(score_head)
        if score_head.in_features != self.hidden_size or score_head.out_features != 1:
            raise ValueError(f"score head must map {self.hidden_size} → 1, got {score_head}")
        self.score_head = score_head.float()
        self.calibration = calibration or Calibration()
        self.base_model = base_model
        self.max_length = int(max_length)
        self.info: dict[str, Any] = dict(info or {})
        self.prompt_format = prompt_format
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.end_token_id = end_token_id(tokenizer)
        parameters = inspect.signature(_base_module(backbone).forward).parameters
        self._accepts_position_ids = "position_ids" in parameters
        disable_dropout(self)

    # construction ---------------------------------------------------------------------------------------

    @classmethod
    def from_backbone(
        cls,
        model_name_or_path: str,
        *,
        tokenizer_name_or_path: str | None = None,
        lora: LoraSettings | None = None,
        gradient_checkpointing: bool = False,
        dtype: torch.dtype | str | None = torch.float32,
        max_length: int = 1024,
        trust_remote_code: bool = False,
        prompt_format: PromptFormat = PLAIN,
    ) -> RewardModel:
        """A fresh reward model to train: pretrained backbone, newly initialised head (identity calibration),
        reading prompts in `prompt_format` (chat without a chat template on the tokenizer: PromptFormatError)."""
        tokenizer = load_tokenizer(tokenizer_name_or_path or model_name_or_path, trust_remote_code=trust_remote_code)
        format_prompt(tokenizer, "", prompt_format=prompt_format)  # refuse chat without a template before loading
        ensure_pad_token(tokenizer)
        backbone = load_backbone(model_name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
        _resize_for_tokenizer(backbone, tokenizer)
        if gradient_checkpointing:
            enable_gradient_checkpointing(backbone)
        limit = max_positions(backbone)
        if limit is not None:
            max_length = min(max_length, limit)
        if lora is not None:
            backbone = apply_lora(backbone, lora)
        return cls(
            backbone, tokenizer, base_model=_local_reference(model_name_or_path), max_length=max_length,
            info={"tokenizer_source": tokenizer_name_or_path or model_name_or_path}, prompt_format=prompt_format,
        )

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        is_trainable: bool = False,
        trust_remote_code: bool = False,
    ) -> RewardModel:
        """Load a directory written by `save_pretrained` (backbone or LoRA adapter + base, head, tokenizer,
        calibration). `dtype` applies to the backbone (the head stays float32); `is_trainable` keeps LoRA
        adapters trainable (a full backbone is always loaded with gradients enabled). Returned in eval mode."""
        root = Path(directory)
        meta_path = root / METADATA_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"{root}: not a reward model directory (no {METADATA_FILE})")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_NAME:
            raise ValueError(f"{meta_path}: unknown format {meta.get('format')!r} (expected {FORMAT_NAME!r})")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format version {meta['format_version']} is newer than this code")
        tokenizer = load_tokenizer(str(root / "tokenizer"), trust_remote_code=trust_remote_code)
        if meta["backbone"] == "lora":
            from peft import PeftModel

            base = load_backbone(meta["base_model"], dtype=dtype, trust_remote_code=trust_remote_code)
            _resize_for_tokenizer(base, tokenizer)
            backbone = PeftModel.from_pretrained(base, str(root / "adapter"), is_trainable=is_trainable)
        elif meta["backbone"] == "full":
            backbone = load_backbone(str(root / "backbone"), dtype=dtype, trust_remote_code=trust_remote_code)
        else:
            raise ValueError(f"{meta_path}: unknown backbone kind {meta['backbone']!r}")
        head_state = load_file(str(root / HEAD_FILE))
        head = nn.Linear(int(meta["hidden_size"]), 1)
        head.load_state_dict({"weight": head_state["weight"].float(), "bias": head_state["bias"].float()})
        info = {k: meta[k] for k in ("training_config", "snapshot_hash", "evaluation", "created_at") if k in meta}
        model = cls(
            backbone,
            tokenizer,
            score_head=head,
            calibration=Calibration.from_dict(meta.get("calibration")),
            base_model=meta.get("base_model", ""),
            max_length=int(meta.get("max_length", 1024)),
            info=info,
            prompt_format=PromptFormat.from_dict(meta.get("prompt_format")),
        )
        if device is not None:
            model.to(device)
        return model.eval()

    # scoring ---------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def is_lora(self) -> bool:
        return _is_peft(self.backbone)

    def last_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T), (B, T) → (B, D): the backbone's final hidden state at the last real token."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._accepts_position_ids:
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        outputs = self.backbone(**kwargs)
        hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
        return gather_last_hidden(hidden, attention_mask)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, calibrated: bool = True
    ) -> torch.Tensor:
        """input_ids, attention_mask: (B, T) → rewards (B,), float32; raw head output when `calibrated=False`."""
        hidden = self.last_hidden(input_ids, attention_mask)
        # The head and the calibration in float32 even under bf16 autocast (the backbone may run in bf16).
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            raw = self.score_head(hidden.to(self.score_head.weight.dtype)).squeeze(-1)
            return self.calibration.apply(raw) if calibrated else raw

    def check_format(self, prompt_format: PromptFormat, *, what: str = "the reward model") -> None:
        """Refuse (PromptFormatError naming both) to score prompts that a run formats otherwise than this model
        was trained on."""
        check_same_format(trained=self.prompt_format, requested=prompt_format, what=what)

    def format_prompt(self, prompt: str) -> str:
        """`prompt` as this model reads it (its recorded prompt format)."""
        return format_prompt(self.tokenizer, prompt, prompt_format=self.prompt_format)

    def encode(
        self, prompts: Sequence[str], responses: Sequence[str], *, max_length: int | None = None
    ) -> list[list[int]]:
        """Token ids `prompt + response + [eos]` per pair, the prompt in the model's prompt format; see
        `encode_pairs`."""
        return encode_pairs(self.tokenizer, prompts, responses, max_length=max_length or self.max_length,
                            prompt_format=self.prompt_format)

    @torch.no_grad()
    def score_ids(
        self, sequences: Sequence[Sequence[int]], *, batch_size: int = 16, calibrated: bool = True,
        padding_side: str | None = None,
    ) -> list[float]:
        """Rewards of already-encoded sequences, batched by similar length; order preserved."""
        side = padding_side or getattr(self.tokenizer, "padding_side", "right") or "right"
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        scores = [0.0] * len(sequences)
        was_training = self.training
        self.eval()
        try:
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                input_ids, attention_mask = pad_sequences(
                    [sequences[i] for i in chunk], pad_id=self.pad_token_id, side=side
                )
                rewards = self(input_ids.to(self.device), attention_mask.to(self.device), calibrated=calibrated)
                for i, value in zip(chunk, rewards.float().cpu().tolist()):
                    scores[i] = value
        finally:
            self.train(was_training)
        return scores

    def score_texts(
        self, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 16, calibrated: bool = True
    ) -> list[float]:
        """Score (prompt, response) pairs: tokenised separately, EOS appended, calibrated by default."""
        return self.score_ids(self.encode(prompts, responses), batch_size=batch_size, calibrated=calibrated)

    # saving ------------------------------------------------------------------------------------------------

    def save_pretrained(
        self,
        directory: str | Path,
        *,
        training_config: dict[str, Any] | None = None,
        snapshot_hash: str | None = None,
        evaluation: dict[str, Any] | None = None,
    ) -> Path:
        """Write the self-contained directory described in the module docstring; returns it.

        Values not given are kept from what the model was loaded with (`self.info`)."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        for stale in ("backbone", "adapter"):
            if (root / stale).exists():
                shutil.rmtree(root / stale)
        if self.is_lora:
            self.backbone.save_pretrained(str(root / "adapter"))
            kind = "lora"
        else:
            self.backbone.save_pretrained(str(root / "backbone"))
            kind = "full"
        head = {k: v.detach().float().cpu().contiguous() for k, v in self.score_head.state_dict().items()}
        save_file(head, str(root / HEAD_FILE))
        self.tokenizer.save_pretrained(str(root / "tokenizer"))
        if training_config is not None:
            self.info["training_config"] = training_config
        if snapshot_hash is not None:
            self.info["snapshot_hash"] = snapshot_hash
        if evaluation is not None:
            self.info["evaluation"] = evaluation
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "backbone": kind,
            "base_model": self.base_model,
            "model_type": getattr(getattr(_base_module(self.backbone), "config", None), "model_type", ""),
            "hidden_size": self.hidden_size,
            "calibration": self.calibration.to_dict(),
            "text_format": TEXT_FORMAT,
            "prompt_format": self.prompt_format.as_dict(),
            "max_length": self.max_length,
            "pad_token_id": self.pad_token_id,
            "end_token_id": self.end_token_id,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "training_config": self.info.get("training_config", {}),
            "snapshot_hash": self.info.get("snapshot_hash", ""),
            "evaluation": self.info.get("evaluation", {}),
        }
        (root / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n",
                                          encoding="utf-8")
        return root
