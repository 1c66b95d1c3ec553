"""The four PPO models: actor, critic, frozen reference, frozen reward model (design.md §7 items 1–3).

- **Actor**: the policy checkpoint (a local directory or a hub id; a peft adapter directory is merged into its
  base), trained.
- **Reference**: a frozen copy of the starting policy for the KL penalty. In LoRA memory mode the actor is the
  base plus a LoRA adapter and the reference is the same module with the adapter disabled (peft
  `disable_adapter()`): one copy of the policy weights in memory instead of two.
- **Critic** (`ValueModel`): a backbone plus a scalar value head on every position. Initialised from the reward
  model's backbone and score head with its calibration folded in, so V at the EOS token starts at the
  calibrated score (InstructGPT §3.5: "we initialize the value function from the RM"), or from
  the policy's backbone with a zero value head. With `critic_lora` the critic is a LoRA adapter on the reward
  model's own backbone (one copy for RM and critic; the RM scores with the adapter disabled).
- **Reward model**: `RewardModel.from_pretrained` with its calibration, frozen.

Dropout is switched off in all of them, the actor's LoRA dropout included (N+ implementation details: dropout
makes the log-probs of the rollout and of the PPO update disagree, so the ratio is not 1 at the first step);
`lora_dropout` applies to the critic's adapters, whose rollout values are computed in eval mode. `PPOModels` hides the memory mode from
the trainer: `reference_logprobs` and `reward_scores` do the right thing in both.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training.rlhf.calibration import Calibration
from training.rlhf.reward_model import RewardModel, disable_dropout, load_backbone
from training.rlhf.rollout import Sequences, response_logprobs

VALUE_MODEL_FORMAT = "rlhf-workbench/value-model"
VALUE_MODEL_FILE = "value_model.json"
VALUE_HEAD_FILE = "value_head.safetensors"


# --- small helpers -----------------------------------------------------------------------------------------


def freeze(model: nn.Module) -> nn.Module:
    """No gradients, eval mode, dropout off: a frozen model for the reference or the reward model."""
    model.requires_grad_(False)
    disable_dropout(model)
    return model.eval()


def fuse_activations(model: nn.Module) -> nn.Module:
    """Swap Python-composed tanh-GELU activations (transformers' `NewGELUActivation`, GPT-2's "gelu_new", and
    `FastGELUActivation`, "gelu_fast") for `GELUTanh`, torch's one fused kernel for the same function,
    0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) (Hendrycks & Gimpel 2016, eq. for the tanh approximation).
    transformers documents GELUTanh as "equivalent to NewGELU and FastGELU but much faster ... not an exact
    numerical match due to rounding errors": it differs in the last bits only. The composed form is eight
    element-wise kernels forward and more backward, ~18 % of a PPO update of the tiny demo model on the CPU
    (bench/RESULTS.md). The config is untouched, so a saved model still names its own activation. In place."""
    from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) in (NewGELUActivation, FastGELUActivation):
                setattr(module, name, GELUTanh())
    return model


def is_peft_model(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def lora_config(
    model: nn.Module, *, r: int, alpha: float, dropout: float, target_modules: Sequence[str], task_type: str | None
):
    """A peft LoraConfig; GPT-2's Conv1D layers (weights stored fan_in × fan_out) get `fan_in_fan_out`."""
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    targets: str | list[str] = list(target_modules)
    if targets == ["all-linear"]:
        targets = "all-linear"
    fan_in_fan_out = any(isinstance(module, Conv1D) for module in model.modules())
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
        fan_in_fan_out=fan_in_fan_out, task_type=task_type,
    )


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass (non-reentrant, so frozen inputs and LoRA work);
    transformers ≥ 5.x calls it activation checkpointing, earlier versions gradient checkpointing."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def tokenizers_compatible(policy_tokenizer: Any, other_tokenizer: Any) -> bool:
    """True when every policy token has the same id in the other tokenizer and both share the EOS: the reward
    model and the critic can then read the policy's token ids directly (the other may have extra tokens, e.g. a
    pad token added by train_rm)."""
    if policy_tokenizer.eos_token_id != other_tokenizer.eos_token_id:
        return False
    other = other_tokenizer.get_vocab()
    return all(other.get(token) == index for token, index in policy_tokenizer.get_vocab().items())


# --- loading the policy ------------------------------------------------------------------------------------


