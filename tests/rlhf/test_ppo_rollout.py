"""Rollout pieces of PPO (training.rlhf.rollout): truncation after the stop token, positions under left
padding, temperature in every log-prob, the reward model's view of a response, scores and per-token rewards."""

from __future__ import annotations

import pytest
import torch

from training.rlhf.rollout import (
    RunningMoments,
    generate_responses,
    join_prompt_response,
    last_response_index,
    normalise_scores,
    penalise_and_clip_scores,
    per_token_rewards,
    response_lengths,
    response_logprobs,
    reward_model_sequences,
    select_rows,
    truncate_after_stop,
)
from training.rlhf.sampling import left_pad

EOS, PAD = 0, 1


def test_truncation_after_the_first_stop_masks_everything_after_it():
    ids = torch.tensor([
        [5, 7, EOS, 9, EOS],  # stops at column 2; the second EOS and the 9 are masked
        [5, 6, 7, 8, 9],  # never stops: all five tokens are real (the missing-EOS penalty applies)
        [EOS, 3, 4, 5, 6],  # stops at once: only the EOS is an action
        [4, 11, 3, 12, 3],  # a second stop token (id 11) counts too
    ])
    out, mask, has_stop = truncate_after_stop(ids, [EOS, 11], PAD)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]
    assert out.tolist() == [[5, 7, EOS, PAD, PAD], [5, 6, 7, 8, 9], [EOS, PAD, PAD, PAD, PAD], [4, 11, PAD, PAD, PAD]]
    assert has_stop.tolist() == [True, False, True, True]
    assert response_lengths(mask).tolist() == [3, 5, 1, 2]
    assert last_response_index(mask).tolist() == [2, 4, 0, 1]


def test_truncation_equals_the_loop_on_random_ids():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (50, 9), generator=generator)
    out, mask, has_stop = truncate_after_stop(ids, [EOS], PAD)
    for b in range(50):
        row = ids[b].tolist()
        end = row.index(EOS) if EOS in row else len(row) - 1
        assert mask[b].tolist() == [1] * (end + 1) + [0] * (len(row) - end - 1)
        assert out[b].tolist() == row[: end + 1] + [PAD] * (len(row) - end - 1)
        assert bool(has_stop[b]) == (EOS in row)


def test_per_token_rewards_put_the_score_on_the_last_real_token():
    scores = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    rewards, non_score = per_token_rewards(scores, kl, mask, kl_coef=0.5)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, -0.1, -0.15 + 1.0], [-0.25 + 2.0, 0.0, 0.0]]))
    torch.testing.assert_close(non_score, torch.tensor([[-0.05, -0.1, -0.15], [-0.25, 0.0, 0.0]]))


def test_scores_penalty_clip_and_normalisation():
    scores = torch.tensor([0.5, 3.0, -4.0])
    has_stop = torch.tensor([True, False, True])
    out = penalise_and_clip_scores(scores, has_stop, missing_eos_penalty=1.0, reward_clip=2.5)
    torch.testing.assert_close(out, torch.tensor([0.5, 2.0, -2.5]))
    torch.testing.assert_close(penalise_and_clip_scores(scores, has_stop, missing_eos_penalty=0.0, reward_clip=None), scores)
    batch = normalise_scores(scores, "batch")
    torch.testing.assert_close(batch, (scores - scores.mean()) / scores.std())
    assert normalise_scores(scores, "none") is scores
    with pytest.raises(ValueError):
        normalise_scores(scores, "max")


def test_running_moments_equal_the_statistics_of_everything_seen():
    generator = torch.Generator().manual_seed(1)
    chunks = [torch.randn(n, generator=generator) * 3 + 2 for n in (5, 1, 17, 8)]
    moments = RunningMoments()
    for chunk in chunks:
        out = normalise_scores(chunk, "running", moments)
    everything = torch.cat(chunks).double()
    assert moments.count == everything.numel()
    assert moments.mean == pytest.approx(float(everything.mean()))
    assert moments.std == pytest.approx(float(everything.std(unbiased=False)))
    torch.testing.assert_close(out, ((chunks[-1] - moments.mean) / (moments.std + 1e-8)).float())
    restored = RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert restored.state_dict() == moments.state_dict()


