"""The prompt format (training/rlhf/chat_format.py) in known-answer tests on the tiny chat template, the tiny
chat model build (tiny_model.py, `TinyModelSpec.chat`), and the format in the configs and in sampling."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from training.rlhf import tiny_model
from training.rlhf.chat_format import (
    PLAIN,
    PromptFormat,
    PromptFormatError,
    add_special_tokens_for,
    chat_messages,
    check_same_format,
    format_messages,
    format_of_config,
    format_of_project,
    format_prompt,
    split_conversation,
)
from training.rlhf.configs import ConfigError
from training.rlhf.ppo_config import PPOConfig
from training.rlhf.rm_config import RewardModelConfig
from training.rlhf.tiny_model import EOS_TOKEN, TINY_CHAT_TEMPLATE, TinyModelSpec

CHAT = PromptFormat(kind="chat")
CHAT_SYSTEM = PromptFormat(kind="chat", system_prompt="Be brief.")


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_chat_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_chat_model_dir)


@pytest.fixture(scope="module")
def plain_tokenizer(random_lm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(random_lm_dir)


# --- format_prompt and friends: known answers on the tiny template ---------------------------------------


def test_plain_is_the_prompt_itself_whatever_the_tokenizer(chat_tokenizer, plain_tokenizer):
    for tokenizer in (chat_tokenizer, plain_tokenizer):
        assert format_prompt(tokenizer, "Review the cafe:", prompt_format=PLAIN) == "Review the cafe:"


def test_chat_applies_the_template_with_the_generation_prompt(chat_tokenizer):
    assert format_prompt(chat_tokenizer, "Review the cafe:", prompt_format=CHAT) == (
        "### User: Review the cafe:\n### Assistant:")
    assert format_prompt(chat_tokenizer, "Review the cafe:", prompt_format=CHAT_SYSTEM) == (
        "### System: Be brief.\n### User: Review the cafe:\n### Assistant:")


def test_a_response_is_the_assistant_text_then_eos(chat_tokenizer):
    """What the model continues + the response + EOS is exactly the template's text of the whole conversation
    (up to the newline the template writes after EOS): the boundary every stage relies on."""
    prompt, response = "Review the cafe:", " The coffee was warm."
    full = chat_tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False)
    assert format_prompt(chat_tokenizer, prompt, prompt_format=CHAT) + response + EOS_TOKEN + "\n" == full
    assert chat_tokenizer.eos_token == EOS_TOKEN


def test_format_messages_puts_the_system_prompt_first_unless_there_is_one(chat_tokenizer):
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": " b"}, {"role": "user", "content": "c"}]
    assert format_messages(chat_tokenizer, turns, prompt_format=CHAT_SYSTEM) == (
        f"### System: Be brief.\n### User: a\n### Assistant: b{EOS_TOKEN}\n### User: c\n### Assistant:")
    own = [{"role": "system", "content": "Own."}, *turns]
    assert format_messages(chat_tokenizer, own, prompt_format=CHAT_SYSTEM).startswith("### System: Own.\n### User")
    with pytest.raises(PromptFormatError, match="needs prompt_format 'chat'"):
        format_messages(chat_tokenizer, turns, prompt_format=PLAIN)


def test_chat_without_a_template_is_a_clear_error(plain_tokenizer):
    with pytest.raises(PromptFormatError, match="has no chat template"):
        format_prompt(plain_tokenizer, "x", prompt_format=CHAT)


def test_a_template_that_refuses_the_conversation_is_a_clear_error(chat_tokenizer):
    import copy

    strict = copy.deepcopy(chat_tokenizer)
    strict.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                            "supported') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert format_prompt(strict, "p", prompt_format=CHAT) == "p"
    with pytest.raises(PromptFormatError, match="System role not supported.*try without a system prompt"):
        format_prompt(strict, "p", prompt_format=CHAT_SYSTEM)


def test_chat_messages_and_split_conversation():
    assert chat_messages("p") == [{"role": "user", "content": "p"}]
    assert chat_messages("p", system_prompt="s") == [{"role": "system", "content": "s"},
                                                     {"role": "user", "content": "p"}]
    turns, answer = split_conversation([{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}])
    assert (turns, answer) == ([{"role": "user", "content": "p"}], "r")
    for bad in ([], [{"role": "user", "content": "p"}], [{"role": "assistant", "content": "r"}] * 2):
        with pytest.raises(PromptFormatError, match="must end with a user turn"):
            split_conversation(bad)


def test_special_tokens_only_for_plain():
    assert add_special_tokens_for(PLAIN) is True and add_special_tokens_for(CHAT) is False


def test_format_values_and_their_stored_form():
    with pytest.raises(PromptFormatError, match="must be one of plain, chat"):
        PromptFormat(kind="xml")
    with pytest.raises(PromptFormatError, match="needs prompt_format 'chat'"):
        PromptFormat(kind="plain", system_prompt="s")
    with pytest.raises(PromptFormatError, match="limit is 4000"):
        PromptFormat(kind="chat", system_prompt="x" * 4001)
    assert PromptFormat.from_dict(CHAT_SYSTEM.as_dict()) == CHAT_SYSTEM
    assert PromptFormat.from_dict(None) == PLAIN and PromptFormat.from_dict({}) == PLAIN  # older models
    # the SFT snapshot manifest names the kind "format"
    assert PromptFormat.from_dict({"format": "chat", "system_prompt": "Be brief."}) == CHAT_SYSTEM
    assert format_of_project(kind="plain", system_prompt="left over") == PLAIN
    assert format_of_project(kind="chat", system_prompt="Be brief.") == CHAT_SYSTEM


def test_check_same_format_names_both():
    check_same_format(trained=CHAT_SYSTEM, requested=PromptFormat("chat", "Be brief."), what="the RM")
    with pytest.raises(PromptFormatError) as caught:
        check_same_format(trained=CHAT, requested=PLAIN, what="the reward model at /rm")
    message = str(caught.value)
    assert "the reward model at /rm" in message and "the chat template" in message and "plain text" in message
    long_a, long_b = PromptFormat("chat", "x" * 80 + "a"), PromptFormat("chat", "x" * 80 + "bb")
    with pytest.raises(PromptFormatError, match="another system prompt"):
        check_same_format(trained=long_a, requested=long_b, what="the RM")


# --- the configs carry it -------------------------------------------------------------------------------


def test_configs_default_to_plain_and_validate_the_format():
    rm = RewardModelConfig(model="m", dataset="d")
    ppo = PPOConfig(policy="p", reward_model="r", prompts="x", output_dir="o")
    assert rm.format == PLAIN and ppo.format == PLAIN
    assert (rm.prompt_format, rm.system_prompt) == ("plain", "")
    chat = RewardModelConfig(model="m", dataset="d", prompt_format="chat", system_prompt="Be brief.")
    assert chat.format == CHAT_SYSTEM
    with pytest.raises(ConfigError) as caught:
        PPOConfig(policy="p", reward_model="r", prompts="x", output_dir="o", prompt_format="xml")
    assert caught.value.field == "prompt_format"
    with pytest.raises(ConfigError) as caught:
        RewardModelConfig(model="m", dataset="d", system_prompt="needs chat")
    assert caught.value.field == "system_prompt"

    @dataclasses.dataclass
    class Fields:
        prompt_format: str = "chat"
        system_prompt: str = ""

    assert format_of_config(Fields()) == CHAT


# --- the tiny chat model ------------------------------------------------------------------------------------


def test_the_chat_option_leaves_every_plain_build_hash_unchanged():
    """`chat` enters the hash only when true: the hash of a plain spec is the one computed before the option
    existed (the spec without the field), so cached plain builds stay current."""
    fields = dataclasses.asdict(TinyModelSpec())
    del fields["chat"]
    payload = {"spec": fields, "versions": tiny_model._library_versions(), "format": tiny_model.BUILD_FORMAT}
    before = hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()
    assert tiny_model.build_hash(TinyModelSpec()) == before
    assert tiny_model.build_hash(TinyModelSpec(chat=True)) != before
    with pytest.raises(ConfigError, match="chat"):
        TinyModelSpec(chat="yes")


def test_tiny_chat_model_carries_its_template_and_builds_deterministically(tiny_chat_model_dir, tmp_path):
    from safetensors.torch import load_file

    spec = TinyModelSpec(**tiny_model.read_build_info(tiny_chat_model_dir)["spec"])
    assert spec.chat
    assert tiny_model.tiny_model_is_current(tiny_chat_model_dir, spec=spec)
    again = tiny_model.build_tiny_model(tmp_path / "again", spec=spec)
    first, second = load_file(tiny_chat_model_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all((first[k] == second[k]).all() for k in first)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(again)
    assert tokenizer.chat_template == TINY_CHAT_TEMPLATE
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


# --- sampling applies it ------------------------------------------------------------------------------------


def test_sampling_encodes_the_formatted_prompt_without_extra_special_tokens(chat_tokenizer):
    from training.rlhf.sampling import encode_prompts

    [ids] = encode_prompts(chat_tokenizer, ["Review the cafe:"], prompt_format=CHAT_SYSTEM)
    assert chat_tokenizer.decode(ids) == "### System: Be brief.\n### User: Review the cafe:\n### Assistant:"
    [plain] = encode_prompts(chat_tokenizer, ["Review the cafe:"])
    assert chat_tokenizer.decode(plain) == "Review the cafe:"


def test_sampling_from_the_chat_model_sees_the_template(tiny_chat_model_dir, monkeypatch):
    import torch

    from training.rlhf import sampling

    policy = sampling.load_policy(tiny_chat_model_dir, device="cpu", dtype=torch.float32)
    seen: list[str] = []
    original = policy.model.generate

    def generate(**kwargs):
        seen.extend(policy.tokenizer.batch_decode(kwargs["input_ids"], skip_special_tokens=True))
        return original(**kwargs)

    monkeypatch.setattr(policy.model, "generate", generate)
    params = sampling.SamplingParams(max_new_tokens=6, batch_size=4)
    texts = sampling.policy_generator(policy, params, prompt_format=CHAT)(["Review the cafe:"] * 2, 0)
    assert len(texts) == 2 and seen == ["### User: Review the cafe:\n### Assistant:"] * 2
    assert all("### User" not in g.text for g in texts)  # the response is the continuation alone


def test_a_chat_generator_on_a_model_without_a_template_refuses_before_sampling(random_lm_dir):
    import torch

    from training.rlhf import sampling

    policy = sampling.load_policy(random_lm_dir, device="cpu", dtype=torch.float32)
    with pytest.raises(PromptFormatError, match="no chat template"):
        sampling.policy_generator(policy, sampling.SamplingParams(), prompt_format=CHAT)
