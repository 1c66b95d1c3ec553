"""Fixtures for the data in/out tests (import, sampling, export, agreement). Import them into a test module
with `from tests.annotate.data_fixtures import *  # noqa: F403` or by name."""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = [
    "the soup was warm and the bread was fresh",
    "a quiet morning with coffee and a good book",
    "the train was late again but the view was lovely",
    "we walked along the river until the sun went down",
    "this little cafe makes the best lemon cake in town",
    "the service was slow and the room was cold",
    "bright colours , kind people and a lot of music",
    "rain all day , so we stayed in and played cards",
]


def build_random_policy(out: Path) -> Path:
    """A random 2-layer GPT-2 and a byte-level BPE tokenizer (PAD ≠ EOS) saved with save_pretrained.

    Stand-in for the demo's tiny model in unit tests: untrained, so its samples are varied gibberish,
    built in well under a second.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    import torch

    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def random_policy_dir(tmp_path_factory) -> Path:
    return build_random_policy(tmp_path_factory.mktemp("policy") / "gpt2-tiny")


def make_ranked_prompt(project, text, tiers_by_user, *, k=None, metadata=None, round=1, flags=None, all_bad=None,
                       display_orders=None):
    """A prompt with K responses and one ranking per (user → tiers of response *indices*). Returns the prompt.

    flags / all_bad: user → {index: [flag, …]} / bool. display_orders: user → list of indices shown in order.
    """
    from annotate.models import Prompt, Ranking, Response

    k = k or 1 + max(i for tiers in tiers_by_user.values() for tier in tiers for i in tier)
    prompt = Prompt.objects.create(project=project, text=text, metadata=metadata or {}, round=round)
    responses = [Response.objects.create(prompt=prompt, text=f"{text} — response {i} " + "w" * i) for i in range(k)]
    ids = [r.pk for r in responses]
    for user, tiers in tiers_by_user.items():
        Ranking.objects.create(
            prompt=prompt,
            annotator=user,
            source=Ranking.Source.HUMAN,
            tiers=[[ids[i] for i in tier] for tier in tiers],
            display_order=[ids[i] for i in (display_orders or {}).get(user, [])],
            flags={str(ids[i]): f for i, f in ((flags or {}).get(user) or {}).items()},
            all_bad=bool((all_bad or {}).get(user)),
            ratings={str(ids[i]): 1 + (i % 7) for i in range(k)},
        )
    return prompt