def test_reward_model_sees_prompt_plus_response_without_stop_plus_eos():
    response = torch.tensor([[7, 8, EOS, PAD], [7, 8, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    has_stop = torch.tensor([True, False])
    rows = reward_model_sequences([[3, 4], [5]], response, mask, has_stop, end_token_id=99, max_length=100)
    assert rows == [[3, 4, 7, 8, 99], [5, 7, 8, 9, 10, 99]]
    # Too long: the end (response and end token) is kept, as in reward-model training.
    assert reward_model_sequences([[3, 4]], response[:1], mask[:1], has_stop[:1], end_token_id=99, max_length=3) == [[7, 8, 99]]


# --- with a (random) model --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm(random_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(random_lm_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(random_lm_dir)
    return model, tokenizer


def _batch(tokenizer, prompts, responses):
    prompt_ids, prompt_mask = left_pad([tokenizer(p)["input_ids"] for p in prompts], tokenizer.pad_token_id)
    width = max(len(r) for r in responses)
    response_ids = torch.full((len(responses), width), tokenizer.pad_token_id)
    response_mask = torch.zeros((len(responses), width), dtype=torch.long)
    for i, r in enumerate(responses):
        response_ids[i, : len(r)] = torch.tensor(r)
        response_mask[i, : len(r)] = 1
    return join_prompt_response(prompt_ids, prompt_mask, response_ids, response_mask)


def test_left_padding_gives_the_same_log_probs_as_no_padding(lm):
    model, tokenizer = lm
    prompts = ["Review the village bakery:", "Tell me about the mountain hotel and its rooms:"]
    responses = [[40, 41, 42, 43], [44, 45]]
    together = _batch(tokenizer, prompts, responses)
    assert together.attention_mask[0].tolist().count(0) > 0  # the first prompt is left-padded
    batch_logprobs, _ = response_logprobs(model, together, temperature=1.0)
    for i in range(2):
        alone = _batch(tokenizer, prompts[i : i + 1], responses[i : i + 1])
        single, _ = response_logprobs(model, alone, temperature=1.0)
        n = len(responses[i])
        torch.testing.assert_close(batch_logprobs[i, :n], single[0, :n], atol=1e-5, rtol=1e-5)
    # Without position ids from the mask the padded row would be scored at shifted positions.
    shifted = model(input_ids=together.input_ids, attention_mask=together.attention_mask).logits
    assert not torch.allclose(
        torch.log_softmax(shifted[0, together.context_length - 1 : -1], -1).gather(-1, together.input_ids[0, together.context_length:, None])[:4, 0],
        batch_logprobs[0, :4], atol=1e-4,
    )


def test_log_probs_use_the_temperature(lm):
    model, tokenizer = lm
    sequences = _batch(tokenizer, ["Review the village bakery:"], [[40, 41, 42]])
    with torch.no_grad():
        logits = model(input_ids=sequences.input_ids, attention_mask=sequences.attention_mask).logits
    labels = sequences.input_ids[:, sequences.context_length :]
    for temperature in (0.5, 1.0, 1.7):
        expected = torch.log_softmax(logits[:, sequences.context_length - 1 : -1] / temperature, -1)
        expected = expected.gather(-1, labels[..., None])[..., 0]
        got, entropy = response_logprobs(model, sequences, temperature=temperature, with_entropy=True)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert entropy.shape == got.shape and not entropy.requires_grad
    assert not torch.allclose(response_logprobs(model, sequences, temperature=0.5)[0],
                              response_logprobs(model, sequences, temperature=1.0)[0])


def test_generation_is_left_padded_batched_and_seeded(lm):
    model, tokenizer = lm
    prompts = ["Review the village bakery:", "Tell me about the mountain hotel and its rooms:"]
    prompt_ids, prompt_mask = left_pad([tokenizer(p)["input_ids"] for p in prompts], tokenizer.pad_token_id)
    kwargs = dict(max_new_tokens=6, temperature=1e-4, top_p=1.0, stop_token_ids=[tokenizer.eos_token_id],
                  pad_token_id=tokenizer.pad_token_id)
    model.train()
    batched = generate_responses(model, prompt_ids, prompt_mask, batch_size=2, **kwargs)
    assert model.training  # the mode is restored after generating in eval mode
    for i in range(2):
        ids, mask = left_pad([tokenizer(prompts[i])["input_ids"]], tokenizer.pad_token_id)
        alone = generate_responses(model, ids, mask, batch_size=1, **kwargs)
        n = alone.shape[1]
        assert batched[i, :n].tolist() == alone[0].tolist()  # (near-)greedy: padding changes nothing
    state = torch.get_rng_state()
    hot = dict(kwargs, temperature=1.0)
    first = generate_responses(model, prompt_ids, prompt_mask, batch_size=1, generator_seed=3, **hot)
    second = generate_responses(model, prompt_ids, prompt_mask, batch_size=2, generator_seed=3, **hot)
    assert torch.equal(torch.get_rng_state(), state)  # a seeded generation leaves the global RNG alone
    assert first.shape[0] == second.shape[0] == 2


def test_select_rows_trims_response_padding(lm):
    _, tokenizer = lm
    sequences = _batch(tokenizer, ["a:", "bb:"], [[40, 41, 42], [44]])
    sub = select_rows(sequences, torch.tensor([1]), trim_to=1)
    assert sub.input_ids.shape == (1, sequences.context_length + 1)
    assert sub.context_length == sequences.context_length