def _adapter_base(path: Path) -> str:
    return json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]


def load_policy_model(
    name_or_path: str, *, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
) -> nn.Module:
    """A causal LM from a local directory or a hub id, dropout off. A directory with a peft adapter
    (adapter_config.json) is loaded onto its base and merged."""
    from transformers import AutoModelForCausalLM

    path = Path(name_or_path).expanduser()
    try:
        if path.is_dir() and (path / "adapter_config.json").exists():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(
                str(path), dtype=dtype, trust_remote_code=trust_remote_code
            ).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(
                str(path) if path.exists() else name_or_path, dtype=dtype, trust_remote_code=trust_remote_code
            )
    except OSError as exc:
        raise OSError(f"could not load a causal language model from {name_or_path!r}: {exc}") from exc
    return disable_dropout(model)


def load_policy_tokenizer(name_or_path: str, *, trust_remote_code: bool = False) -> Any:
    """The policy's tokenizer set up for generation: left padding; a pad token (EOS when it has none —
    masks never come from comparing ids with the pad id, so that is safe)."""
    from transformers import AutoTokenizer

    path = Path(name_or_path).expanduser()
    source = str(path) if path.exists() else name_or_path
    if path.is_dir() and (path / "adapter_config.json").exists() and not any(
        (path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")
    ):
        source = _adapter_base(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise OSError(f"could not load a tokenizer from {source!r}: {exc}") from exc
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"{name_or_path}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# --- the critic ----------------------------------------------------------------------------------------------


class ValueModel(nn.Module):
    """V(s_t) for every position: a transformer backbone and a linear value head on its hidden states.

    forward(input_ids (B, L), attention_mask (B, L), position_ids (B, L) | None) → values (B, L), float32.
    Position ids default to those of the attention mask (left padding safe).
    """

    def __init__(self, backbone: nn.Module, value_head: nn.Linear, *, info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.value_head = value_head.float()
        self.info: dict[str, Any] = dict(info or {})

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        output = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        with torch.autocast(device_type=hidden.device.type, enabled=False):  # the head in float32 under bf16
            return self.value_head(hidden.float()).squeeze(-1)

    def save_pretrained(self, directory: str | Path, *, tokenizer: Any = None) -> Path:
        """value_model.json + value_head.safetensors + backbone/ (full weights) or adapter/ (LoRA on the base
        named in the json) + tokenizer/. Loads with `ValueModel.from_pretrained`."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        if is_peft_model(self.backbone):
            self.backbone.save_pretrained(str(root / "adapter"))
            kind = "lora"
        else:
            self.backbone.save_pretrained(str(root / "backbone"))
            kind = "full"
        head = {k: v.detach().float().cpu().contiguous() for k, v in self.value_head.state_dict().items()}
        save_file(head, str(root / VALUE_HEAD_FILE))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(root / "tokenizer"))
        meta = {"format": VALUE_MODEL_FORMAT, "format_version": 1, "backbone": kind,
                "hidden_size": self.value_head.in_features, **self.info}
        (root / VALUE_MODEL_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n",
                                             encoding="utf-8")
        return root

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, dtype: torch.dtype = torch.float32) -> ValueModel:
        root = Path(directory)
        meta = json.loads((root / VALUE_MODEL_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != VALUE_MODEL_FORMAT:
            raise ValueError(f"{root}: not a value model directory")
        if meta["backbone"] == "lora":
            from peft import PeftModel

            base = RewardModel.from_pretrained(meta["base_reward_model"], dtype=dtype).backbone
            if is_peft_model(base):
                base = base.merge_and_unload()
            backbone = PeftModel.from_pretrained(base, str(root / "adapter"))
        else:
            backbone = load_backbone(str(root / "backbone"), dtype=dtype)
        head = nn.Linear(int(meta["hidden_size"]), 1)
        state = load_file(str(root / VALUE_HEAD_FILE))
        head.load_state_dict({"weight": state["weight"].float(), "bias": state["bias"].float()})
        info = {k: v for k, v in meta.items() if k not in ("format", "format_version", "backbone", "hidden_size")}
        return cls(disable_dropout(backbone), head, info=info)


def value_head_like(score_head: nn.Linear | None, hidden_size: int, *, calibration: Calibration | None = None
                    ) -> nn.Linear:
    """A float32 value head: the reward model's score head with its calibration folded in, or zeros (V ≡ 0 at
    the start) when there is none to copy (a critic initialised from the policy).

    Folding r = gain · (w·h + b) + bias into one affine map: w' = gain · w, b' = gain · b + bias, so the
    critic's value at the EOS token starts at the calibrated score that the returns are built from.
    """
    head = nn.Linear(hidden_size, 1)
    if score_head is None:
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return head
    calibration = calibration or Calibration()
    weight = score_head.weight.detach().double() * calibration.gain
    bias = score_head.bias.detach().double() * calibration.gain + calibration.bias
    head.load_state_dict({"weight": weight.float(), "bias": bias.float()})
    return head


def disable_lora_dropout(model: nn.Module) -> nn.Module:
    """Dropout p = 0 inside LoRA adapters too (`disable_dropout` leaves them as configured). PPO's actor needs it:
    the rollout's log-probs and the update's must come from the same function, or the ratio is not 1 where
    the policy has not moved (N+ implementation details, "disable dropout")."""
    for name, module in model.named_modules():
        if "lora_dropout" in name and isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def _hidden_size_of(backbone: nn.Module) -> int:
    base = backbone.get_base_model() if is_peft_model(backbone) else backbone
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        value = getattr(base.config, name, None)
        if isinstance(value, int):
            return value
    return int(base.get_input_embeddings().embedding_dim)


# --- all four models ----------------------------------------------------------------------------------------


@dataclass
class ModelSettings:
    """What `build_ppo_models` needs (a subset of PPOConfig, so tests can build models without a config)."""

    policy: str
    reward_model: str
    lora: bool = False
    critic_lora: bool = False
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    critic_init: str = "reward_model"
    frozen_dtype: torch.dtype = torch.float32
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    fused_activations: bool = True


@dataclass
class PPOModels:
    actor: nn.Module  # causal LM (a PeftModel in LoRA mode)
    critic: ValueModel
    reference: nn.Module | None  # None in LoRA mode: the actor with its adapter disabled
    reward_model: RewardModel
    tokenizer: Any  # the policy's (left padding)
    rm_reads_policy_ids: bool  # the RM's tokenizer is compatible: score the policy's ids directly
    critic_shares_reward_backbone: bool

    @contextmanager
    def _reference_view(self, actor: nn.Module) -> Iterator[nn.Module]:
        if self.reference is not None:
            yield self.reference
        else:
            with actor.disable_adapter():
                yield actor

    @torch.no_grad()
    def reference_logprobs(self, sequences: Sequences, *, temperature: float, actor: nn.Module | None = None
                           ) -> torch.Tensor:
        """log π_ref of the response tokens at temperature T: (B, R). `actor` is the unwrapped actor
        (LoRA mode runs it with the adapter disabled)."""
        with self._reference_view(actor or self.actor) as reference:
            logprobs, _ = response_logprobs(reference, sequences, temperature=temperature)
        return logprobs

    def reference_model(self, actor: nn.Module | None = None):
        """A context manager yielding a module that generates/forwards as the starting policy."""
        return self._reference_view(actor or self.actor)

    @torch.no_grad()
    def reward_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                      critic: nn.Module | None = None) -> torch.Tensor:
        """Calibrated RM scores (B,) of `prompt + response + [eos]` sequences. When the critic is a LoRA
        adapter on the RM's backbone, the adapter is disabled for scoring."""
        context = nullcontext()
        if self.critic_shares_reward_backbone:
            context = (critic or self.critic).backbone.disable_adapter()
        with context:
            return self.reward_model(input_ids, attention_mask).float()


def build_ppo_models(settings: ModelSettings, *, device: torch.device | str = "cpu") -> PPOModels:
    """Load actor, critic, reference and reward model for PPO (all dropout-free; reference and RM frozen).

    Trainable weights are float32 (mixed precision comes from the accelerator's autocast); the frozen reward
    model uses `frozen_dtype` (bf16 on GPUs to halve its memory; its head and calibration stay float32). The
    frozen reference is float32 like the actor, so both take the same precision path under autocast (LoRA
    memory mode needs no copy at all).
    """
    from peft import get_peft_model

    device = torch.device(device)
    tokenizer = load_policy_tokenizer(settings.policy, trust_remote_code=settings.trust_remote_code)

    # Actor and reference (item 1, 2).
    actor = load_policy_model(settings.policy, dtype=torch.float32, trust_remote_code=settings.trust_remote_code)
    embeddings = actor.get_input_embeddings()
    if embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
        raise ValueError(f"{settings.policy}: the tokenizer has {len(tokenizer)} tokens but the model only "
                         f"{embeddings.num_embeddings} embeddings")
    reference: nn.Module | None = None
    if settings.lora:
        actor = disable_lora_dropout(get_peft_model(actor, lora_config(
            actor, r=settings.lora_r, alpha=settings.lora_alpha, dropout=settings.lora_dropout,
            target_modules=settings.lora_target_modules, task_type="CAUSAL_LM",
        )))
    else:
        # The reference in the actor's dtype (float32): under bf16 autocast both then run the same precision
        # path, so the KL is exactly 0 while the actor equals the reference (a bf16 copy gave 1e-3 at step 1).
        reference = freeze(load_policy_model(settings.policy, dtype=torch.float32,
                                             trust_remote_code=settings.trust_remote_code))
    if settings.gradient_checkpointing:
        enable_activation_checkpointing(actor)

    # Reward model (item 1), frozen with its calibration.
    reward_model = RewardModel.from_pretrained(settings.reward_model, dtype=settings.frozen_dtype,
                                               trust_remote_code=settings.trust_remote_code)
    freeze(reward_model)
    rm_reads_policy_ids = tokenizers_compatible(tokenizer, reward_model.tokenizer)

    # Critic (item 1): from the RM (backbone + head) or from the policy's backbone with a zero head.
    shares = False
    if settings.critic_init == "reward_model":
        if not rm_reads_policy_ids:
            raise ValueError("critic_init=reward_model needs the reward model's tokenizer to contain the policy's "
                             "(the critic reads the policy's token ids); use critic_init=policy")
        if settings.critic_lora:
            if is_peft_model(reward_model.backbone):  # a LoRA reward model: fold its adapter into its base
                reward_model.backbone = freeze(reward_model.backbone.merge_and_unload())
            backbone = get_peft_model(reward_model.backbone, lora_config(
                reward_model.backbone, r=settings.lora_r, alpha=settings.lora_alpha, dropout=settings.lora_dropout,
                target_modules=settings.lora_target_modules, task_type=None,
            ))
            shares = True
            score_head, calibration = reward_model.score_head, reward_model.calibration
        else:
            critic_source = RewardModel.from_pretrained(settings.reward_model, dtype=torch.float32,
                                                        trust_remote_code=settings.trust_remote_code)
            backbone = critic_source.backbone
            if is_peft_model(backbone):
                backbone = backbone.merge_and_unload()
            backbone.requires_grad_(True)
            score_head, calibration = critic_source.score_head, critic_source.calibration
        info = {"critic_init": "reward_model", "base_reward_model": str(Path(settings.reward_model).resolve())}
    else:
        base = load_policy_model(settings.policy, dtype=torch.float32, trust_remote_code=settings.trust_remote_code)
        backbone = copy.deepcopy(base.base_model)
        del base
        backbone.requires_grad_(True)
        if settings.critic_lora:
            raise ValueError("critic_lora needs critic_init=reward_model")
        score_head, calibration = None, None
        info = {"critic_init": "policy", "base_policy": settings.policy}
    disable_dropout(backbone)
    if settings.gradient_checkpointing:
        enable_activation_checkpointing(backbone.get_base_model() if is_peft_model(backbone) else backbone)
    critic = ValueModel(backbone, value_head_like(score_head, _hidden_size_of(backbone), calibration=calibration),
                        info=info)

    for model in (actor, critic, reward_model) + ((reference,) if reference is not None else ()):
        if settings.fused_activations:
            fuse_activations(model)
        model.to(device)
    actor.train()
    critic.train()
    return PPOModels(actor=actor, critic=critic, reference=reference, reward_model=reward_model,
                     tokenizer=tokenizer, rm_reads_policy_ids=rm_reads_policy_ids,
                     critic_shares_reward_backbone=shares)


def save_policy(actor: nn.Module, tokenizer: Any, directory: str | Path) -> Path:
    """The policy in Hugging Face format (AutoModelForCausalLM.from_pretrained loads it) with its tokenizer.
    A LoRA actor is merged into its base first (in place: call this last)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    model = actor.merge_and_unload() if is_peft_model(actor) else actor
    model.save_pretrained(str(root))
    tokenizer.save_pretrained(str(root))
    return root
