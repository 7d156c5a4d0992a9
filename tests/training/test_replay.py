"""Replay against forgetting, on the tiny model: the replay mix keeps general answers that plain training loses."""

from __future__ import annotations

import json

import pytest

from services.shared.errors import InvalidArgument
from services.training.replay import answer_prompts, general_prompts, mix, replay_records

PROMPTS = general_prompts()[:24]
TOKENS = 6
WORDS = ["yes" if i % 2 == 0 else "no" for i in range(len(PROMPTS))]


def _chat(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def _train(base, records, output_dir, **overrides):
    from services.training.trainer import TrainConfig, Trainer

    settings = {"n_epochs": 4, "batch_size": 4, "learning_rate": 1e-2, "bf16": False, "seed": 7, **overrides}
    trainer = Trainer(TrainConfig(**settings), base, records, records[:4], output_dir=output_dir, base_model_id="tiny")
    trainer.setup()
    trainer.train()
    trainer.model.eval()
    return trainer


def _agreement(model, tokenizer, reference: list[str]) -> float:
    answers = answer_prompts(model, tokenizer, PROMPTS, max_new_tokens=TOKENS)
    return sum(a == r for a, r in zip(answers, reference, strict=True)) / len(reference)


@pytest.fixture(scope="module")
def knowing_base(tiny_model_dir, tmp_path_factory):
    """The tiny model taught short answers to the general prompts: a base model with definite
    general behaviour (a random tiny model only emits special tokens) for a narrow fine-tune to
    disturb. Every weight is trained: LoRA alone cannot move a random model's tied, near-zero
    embeddings far enough to learn anything (measured: loss stuck at ~10.3 of ln(vocab) = 10.8)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    general = [_chat(p, w) for p, w in zip(PROMPTS, WORDS, strict=True)]
    trainer = _train((model, tokenizer), general, tmp_path_factory.mktemp("knowing"), n_epochs=30,
                     learning_rate=1e-2, method="full")
    answers = answer_prompts(trainer.model, tokenizer, PROMPTS, max_new_tokens=TOKENS)
    assert sum(a == w for a, w in zip(answers, WORDS, strict=True)) >= 20, answers
    path = tmp_path_factory.mktemp("knowing-base")
    trainer.model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def _narrow_task(n: int = 48) -> list[dict]:
    """A narrow domain whose one answer pulls every answer its way."""
    return [_chat(f"What is the status of ticket {i}?", "no") for i in range(n)]


def test_replay_keeps_general_answers_that_plain_training_loses(knowing_base, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def base():
        return (AutoModelForCausalLM.from_pretrained(knowing_base, dtype=torch.float32),
                AutoTokenizer.from_pretrained(knowing_base))

    model, tokenizer = base()
    reference = answer_prompts(model, tokenizer, PROMPTS, max_new_tokens=TOKENS)  # what the base model says
    replay = [_chat(p, a) for p, a in zip(PROMPTS, reference, strict=True) if a]
    domain = _narrow_task()
    held_out = [f"What is the status of ticket {i}?" for i in range(100, 104)]
    results = {}
    for name, train in (("plain", domain), ("replay", mix(domain, replay, 0.3, seed=1))):
        trainer = _train(base(), train, tmp_path / name)
        assert answer_prompts(trainer.model, tokenizer, held_out, max_new_tokens=TOKENS) == ["no"] * 4  # learnt
        results[name] = _agreement(trainer.model, tokenizer, reference)
    assert results["plain"] <= 0.6, results  # plain training forgets: every answer becomes the domain's
    assert results["replay"] >= 0.8 and results["replay"] >= results["plain"] + 0.3, results  # replay keeps them


def test_mix_adds_the_fraction_and_is_seeded():
    train = [{"id": i} for i in range(80)]
    replay = [{"replay": i} for i in range(30)]
    mixed = mix(train, replay, 0.2, seed=5)
    assert len(mixed) == 100 and sum("replay" in r for r in mixed) == 20
    assert mix(train, replay, 0.2, seed=5) == mixed and mix(train, replay, 0.2, seed=6) != mixed
    assert sum("replay" in r for r in mix(train, replay, 0.5, seed=5)) == 80  # more than the set: it repeats
    assert mix(train, replay, 0.0, seed=5) == train
    with pytest.raises(InvalidArgument):
        mix(train, replay, 1.0, seed=5)


def test_base_answers_are_generated_once_and_cached(tmp_path):
    calls = []

    def generate(prompts):
        calls.append(len(prompts))
        return [f"answer {i}" for i in range(len(prompts))]

    first = replay_records(tmp_path, "key", generate)
    second = replay_records(tmp_path, "key", generate)
    assert first == second and calls == [len(general_prompts())]
    assert json.loads((tmp_path / "key.jsonl").read_text().splitlines()[0])["messages"][1]["content"] == "answer 0"
    assert len(general_prompts()) >= 100
