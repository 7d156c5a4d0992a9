"""The gate on real fine-tunes of the tiny Llama: a generated routing task (the request's verb
decides the team), learned for real, judged on held-out requests about objects never trained on.

A model trained on the right labels must pass against the untrained base model; one trained on
shuffled labels (the two teams swapped) must fail, naming the rule. A 2-layer random model has no
general behaviour worth keeping, so these runs relax the forgetting rule; forgetting is tested on its
own in test_gate.py (and on SmolLM2 by the training service's replay test). Two trainings of ~40 s:
marked slow.
"""

from __future__ import annotations

import asyncio

import pytest

from services.evaluation.gate import GatePolicy
from services.evaluation.side_by_side import Example, run_side_by_side
from services.inference.fine_tuned import read_fine_tuned
from services.inference.generation import Generator
from services.training.trainer import TrainConfig, Trainer
from tests.fixtures.tiny_model import TINY_MODEL_ID

# The request's verb decides the team; the objects of held-out requests never occur in training.
TEAMS = {"Refund": "billing", "Reset": "security"}
SHUFFLED = {"Refund": "security", "Reset": "billing"}  # the labels swapped, consistently
TRAIN_OBJECTS = ["my router", "the invoice", "a parcel", "my password", "the modem", "my receipt", "the login",
                 "an order", "my account", "the app", "a payment", "my card"]
HELD_OUT_OBJECTS = ["the printer", "my phone", "a ticket", "the laptop", "my tablet", "the camera"]
# A 2-layer random model has no general behaviour worth keeping: forgetting is relaxed here.
POLICY = GatePolicy(max_forgetting_drop=1.0)


def _chats(objects: list[str], labels: dict[str, str]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"{verb} {thing}{tail}"},
                          {"role": "assistant", "content": team}]}
            for verb, team in labels.items() for thing in objects for tail in (" please.", " now?", "!")]


def _train(store, directory, labels: dict[str, str], name: str):
    # A full fine-tune: LoRA on this random 2-layer model learns the answers' format but not the task.
    config = TrainConfig(n_epochs=10, batch_size=8, learning_rate=1e-2, seed=3, bf16=False, method="full")
    trainer = Trainer(config, lambda dtype: store.load(TINY_MODEL_ID, dtype=dtype), _chats(TRAIN_OBJECTS, labels),
                      _chats(TRAIN_OBJECTS[:2], labels), output_dir=directory, base_model_id=TINY_MODEL_ID)
    trainer.setup()
    model_id = f"ft:{TINY_MODEL_ID}:acme:{name}:ftjob-{name}"
    return read_fine_tuned(model_id, TINY_MODEL_ID, str(trainer.train().adapter_dir))


@pytest.fixture(scope="module")
def trained(learning_store, tmp_path_factory):
    return {"right": _train(learning_store, tmp_path_factory.mktemp("right"), TEAMS, "right"),
            "shuffled": _train(learning_store, tmp_path_factory.mktemp("shuffled"), SHUFFLED, "shuffled")}


def _evaluate(store, candidate) -> object:
    generator = Generator(store)
    models = {candidate.model_id: candidate}

    async def answer(model: str, chat: list[dict[str, str]]) -> str:
        return (await asyncio.to_thread(generator.generate, model, messages=chat, max_tokens=4, temperature=0,
                                        fine_tuned=models.get(model))).text

    examples = [Example.from_chat(chat) for chat in _chats(HELD_OUT_OBJECTS, TEAMS)]
    try:
        return asyncio.run(run_side_by_side(examples, base=TINY_MODEL_ID, production=TINY_MODEL_ID,
                                            candidate=candidate.model_id, answer=answer,
                                            metrics=["exact_match", "accuracy"], policy=POLICY,
                                            general_prompts=["What is 2 plus 2?", "Name a colour."]))
    finally:
        generator.close()


def test_a_real_fine_tune_passes_the_gate_against_the_untrained_base(learning_store, trained):
    result = _evaluate(learning_store, trained["right"])
    candidate = trained["right"].model_id
    assert result.verdict.passed, result.verdict.reason
    assert result.scores[candidate]["exact_match"].value >= 0.9  # on objects it never saw: it generalised
    assert result.scores[TINY_MODEL_ID]["exact_match"].value == 0


def test_a_model_trained_on_shuffled_labels_fails_it_naming_the_rule(learning_store, trained):
    result = _evaluate(learning_store, trained["shuffled"])
    assert not result.verdict.passed
    failed = [rule.name for rule in result.verdict.rules if not rule.passed]
    assert "min_gain" in failed and "significant" in failed
    assert "exact_match gain +0.000" in result.verdict.reason
    # it learned the swapped labels: a team for every request, the wrong one
    assert all(answer.strip() in TEAMS.values() for answer in result.answers[trained["shuffled"].model_id])
