"""The SFT trainer (training/rlhf/sft_trainer.py, sft_config.py): the loss on response tokens only, packing that
keeps demonstrations apart, the held-out loss and perplexity (known answers), and a few steps on the tiny demo
model: the held-out loss drops, before/after samples, the saved model loads with AutoModelForCausalLM and carries
its prompt format; a graceful stop with a checkpoint and a resume that continues it; LoRA + packing + the chat
template on a random tiny GPT-2."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.rlhf.recording import RecordingReporter
from training.rlhf.chat_format import PromptFormat
from training.rlhf.configs import ConfigError
from training.rlhf.data import DatasetError
from training.rlhf.sft_config import SFTConfig
from training.rlhf.sft_data import SftRecord
from training.rlhf.sft_trainer import (
    IGNORE_INDEX,
    SFT_INFO_FILE,
    SFTCollator,
    build_sft_example,
    encode_demonstrations,
    heldout_loss,
    perplexity,
    read_prompt_format,
    response_token_nll,
    split_demonstrations,
    train_sft,
)

ANSWER = " The coffee was fresh and the staff were friendly. I would come back!"


def write_split(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def demo_sft_dir(tmp_path):
    """An SFT snapshot directory (train.jsonl, test.jsonl) on demo prompts, every answer the same good review:
    a pattern a few steps can learn, so the held-out loss must drop."""
    from training.rlhf.demo_task import demo_prompts

    def rows(prompts, offset):
        return [{"prompt_id": str(offset + i), "prompt": p, "response": ANSWER, "metadata": {"task": "demo"},
                 "annotator": "sim", "source": "simulated"} for i, p in enumerate(prompts)]

    directory = tmp_path / "sft"
    write_split(directory / "train.jsonl", rows(demo_prompts(n=16, split="train"), 0))
    write_split(directory / "test.jsonl", rows(demo_prompts(n=6, split="test"), 100))
    return directory


def config_for(model_dir, dataset, out, **overrides):
    values = {"model": str(model_dir), "dataset": str(dataset), "output_dir": str(out), "batch_size": 4,
              "learning_rate": 1e-3, "warmup_ratio": 0.0, "checkpoint_every": 0, "log_every": 1, "seed": 7,
              "sample_prompts": 3, "max_new_tokens": 16, "cpu": True}
    values.update(overrides)
    return SFTConfig(**values)


# --- known answers ------------------------------------------------------------------------------------------


def test_labels_are_ignored_on_the_prompt_and_kept_on_the_response_and_eos():
    example = build_sft_example([11, 12, 13], [21, 22], eos_id=0, max_length=16)
    assert example["input_ids"] == [11, 12, 13, 21, 22, 0]
    assert example["labels"] == [IGNORE_INDEX] * 3 + [21, 22, 0]


def test_too_long_keeps_the_prompts_end_and_the_responses_start():
    # 6 prompt + 5 response tokens (+ EOS) into 8: the response keeps max(8 − 6, min(6, 4)) = 4, the prompt 4.
    example = build_sft_example([1, 2, 3, 4, 5, 6], [21, 22, 23, 24, 25], eos_id=0, max_length=8)
    assert example["input_ids"] == [3, 4, 5, 6, 21, 22, 23, 24]
    assert example["labels"] == [IGNORE_INDEX] * 4 + [21, 22, 23, 24]


def test_encoding_masks_exactly_the_prompt_tokens(random_lm_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(random_lm_dir)
    record = SftRecord(prompt="Review the village bakery:", response=" The bread was fresh.")
    [example] = encode_demonstrations(tokenizer, [record], prompt_format=PromptFormat(), max_length=64)
    prompt_ids = tokenizer(record.prompt)["input_ids"]
    response_ids = tokenizer(record.response, add_special_tokens=False)["input_ids"]
    assert example["input_ids"] == prompt_ids + response_ids + [tokenizer.eos_token_id]
    assert example["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response_ids + [tokenizer.eos_token_id]


def test_padding_and_packing_boundaries():
    examples = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]},
                {"input_ids": [8, 9], "labels": [IGNORE_INDEX, 9]}]
    padded = SFTCollator(pad_id=1)(examples)
    assert padded["input_ids"].tolist() == [[5, 6, 7], [8, 9, 1]]
    assert padded["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, 9, IGNORE_INDEX]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]

    packed = SFTCollator(pad_id=1, packing=True)(examples)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]  # positions restart per demonstration
    # the first token of the second demonstration is never a target predicted from the first one's end
    assert packed["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]]
    allowed = packed["attention_mask"][0, 0].int().tolist()
    assert allowed == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]


def test_packed_batch_gives_the_padded_batchs_loss(random_lm_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(random_lm_dir, attn_implementation="sdpa").eval()
    examples = [{"input_ids": [5, 6, 7, 8, 9], "labels": [IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9]},
                {"input_ids": [10, 11, 12], "labels": [IGNORE_INDEX, 11, 12]},
                {"input_ids": [13, 14, 15, 16], "labels": [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 16]}]
    with torch.no_grad():
        padded = SFTCollator(pad_id=1)(examples)
        nll_pad, n_pad = response_token_nll(model(input_ids=padded["input_ids"],
                                                  attention_mask=padded["attention_mask"]).logits, padded["labels"])
        packed = SFTCollator(pad_id=1, packing=True)(examples)
        out = model(input_ids=packed["input_ids"], attention_mask=packed["attention_mask"],
                    position_ids=packed["position_ids"], labels=packed["labels"])
        nll_pack, n_pack = response_token_nll(out.logits, packed["labels"])
    assert n_pad == n_pack == 6
    assert torch.allclose(nll_pad, nll_pack, atol=1e-4)
    assert out.loss.item() == pytest.approx(nll_pad.item() / 6, abs=1e-4)  # the model's own loss agrees


def test_response_token_nll_and_perplexity_known_answers():
    vocab = 7
    logits = torch.zeros(2, 4, vocab)  # uniform: every token costs log 7
    labels = torch.tensor([[IGNORE_INDEX, 3, 4, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 2, 5]])
    total, count = response_token_nll(logits, labels)
    assert count.item() == 4 and total.item() == pytest.approx(4 * math.log(vocab))
    assert perplexity(total.item() / count.item()) == pytest.approx(vocab)  # perplexity = exp(loss)
    # one sure prediction (logit +100 on the target) costs ~0: position 0 predicts labels[0, 1] = 3
    logits[0, 0, 3] = 100.0
    total, _ = response_token_nll(logits, labels)
    assert total.item() == pytest.approx(3 * math.log(vocab), abs=1e-4)
    assert perplexity(None) is None and perplexity(float("nan")) is None


def test_heldout_loss_is_token_weighted_whatever_the_batch_size(random_lm_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(random_lm_dir).train()  # as inside the Trainer
    examples = [{"input_ids": list(range(5, 5 + n)), "labels": [IGNORE_INDEX] + list(range(6, 5 + n))}
                for n in (3, 9, 4, 12)]
    one = heldout_loss(model, examples, pad_id=1, batch_size=1)
    assert one == pytest.approx(heldout_loss(model, examples, pad_id=1, batch_size=3), abs=1e-5)
    assert model.training  # dropout back on after the evaluation
    assert heldout_loss(model, [], pad_id=1, batch_size=4) is None


def test_held_out_prompts_are_split_by_prompt():
    records = [SftRecord(prompt=f"p{i % 5}", response="r", prompt_id=str(i % 5)) for i in range(20)]
    train, held = split_demonstrations(records, fraction=0.2, seed=3)
    assert {r.prompt_id for r in train}.isdisjoint({r.prompt_id for r in held})
    assert len({r.prompt_id for r in held}) == 1 and len(train) + len(held) == 20
    assert split_demonstrations(records, fraction=0.2, seed=3) == (train, held)


def test_config_validation():
    with pytest.raises(ConfigError, match="dataset"):
        SFTConfig(model="m", dataset="")
    with pytest.raises(ConfigError, match="system_prompt"):
        SFTConfig(model="m", dataset="d", system_prompt="Be kind.")  # needs the chat format
    with pytest.raises(ConfigError, match="eval_split"):
        SFTConfig(model="m", dataset="d", eval_split="train")
    with pytest.raises(ConfigError, match="warmup_ratio"):
        SFTConfig(model="m", dataset="d", warmup_ratio=1.0)


# --- training -----------------------------------------------------------------------------------------------


def test_a_few_steps_lower_the_heldout_loss_and_save_a_loadable_model(tiny_model_dir, demo_sft_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reporter = RecordingReporter()
    config = config_for(tiny_model_dir, demo_sft_dir, tmp_path / "out", max_steps=8, eval_every=4)
    result = train_sft(config, reporter=reporter)

    assert result.steps == 8 and not result.stopped and reporter.starts == [(8, 0)]
    assert reporter.train_steps() == list(range(1, 9))
    for _, metrics in reporter.metrics:
        if "loss" in metrics:
            assert {"loss", "lr", "grad_norm", "epoch", "tokens_per_s"} <= set(metrics)
    by_step = reporter.by_step()
    assert "eval/loss" in by_step[4] and "eval/loss" in by_step[8]  # every eval_every steps and at the end
    evaluation = result.evaluation
    before, after = evaluation["before"], evaluation["after"]
    assert after["loss"] < before["loss"] - 0.3, (before["loss"], after["loss"])
    assert after["perplexity"] == pytest.approx(math.exp(after["loss"]))
    assert by_step[8]["eval/perplexity"] == pytest.approx(after["perplexity"])
    assert evaluation["data"]["eval_source"] == "test" and evaluation["data"]["eval_prompts"] == 6
    for stage in (before, after):  # the demo task: samples scored by the oracle
        assert stage["samples"]["n"] == 3 and math.isfinite(stage["samples"]["oracle"])
    [rows] = reporter.samples.values()
    assert len(rows) == 3 and {"prompt", "response", "before", "demonstration", "oracle"} <= set(rows[0])
    assert rows[0]["demonstration"] == ANSWER
    assert reporter.evaluations == [evaluation] and reporter.outputs == [{"model": str(result.model_dir)}]

    # the saved model: loads on its own, with its tokenizer, its prompt format and its data's hash
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and model.config.pad_token_id == tokenizer.pad_token_id
    assert read_prompt_format(result.model_dir) == PromptFormat()
    info = json.loads((result.model_dir / SFT_INFO_FILE).read_text())
    assert info["training_config"]["max_steps"] == 8 and len(info["snapshot_hash"]) == 64
    assert json.loads((tmp_path / "out" / "config.json").read_text())["learning_rate"] == 1e-3

    # a second run into the same directory is refused (resume it instead)
    with pytest.raises(ConfigError, match="already holds"):
        train_sft(config, reporter=RecordingReporter())


def test_graceful_stop_writes_a_checkpoint_and_resume_continues(random_lm_dir, demo_sft_dir, tmp_path):
    out = tmp_path / "out"
    stopping = RecordingReporter(stop_after=2)
    first = train_sft(config_for(random_lm_dir, demo_sft_dir, out, max_steps=5, sample_prompts=2),
                      reporter=stopping)
    assert first.stopped and first.steps == 2 and first.model_dir is None
    assert first.checkpoint is not None and first.checkpoint.name == "checkpoint-2"
    assert [step for step, _ in stopping.checkpoints] == [2] and stopping.outputs == []

    resumed = RecordingReporter()
    second = train_sft(config_for(random_lm_dir, demo_sft_dir, out, max_steps=5, sample_prompts=2,
                                  resume="last"), reporter=resumed)
    assert not second.stopped and second.steps == 5 and resumed.starts == [(5, 2)]
    assert resumed.train_steps() == [3, 4, 5]
    # the "before" figures of the first start are kept (not re-measured on the half-trained model)
    assert second.evaluation["before"]["loss"] == pytest.approx(first_before_loss(out))
    assert (second.model_dir / "model.safetensors").exists()
    # the before/after table still shows what the start model wrote
    before_texts = json.loads((out / "evaluation_before.json").read_text())["samples_before"]
    assert [row["before"] for row in resumed.samples[5]] == before_texts and len(before_texts) == 2
    assert "samples_before" not in second.evaluation


def first_before_loss(out):
    return json.loads((out / "evaluation_before.json").read_text())["before"]["loss"]


def test_lora_packing_and_the_chat_template(random_lm_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.rlhf.tiny_model import add_chat_template

    chat_model = add_chat_template(random_lm_dir, tmp_path / "chat-lm")
    rows = [{"prompt_id": str(i), "prompt": f"Review place {i}:", "response": " It was lovely.",
             "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Review place {i}:"},
                          {"role": "assistant", "content": " It was lovely."}]} for i in range(12)]
    write_split(tmp_path / "chat.jsonl", rows)  # one file: the trainer holds out a share of its prompts
    reporter = RecordingReporter()
    config = config_for(chat_model, tmp_path / "chat.jsonl", tmp_path / "out", max_steps=3, lora=True, lora_r=4,
                        packing=True, prompt_format="chat", system_prompt="Be brief.", heldout_fraction=0.25,
                        sample_prompts=2, gradient_checkpointing=True)
    result = train_sft(config, reporter=reporter)

    assert result.steps == 3 and result.evaluation["data"]["eval_prompts"] == 3
    assert set(reporter.outputs[0]) == {"model", "adapter"}
    assert read_prompt_format(result.model_dir) == PromptFormat(kind="chat", system_prompt="Be brief.")
    base = AutoModelForCausalLM.from_pretrained(chat_model)
    merged = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert not any(n.startswith("base_model") or "lora" in n for n, _ in merged.named_parameters())
    moved = [n for n, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert moved  # the merged adapters changed the weights
    assert PeftModel.from_pretrained(base, reporter.outputs[0]["adapter"]) is not None
    # the chat template travels with the model, so every later stage can apply it
    assert AutoTokenizer.from_pretrained(result.model_dir).chat_template
    # what the model was trained on: the template's text, the loss only on the answer and EOS
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    record = SftRecord(prompt=rows[0]["prompt"], response=rows[0]["response"], messages=rows[0]["messages"])
    [example] = encode_demonstrations(tokenizer, [record], prompt_format=config.format, max_length=64)
    n_prompt = example["labels"].count(IGNORE_INDEX)
    assert tokenizer.decode(example["input_ids"][:n_prompt]) == (
        "### System: Be brief.\n### User: Review place 0:\n### Assistant:")
    assert tokenizer.decode(example["input_ids"][n_prompt:]) == " It was lovely.<|endoftext|>"


def test_a_rankings_file_or_a_missing_split_is_a_clear_error(random_lm_dir, ranking_dataset, tmp_path):
    with pytest.raises(DatasetError, match=r"train\.jsonl:1: field 'response'"):
        train_sft(config_for(random_lm_dir, ranking_dataset, tmp_path / "a"), reporter=RecordingReporter())
    with pytest.raises(DatasetError, match="no 'validation' split"):
        train_sft(config_for(random_lm_dir, ranking_dataset, tmp_path / "b", train_split="validation"),
                  reporter=RecordingReporter())
    with pytest.raises(ConfigError, match="chat template"):
        write_split(tmp_path / "one.jsonl", [{"prompt": "p", "response": "r"}])
        train_sft(config_for(random_lm_dir, tmp_path / "one.jsonl", tmp_path / "c", prompt_format="chat"),
                  reporter=RecordingReporter())


def test_a_tokenizer_without_pad_gets_one_distinct_from_eos(random_lm_no_pad_dir, demo_sft_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = train_sft(config_for(random_lm_no_pad_dir, demo_sft_dir, tmp_path / "out", max_steps=1,
                                  sample_prompts=0), reporter=RecordingReporter())
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)  # resized for the new token
    assert model.config.pad_token_id == tokenizer.pad_token_id
