"""The PPO trainer's configuration: one dataclass drives the plain CLI (`python -m training.rlhf.ppo_cli`),
`manage.py train_ppo`, the dashboard's launch form and the config.json saved with every run.

Batch sizes are per process (under `accelerate launch` each process draws its own prompts). The sizes derived
from them — mini-batches per rollout, gradient accumulation steps, optimizer steps, iterations — are computed
once, in `__post_init__`, and read from the config everywhere else (`config.derived()` lists them).

Defaults suit the demo task's tiny model on a CPU (a few minutes); for billion-parameter models lower the
learning rates (≈1e-6 actor, ≈1e-5 critic) and raise the batch sizes (InstructGPT: 512 rollouts, 64 per
mini-batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from training.rlhf.chat_format import PROMPT_FORMATS, PromptFormat, format_of_config
from training.rlhf.configs import (
    BF16_CHOICES,
    ConfigError,
    check_booleans,
    check_choice,
    check_integer,
    check_number,
    check_required,
    check_strings,
    normalise_bf16,
    normalise_lora_target_modules,
    option,
)

KL_ESTIMATOR_CHOICES = ("k1", "k3")
SCORE_NORM_CHOICES = ("none", "running", "batch")
CRITIC_INIT_CHOICES = ("reward_model", "policy")
ENSEMBLE_COMBINATION_CHOICES = ("mean", "min", "uwo", "mean_minus_std")  # rm_ensemble.combine_scores
SELECT_SIGNAL_CHOICES = ("auto", "oracle", "held_out_rm", "penalised_score")
TASK_CHOICES = ("auto", "demo", "none")
INSTRUCTGPT_PTX_COEF = 27.8
# Defaults against reward over-optimisation, chosen from the seeds × threads runs in bench/RESULTS.md
# ("PPO over-optimisation on the demo task").
KL_TARGET_DEFAULT = 3.0
KL_HORIZON_RUN_FRACTION_DEN = 10  # auto horizon = episodes / 10: β can grow ≈ e^(0.2·10) ≈ 7× over a run
KL_STOP_FACTOR_DEFAULT = 2.0


@dataclass
class PPOConfig:
    # --- models and data ---
    policy: str = option("", "Policy to start from (the SFT model): a local checkpoint directory or a hub id; a "
                             "directory holding a peft adapter is merged into its base.")
    reward_model: str = option("", "Reward model directory written by train_rm (RewardModel.from_pretrained), or "
                                   "an ensemble directory (rm_ensemble.train_reward_model_ensemble); it scores "
                                   "rollouts (calibrated) and its first member initialises the critic.")
    reward_ensemble: list[str] = option([], "Further reward model directories (trained from the same snapshot with "
                                            "other seeds) scored with reward_model; PPO optimises their "
                                            "ensemble_combination (Coste et al. 2024).")
    ensemble_combination: str = option("min", "How an ensemble's calibrated scores combine into the reward "
                                              "(rm_ensemble.py): mean, min (worst case), uwo (mean − "
                                              "ensemble_coef · variance) or mean_minus_std.",
                                       choices=ENSEMBLE_COMBINATION_CHOICES)
    ensemble_coef: float = option(1.0, "λ of the uwo and mean_minus_std combinations.")
    prompts: str = option("", "Prompt file: JSONL with a \"prompt\" field per line (optional \"metadata\", e.g. "
                              "{\"task\": \"demo\"}), or plain text with one prompt per line.")
    output_dir: str = option("", "Directory for config.json, events, checkpoints/, the final policy/ and "
                                 "value_model/ (the manage.py command fills it in from the run when empty).")
    eval_prompts: str = option("", "Held-out prompt file (same formats as prompts) for the before/after "
                                   "evaluation; empty holds out eval_fraction of the prompts instead.")
    eval_fraction: float = option(0.1, "Share of the prompts held out for evaluation when eval_prompts is empty "
                                       "(0: no held-out set, no evaluation).")
    eval_max_prompts: int = option(64, "Evaluate on at most this many held-out prompts.")
    eval_samples: int = option(1, "Responses sampled per held-out prompt in the before/after evaluation (more "
                                  "samples, a narrower interval for the gain).")
    evaluate: bool = option(True, "Run the before/after evaluation (RM score, KL to the reference, win rate, "
                                  "oracle score on demo prompts).")
    task: str = option("auto", "Prompt task: 'demo' enables the demo oracle in evaluation and samples; 'auto' "
                               "detects it (metadata.task == 'demo' or every prompt from the demo set).",
                       choices=TASK_CHOICES)
    prompt_format: str = option("plain", "How a prompt becomes the text the model reads: 'plain' (the text as-is, "
                                         "the model continues it) or 'chat' (the tokenizer's chat template, the "
                                         "prompt as the user turn); rollouts, evaluations and the reward "
                                         "model input all use it, and it must be the one the reward model "
                                         "was trained with. Left out, train_ppo and the dashboard take the "
                                         "reward-model run's format.", choices=PROMPT_FORMATS)
    system_prompt: str = option("", "System message put first under the chat template (prompt_format chat only; "
                                    "empty: none).")
    max_prompt_length: int = option(64, "Prompts longer than this many tokens keep their last tokens.")
    trust_remote_code: bool = option(False, "Allow model code from a hub repository.")
    # --- schedule and batch sizes (per process) ---
    iterations: int = option(0, "PPO iterations (rollout + optimisation); 0 derives them from total_episodes.")
    total_episodes: int = option(1280, "Prompts to roll out in total (per process), used when iterations is 0.")
    rollout_batch_size: int = option(32, "Prompts per rollout (one response each) per process.")
    mini_batch_size: int = option(16, "Rollout rows per optimizer step; must divide rollout_batch_size.")
    micro_batch_size: int = option(16, "Rows per forward/backward pass; must divide mini_batch_size (gradient "
                                       "accumulation steps = mini_batch_size / micro_batch_size).")
    inference_batch_size: int = option(0, "Rows per generation and no-grad forward pass in rollouts and "
                                          "evaluation (0: the whole rollout batch at once).")
    ppo_epochs: int = option(4, "Passes over each rollout, reshuffled into new mini-batches every pass.")
    # --- sampling ---
    response_length: int = option(24, "Maximum new tokens per response (the stop token included).")
    temperature: float = option(1.0, "Sampling temperature; every log-prob (ratio, KL, entropy) uses logits ÷ "
                                     "temperature.")
    top_p: float = option(1.0, "Nucleus sampling threshold (1: off). Log-probs are those of the untruncated "
                               "softmax(logits ÷ T).")
    stop_token: str = option("eos", "Token that ends a response: 'eos' (the tokenizer's EOS), or a literal token "
                                    "string such as '\\n'; everything after the first one is masked.")
    missing_eos_penalty: float = option(1.0, "Subtracted from the score of a response that never emits the stop "
                                             "token (0: no penalty).")
    # --- reward ---
    kl_estimator: str = option("k1", "Per-token KL estimator in the reward: k1 = log π − log π_ref (unbiased), "
                                     "k3 = (r − 1) − log r (unbiased, ≥ 0, lower variance).",
                               choices=KL_ESTIMATOR_CHOICES)
    init_kl_coef: float = option(0.05, "β, the KL penalty coefficient (its initial value when adaptive).")
    kl_target: float = option(KL_TARGET_DEFAULT, "Target KL (nats per response) for the adaptive controller "
                                                 "(Ziegler et al. 2019); 0 keeps β fixed.")
    kl_horizon: int = option(0, "Adaptive KL horizon in episodes: β moves by at most 20 % per horizon; 0 sets "
                                f"it to 1/{KL_HORIZON_RUN_FRACTION_DEN} of the run's episodes, so that the "
                                "controller can act within the run.")
    kl_stop_factor: float = option(KL_STOP_FACTOR_DEFAULT, "Early stopping on KL: end the training when a "
                                                           "rollout's mean KL exceeds this multiple of kl_target "
                                                           "(0: never; needs kl_target > 0).")
    score_norm: str = option("none", "Normalise RM scores: none (the RM's calibration centres them), running "
                                     "(mean/std over all rollouts so far), or batch (per rollout).",
                             choices=SCORE_NORM_CHOICES)
    reward_clip: float = option(0.0, "Clip scores to [−c, c] after normalisation and the EOS penalty (0: off).")
    whiten_rewards: bool = option(False, "Whiten per-token rewards over real tokens (scale only) before GAE.")
    whiten_advantages: bool = option(True, "Whiten advantages over real tokens (mean 0, std 1) before the loss.")
    # --- PPO ---
    cliprange: float = option(0.2, "Policy ratio clip ε of the surrogate objective.")
    cliprange_value: float = option(0.2, "Value clip: new values stay within ± this of the rollout's values.")
    vf_coef: float = option(0.1, "Weight of the value loss in the total loss.")
    gamma: float = option(1.0, "Discount factor γ of GAE (1: episodic text, no discount).")
    lam: float = option(0.95, "GAE λ.")
    # --- optimisation ---
    lr: float = option(1e-4, "Actor peak AdamW learning rate (after warm-up; cosine decay). Tiny-model default: "
                             "use ≈1e-6 for large models.")
    critic_lr: float = option(3e-4, "Critic peak AdamW learning rate.")
    warmup_ratio: float = option(0.05, "Fraction of the optimizer steps spent in linear warm-up.")
    min_lr_ratio: float = option(0.1, "Final learning rate as a fraction of the peak (cosine decays to it).")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay (never on biases and norms).")
    max_grad_norm: float = option(1.0, "Clip each model's gradient norm to this (0: no clipping).")
    # --- PPO-ptx ---
    ptx_coef: float = option(0.0, "PPO-ptx: weight γ of a language-modelling loss on ptx_dataset mixed into the "
                                  f"actor loss (InstructGPT used γ = {INSTRUCTGPT_PTX_COEF}); 0 turns it off.")
    ptx_dataset: str = option("", "Pre-training texts for PPO-ptx: JSONL with a \"text\" field (or prompt + "
                                  "response) per line, or plain text lines.")
    ptx_batch_size: int = option(8, "Pre-training sequences per PPO micro-batch when ptx_coef > 0.")
    # --- models: memory and precision ---
    lora: bool = option(False, "Train LoRA adapters on the actor; the reference is then the same base with the "
                               "adapter disabled (one policy copy in memory instead of two).")
    critic_lora: bool = option(False, "Train the critic as LoRA adapters on the reward model's backbone, shared "
                                      "with the frozen reward model (adapter disabled when scoring): one copy "
                                      "instead of two. Needs critic_init = reward_model.")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: float = option(32.0, "LoRA scaling numerator (updates are scaled by alpha / r).")
    lora_dropout: float = option(0.0, "Dropout inside the critic's LoRA adapters (critic_lora; the actor's and the "
                                      "models' own dropout are always off, so the PPO ratio starts at 1).")
    lora_target_modules: list[str] = option(["all-linear"], "Module names LoRA adapts (e.g. c_attn c_proj, or "
                                                            "q_proj v_proj); 'all-linear' targets every linear "
                                                            "layer but the output head.")
    critic_init: str = option("reward_model", "Critic initialisation: reward_model (its backbone and score head, "
                                              "as InstructGPT) or policy (the policy's backbone, value head 0).",
                              choices=CRITIC_INIT_CHOICES)
    bf16: str = option("auto", "bfloat16 mixed precision (the frozen reward model is stored in bf16; the "
                               "reference in float32 like the actor): auto (on GPUs that support it), true, or false.", choices=BF16_CHOICES)
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass (less memory, "
                                                 "~30 % slower).")
    fused_activations: bool = option(True, "Run GPT-2-style tanh-GELU activations (gelu_new, gelu_fast) as "
                                           "torch's one fused kernel for the same function (last-bit rounding "
                                           "differences only; ~18 % of a tiny model's update on the CPU).")
    cpu: bool = option(False, "Run on the CPU even when a GPU is available.")
    # --- keeping the best policy ---
    select_every: int = option(5, "Evaluate the policy on the selection prompts every N iterations and keep the "
                                  "best one as the final policy (0: the final policy is the last one).")
    select_fraction: float = option(0.1, "Share of the training prompts held out (not trained on) for the "
                                         "periodic selection evaluation.")
    select_max_prompts: int = option(16, "At most this many selection prompts.")
    select_samples: int = option(4, "Responses sampled per selection prompt at each selection evaluation.")
    select_signal: str = option("auto", "What the best policy maximises on the selection prompts: oracle (the "
                                        "demo task's hidden score), held_out_rm (selection_reward_model, a reward "
                                        "model PPO does not optimise), penalised_score (the optimised score − β·KL "
                                        "to the start); auto: oracle on the demo task, else held_out_rm when "
                                        "selection_reward_model is set, else penalised_score.",
                                choices=SELECT_SIGNAL_CHOICES)
    selection_reward_model: str = option("", "A reward model not optimised (e.g. an ensemble member left out of "
                                             "reward_ensemble) that scores the selection evaluation.")
    # --- progress, checkpoints, resume ---
    seed: int = option(0, "Random seed (prompt order, sampling, mini-batch shuffles); each process adds its "
                          "rank.")
    log_every: int = option(1, "Write a progress line every N iterations (metrics are reported every one).")
    sample_every: int = option(10, "Report a sample table (prompt, response, reward, score, KL) every N "
                                   "iterations (0: never).")
    samples_per_table: int = option(8, "Rows per sample table.")
    checkpoint_every: int = option(50, "Write a resumable checkpoint every N iterations (0: only on a graceful "
                                       "stop).")
    keep_checkpoints: int = option(2, "How many of the newest checkpoints to keep.")
    resume: str = option("", "Resume from a checkpoint: 'last' (newest in output_dir/checkpoints; fresh start "
                             "when there is none) or a checkpoint directory; empty starts fresh.")

    def __post_init__(self) -> None:
        check_required(self, "policy", "reward_model", "prompts", "output_dir")
        check_strings(self, "eval_prompts", "ptx_dataset", "resume", "stop_token", "selection_reward_model",
                      "system_prompt")
        format_of_config(self)
        if isinstance(self.reward_ensemble, str):
            self.reward_ensemble = [m for m in self.reward_ensemble.replace(",", " ").split() if m]
        if not isinstance(self.reward_ensemble, list) or not all(isinstance(m, str) and m.strip()
                                                                 for m in self.reward_ensemble):
            raise ConfigError("reward_ensemble", "must be a list of reward model directories")
        if not self.stop_token:
            raise ConfigError("stop_token", "is required ('eos' or a token string)")
        for name, minimum in (
            ("eval_max_prompts", 1), ("max_prompt_length", 1), ("iterations", 0), ("total_episodes", 0),
            ("rollout_batch_size", 1), ("mini_batch_size", 1), ("micro_batch_size", 1),
            ("inference_batch_size", 0), ("ppo_epochs", 1), ("response_length", 1), ("kl_horizon", 0),
            ("eval_samples", 1), ("select_every", 0), ("select_max_prompts", 1), ("select_samples", 1),
            ("ptx_batch_size", 1), ("lora_r", 1), ("seed", 0), ("log_every", 1), ("sample_every", 0),
            ("samples_per_table", 1), ("checkpoint_every", 0), ("keep_checkpoints", 1),
        ):
            check_integer(self, name, minimum)
        for name, low, high, ends in (
            ("eval_fraction", 0.0, 1.0, "[)"), ("temperature", 0.0, math.inf, "()"), ("top_p", 0.0, 1.0, "(]"),
            ("missing_eos_penalty", 0.0, math.inf, "[)"), ("init_kl_coef", 0.0, math.inf, "[)"),
            ("kl_target", 0.0, math.inf, "[)"), ("reward_clip", 0.0, math.inf, "[)"),
            ("cliprange", 0.0, 1.0, "()"), ("cliprange_value", 0.0, math.inf, "()"), ("vf_coef", 0.0, math.inf, "[)"),
            ("gamma", 0.0, 1.0, "[]"), ("lam", 0.0, 1.0, "[]"), ("lr", 0.0, 1.0, "()"), ("critic_lr", 0.0, 1.0, "()"),
            ("warmup_ratio", 0.0, 1.0, "[)"), ("min_lr_ratio", 0.0, 1.0, "[]"), ("weight_decay", 0.0, math.inf, "[)"),
            ("max_grad_norm", 0.0, math.inf, "[)"), ("ptx_coef", 0.0, math.inf, "[)"),
            ("lora_alpha", 0.0, math.inf, "()"), ("lora_dropout", 0.0, 1.0, "[)"),
            ("ensemble_coef", 0.0, math.inf, "[)"), ("kl_stop_factor", 0.0, math.inf, "[)"),
            ("select_fraction", 0.0, 1.0, "[)"),
        ):
            check_number(self, name, low, high, low_open=ends[0] == "(", high_open=ends[1] == ")")
        check_choice(self, "task", TASK_CHOICES)
        check_choice(self, "kl_estimator", KL_ESTIMATOR_CHOICES)
        check_choice(self, "score_norm", SCORE_NORM_CHOICES)
        check_choice(self, "critic_init", CRITIC_INIT_CHOICES)
        check_choice(self, "ensemble_combination", ENSEMBLE_COMBINATION_CHOICES)
        check_choice(self, "select_signal", SELECT_SIGNAL_CHOICES)
        normalise_bf16(self)
        check_booleans(self, "evaluate", "trust_remote_code", "whiten_rewards", "whiten_advantages", "lora",
                       "critic_lora", "gradient_checkpointing", "cpu")
        normalise_lora_target_modules(self)
        if self.critic_lora and self.critic_init != "reward_model":
            raise ConfigError("critic_lora", "needs critic_init = reward_model (the adapters share the RM's backbone)")
        if self.ptx_coef > 0 and not self.ptx_dataset.strip():
            raise ConfigError("ptx_dataset", "is required when ptx_coef > 0")
        if self.kl_stop_factor > 0 and 0 < self.kl_target and self.kl_stop_factor <= 1:
            raise ConfigError("kl_stop_factor", f"must be > 1 (a multiple of kl_target above it) or 0, got "
                                                f"{self.kl_stop_factor}")
        if self.select_signal == "held_out_rm" and not self.selection_reward_model.strip():
            raise ConfigError("selection_reward_model", "is required when select_signal = held_out_rm")
        if self.iterations == 0 and self.total_episodes == 0:
            raise ConfigError("iterations", "set iterations or total_episodes (both are 0)")
        if self.rollout_batch_size % self.mini_batch_size:
            raise ConfigError("mini_batch_size", f"must divide rollout_batch_size ({self.rollout_batch_size}), "
                                                 f"got {self.mini_batch_size}")
        if self.mini_batch_size % self.micro_batch_size:
            raise ConfigError("micro_batch_size", f"must divide mini_batch_size ({self.mini_batch_size}), "
                                                  f"got {self.micro_batch_size}")

        # Derived sizes, computed once here (plain attributes, not fields: config.json keeps the inputs only).
        self.num_iterations = self.iterations or math.ceil(self.total_episodes / self.rollout_batch_size)
        self.mini_batches_per_rollout = self.rollout_batch_size // self.mini_batch_size
        self.gradient_accumulation_steps = self.mini_batch_size // self.micro_batch_size
        self.optimizer_steps_per_iteration = self.ppo_epochs * self.mini_batches_per_rollout
        self.total_optimizer_steps = self.num_iterations * self.optimizer_steps_per_iteration
        from training.rlhf.optim import warmup_steps_for  # lazily: importing this module stays torch-free

        self.warmup_steps = warmup_steps_for(self.total_optimizer_steps, self.warmup_ratio)
        self.episodes = self.num_iterations * self.rollout_batch_size
        self.generation_batch_size = self.inference_batch_size or self.rollout_batch_size
        self.adaptive_kl = self.kl_target > 0
        self.kl_horizon_episodes = self.kl_horizon or max(1, self.episodes // KL_HORIZON_RUN_FRACTION_DEN)
        self.kl_stop = self.kl_stop_factor * self.kl_target if self.adaptive_kl and self.kl_stop_factor else 0.0

    @property
    def format(self) -> PromptFormat:
        """The prompt format of `prompt_format` + `system_prompt` (validated in __post_init__)."""
        return format_of_config(self)

    def derived(self) -> dict[str, Any]:
        """The sizes computed from the options (per process)."""
        names = ("num_iterations", "mini_batches_per_rollout", "gradient_accumulation_steps",
                 "optimizer_steps_per_iteration", "total_optimizer_steps", "warmup_steps", "episodes",
                 "generation_batch_size", "adaptive_kl", "kl_horizon_episodes", "kl_stop")
        return {name: getattr(self, name) for name in names}
