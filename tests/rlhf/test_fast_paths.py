"""The PPO trainer's fast paths compute what the plain paths compute (bench/RESULTS.md, "Where an iteration's
time goes"): the LM head on the response columns only, the fused tanh-GELU, the fused AdamW."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from training.rlhf.optim import build_adamw, fused_adamw_supported, param_groups
from training.rlhf.policy import fuse_activations
from training.rlhf.rollout import accepts_logits_to_keep, causal_lm_logits, join_prompt_response
from training.rlhf.sampling import left_pad


@pytest.fixture(scope="module")
def lm(random_lm_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(random_lm_dir).eval()


def _sequences(prompt_lengths=(3, 6), response_lengths=(4, 2), vocab=40):
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, vocab, (n,), generator=generator).tolist() for n in prompt_lengths]
    prompt_ids, prompt_mask = left_pad(prompts, 1)
    width = max(response_lengths)
    response_ids = torch.full((len(response_lengths), width), 1)
    response_mask = torch.zeros((len(response_lengths), width), dtype=torch.long)
    for i, n in enumerate(response_lengths):
        response_ids[i, :n] = torch.randint(5, vocab, (n,), generator=generator)
        response_mask[i, :n] = 1
    return join_prompt_response(prompt_ids, prompt_mask, response_ids, response_mask)


def test_response_logits_from_the_kept_columns_equal_the_full_forward_sliced(lm):
    assert accepts_logits_to_keep(lm)  # GPT-2 in transformers 5 takes logits_to_keep
    sequences = _sequences()
    with torch.no_grad():
        full = lm(input_ids=sequences.input_ids, attention_mask=sequences.attention_mask,
                  position_ids=sequences.position_ids).logits[:, sequences.context_length - 1 : -1]
        kept = causal_lm_logits(lm, sequences)
    assert kept.shape == full.shape == (2, 4, lm.config.vocab_size)
    torch.testing.assert_close(kept, full, atol=1e-5, rtol=1e-5)


def test_a_model_without_logits_to_keep_gets_the_full_forward_sliced(lm):
    class NoKeep(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    wrapped = NoKeep(lm)
    assert not accepts_logits_to_keep(wrapped)
    sequences = _sequences()
    with torch.no_grad():
        torch.testing.assert_close(causal_lm_logits(wrapped, sequences), causal_lm_logits(lm, sequences),
                                   atol=1e-5, rtol=1e-5)


def test_fused_gelu_computes_the_tanh_gelu_and_leaves_the_config(lm, tmp_path):
    from transformers.activations import GELUTanh, NewGELUActivation

    x = torch.linspace(-6, 6, 1001)
    expected = 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))  # the formula
    torch.testing.assert_close(GELUTanh()(x), expected, atol=2e-6, rtol=1e-5)

    fused = fuse_activations(copy.deepcopy(lm))
    kinds = {type(m) for m in fused.modules()}
    assert NewGELUActivation in {type(m) for m in lm.modules()}
    assert GELUTanh in kinds and NewGELUActivation not in kinds
    sequences = _sequences()
    with torch.no_grad():
        torch.testing.assert_close(causal_lm_logits(fused, sequences), causal_lm_logits(lm, sequences),
                                   atol=1e-5, rtol=1e-5)
    fused.save_pretrained(tmp_path / "saved")  # the saved model still names its own activation
    assert '"activation_function": "gelu_new"' in (tmp_path / "saved" / "config.json").read_text()


def test_fused_adamw_takes_the_same_steps_as_the_per_tensor_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 1))
    plain, initial = copy.deepcopy(model), copy.deepcopy(model)
    fused_opt = build_adamw(model, lr=1e-2, weight_decay=0.1)
    assert fused_opt.defaults["fused"] is True  # CPU float parameters: the fused kernel
    plain_opt = torch.optim.AdamW(param_groups(plain, weight_decay=0.1), lr=1e-2, fused=False, foreach=False)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    for _ in range(5):
        for net, opt in ((model, fused_opt), (plain, plain_opt)):
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(model.parameters(), initial.parameters()))  # it moved


def test_fused_adamw_is_not_asked_for_where_torch_lacks_it():
    cpu = [{"params": [nn.Parameter(torch.zeros(2))]}]
    assert fused_adamw_supported(cpu)
    meta = [{"params": [nn.Parameter(torch.zeros(2, device="meta"))]}]
    assert not fused_adamw_supported(meta)
    mixed_int = [{"params": [nn.Parameter(torch.zeros(2)), torch.zeros(2, dtype=torch.long)]}]
    assert not fused_adamw_supported(mixed_int)
