"""The reward model (training/rlhf/reward_model.py): last-real-token scoring under any padding, the text
format, head initialisation, dropout, PAD ≠ EOS, LoRA, and the save → load round trip."""

import json
import math

import pytest
import torch
from torch import nn

from training.rlhf.calibration import Calibration
from training.rlhf.reward_model import (
    LoraSettings,
    RewardModel,
    gather_last_hidden,
    init_score_head,
    last_token_index,
    pad_sequences,
    position_ids_from_mask,
)

PROMPTS = ["Write a short review of the harbour cafe:", "Describe the jazz club:", "Review the bakery:"]
RESPONSES = [" The coffee was warm and the staff were friendly.", " Loud.", " The bread was fresh. I would go again!"]


def test_last_token_index_under_right_left_and_mixed_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]
    assert last_token_index(torch.tensor([[0, 1, 1, 0]])).tolist() == [2]
    assert last_token_index(torch.tensor([[True, True, False]])).tolist() == [1]


def test_gather_last_hidden_and_position_ids():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    assert torch.equal(gather_last_hidden(hidden, mask), torch.stack([hidden[0, 1], hidden[1, 3]]))
    assert position_ids_from_mask(mask).tolist() == [[0, 1, 1, 1], [0, 0, 1, 2]]


def test_pad_sequences_both_sides():
    ids, mask = pad_sequences([[5, 6, 7], [8]], pad_id=1, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_sequences([[5, 6, 7], [8]], pad_id=1, side="left")
    assert ids.tolist() == [[5, 6, 7], [1, 1, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError):
        pad_sequences([[1]], pad_id=0, side="middle")


def test_head_initialisation():
    head = nn.Linear(4095, 1)
    torch.manual_seed(0)
    init_score_head(head)
    assert float(head.weight.detach().std()) == pytest.approx(1 / math.sqrt(4096), rel=0.05)
    assert float(head.bias.detach()) == 0.0


@pytest.fixture(scope="module")
def model(random_lm_dir):
    torch.manual_seed(0)
    return RewardModel.from_backbone(str(random_lm_dir))


def test_attributes_ppo_relies_on(model):
    assert model.hidden_size == 64 and model.score_head.in_features == 64
    assert float(model.score_head.bias) == 0.0
    assert model.tokenizer.pad_token_id != model.tokenizer.eos_token_id
    assert type(model.backbone).__name__ == "GPT2Model"  # the bare transformer, no LM head
    assert model.max_length == 128  # capped at the model's n_positions


def test_text_format_is_prompt_ids_then_response_ids_then_eos(model):
    tokenizer = model.tokenizer
    [ids] = model.encode([PROMPTS[0]], [RESPONSES[0]])
    expected = (tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
                + tokenizer(RESPONSES[0], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    assert ids == expected
    [short] = model.encode([PROMPTS[0]], [RESPONSES[0]], max_length=6)
    assert short == expected[-6:] and short[-1] == tokenizer.eos_token_id


def test_score_reads_the_last_real_token_under_left_and_right_padding(model):
    sequences = model.encode(PROMPTS, RESPONSES)
    assert len({len(s) for s in sequences}) == 3  # really different lengths: real padding happens
    alone = [model.score_ids([s], padding_side="right")[0] for s in sequences]
    right = model.score_ids(sequences, padding_side="right", batch_size=3)
    left = model.score_ids(sequences, padding_side="left", batch_size=3)
    assert right == pytest.approx(alone, abs=1e-5)
    assert left == pytest.approx(alone, abs=1e-5)
    # the head really reads the last real token: the backbone's state there, through the head
    input_ids, mask = pad_sequences(sequences, pad_id=model.pad_token_id, side="left")
    with torch.no_grad():
        hidden = model.last_hidden(input_ids, mask)
        direct = model.score_head(hidden).squeeze(-1)
    assert direct.tolist() == pytest.approx(alone, abs=1e-5)


def test_dropout_is_off_even_in_train_mode(model):
    assert model.backbone.config.resid_pdrop == 0.0 and model.backbone.config.attn_pdrop == 0.0
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    input_ids, mask = pad_sequences(model.encode(PROMPTS, RESPONSES), pad_id=model.pad_token_id)
    model.train()
    try:
        with torch.no_grad():
            assert torch.equal(model(input_ids, mask), model(input_ids, mask))
    finally:
        model.eval()


def test_calibrated_by_default(model):
    raw = model.score_texts(PROMPTS, RESPONSES, calibrated=False)
    model.calibration = Calibration(bias=1.5, gain=2.0)
    try:
        assert model.score_texts(PROMPTS, RESPONSES) == pytest.approx([2 * r + 1.5 for r in raw], abs=1e-5)
    finally:
        model.calibration = Calibration()


def test_a_tokenizer_without_pad_gets_its_own_pad_token(random_lm_no_pad_dir):
    rm = RewardModel.from_backbone(str(random_lm_no_pad_dir))
    assert rm.tokenizer.pad_token == "<|pad|>"
    assert rm.pad_token_id != rm.tokenizer.eos_token_id
    assert rm.backbone.get_input_embeddings().num_embeddings >= len(rm.tokenizer)
    assert len(rm.score_texts(PROMPTS, RESPONSES)) == 3


def test_save_load_round_trip_gives_identical_scores(model, tmp_path):
    with torch.no_grad():
        model.score_head.bias.fill_(0.25)  # make the head non-trivial
    model.calibration = Calibration(bias=-0.5, gain=1.5)
    try:
        before = model.score_texts(PROMPTS, RESPONSES)
        out = model.save_pretrained(tmp_path / "rm", training_config={"lr": 1e-5}, snapshot_hash="abc",
                                    evaluation={"accuracy": 0.7})
    finally:
        model.calibration = Calibration()
        with torch.no_grad():
            model.score_head.bias.zero_()
    loaded = RewardModel.from_pretrained(out)
    assert loaded.score_texts(PROMPTS, RESPONSES) == pytest.approx(before, abs=1e-6)
    assert loaded.calibration == Calibration(bias=-0.5, gain=1.5)
    assert not loaded.training
    meta = json.loads((out / "reward_model.json").read_text())
    assert meta["backbone"] == "full" and meta["hidden_size"] == 64
    assert meta["training_config"] == {"lr": 1e-5} and meta["snapshot_hash"] == "abc"
    assert meta["evaluation"] == {"accuracy": 0.7} and meta["calibration"] == {"bias": -0.5, "gain": 1.5}
    assert (out / "backbone" / "config.json").exists() and (out / "tokenizer").is_dir()
    # saving a loaded model keeps what it was loaded with
    again = loaded.save_pretrained(tmp_path / "rm2")
    assert json.loads((again / "reward_model.json").read_text())["snapshot_hash"] == "abc"
    with pytest.raises(FileNotFoundError, match="not a reward model directory"):
        RewardModel.from_pretrained(tmp_path)


def test_lora_trains_adapters_and_head_only_and_round_trips(random_lm_dir, tmp_path):
    torch.manual_seed(1)
    rm = RewardModel.from_backbone(str(random_lm_dir), lora=LoraSettings(r=4, alpha=8, target_modules=["c_attn"]))
    trainable = {name for name, p in rm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or name.startswith("score_head") for name in trainable)
    assert {"score_head.weight", "score_head.bias"} <= trainable
    with torch.no_grad():  # LoRA B starts at zero; move it so the adapter matters
        for name, p in rm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    before = rm.score_texts(PROMPTS, RESPONSES)
    out = rm.save_pretrained(tmp_path / "lora-rm")
    assert (out / "adapter" / "adapter_config.json").exists() and not (out / "backbone").exists()
    loaded = RewardModel.from_pretrained(out)
    assert loaded.is_lora
    assert loaded.score_texts(PROMPTS, RESPONSES) == pytest.approx(before, abs=1e-6)
    meta = json.loads((out / "reward_model.json").read_text())
    assert meta["backbone"] == "lora" and meta["base_model"] == str(random_lm_dir.resolve())


def test_gradient_checkpointing_trains(random_lm_dir):
    rm = RewardModel.from_backbone(str(random_lm_dir), gradient_checkpointing=True)
    rm.train()
    input_ids, mask = pad_sequences(rm.encode(PROMPTS, RESPONSES), pad_id=rm.pad_token_id)
    rm(input_ids, mask, calibrated=False).sum().backward()
    assert rm.score_head.weight.grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in rm.backbone.parameters())
