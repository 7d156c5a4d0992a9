"""DPO of a LoRA adapter on the tiny Llama: pairs, reference log-probs, learning the preference, resume."""

from __future__ import annotations

import json
import math
import random
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from services.dataprep.examples import Example
from services.shared.errors import InvalidArgument
from services.training.batching import IGNORE_INDEX
from services.training.dpo import encode_pairs, sequence_log_probs
from services.training.trainer import ADAPTER_MANIFEST, TrainConfig, Trainer, WarmStart
from tests.training.test_trainer import load_tiny, parity_examples
from tests.training.test_trainer import make_trainer as make_supervised_trainer


def preference_pairs(count: int, seed: int) -> list[dict]:
    """OpenAI's preference format: a friendly answer preferred over a rude one."""
    rng = random.Random(seed)
    names = ["Ana", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu"]
    pairs = []
    for index in range(count):
        name = rng.choice(names)
        if index % 2:
            prompt, preferred, rejected = f"Please greet {name}.", f"Hello {name}, welcome!", "Go away."
        else:
            prompt, preferred, rejected = f"How is {name} doing?", f"{name} is doing well.", "No idea."
        pairs.append({"input": {"messages": [{"role": "user", "content": prompt}]},
                      "preferred_output": [{"role": "assistant", "content": preferred}],
                      "non_preferred_output": [{"role": "assistant", "content": rejected}]})
    return pairs


def make_trainer(tiny_model_dir: Path, output_dir: Path, cancel=None, init_from=None, **overrides) -> Trainer:
    settings = {"n_epochs": 3, "batch_size": 4, "learning_rate": 1e-2, "bf16": False, "seed": 7, "method": "dpo",
                "dpo_beta": 0.1, **overrides}
    trainer = Trainer(TrainConfig(**settings), load_tiny(tiny_model_dir), preference_pairs(12, seed=1),
                      preference_pairs(4, seed=2), output_dir=output_dir, base_model_id="tiny-llama", cancel=cancel,
                      init_from=init_from)
    trainer.setup()
    return trainer


def policy_margins(trainer: Trainer) -> list[float]:
    """log π(chosen) - log π(rejected) of each training pair under the current policy."""
    trainer.model.eval()
    margins = []
    with torch.no_grad():
        for pair in trainer.train_data:
            logps = sequence_log_probs(trainer.model, {
                "input_ids": torch.tensor([pair.chosen.input_ids]), "labels": torch.tensor([pair.chosen.labels]),
                "attention_mask": None}, bf16=False)[0] - sequence_log_probs(trainer.model, {
                "input_ids": torch.tensor([pair.rejected.input_ids]), "labels": torch.tensor([pair.rejected.labels]),
                "attention_mask": None}, bf16=False)[0]
            margins.append(float(logps))
    trainer.model.train()
    return margins


def test_pairs_label_only_the_answers_and_refuse_chats_naming_the_field(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    record = preference_pairs(1, seed=3)[0]
    record["input"]["messages"] = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                   *record["input"]["messages"]]
    (pair,), dropped = encode_pairs(tokenizer, [record], max_length=128)
    assert dropped == 0
    for encoded, answer in ((pair.chosen, record["preferred_output"]), (pair.rejected, record["non_preferred_output"])):
        labelled = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
        assert tokenizer.decode(labelled) == answer[0]["content"] + "<|im_end|>"  # not the earlier "Hello!"

    with pytest.raises(InvalidArgument) as error:
        encode_pairs(tokenizer, [{"messages": parity_examples(1, seed=1)[0]}], max_length=128)
    assert error.value.param == "training_file" and "preference" in error.value.message
    chat = Example(line=4, messages=tuple(parity_examples(1, seed=1)[0]))
    with pytest.raises(InvalidArgument) as error:
        encode_pairs(tokenizer, [chat], max_length=128, param="validation_file")
    assert error.value.param == "validation_file" and "line 4" in error.value.message


def test_reference_log_probs_are_the_base_models_own(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    base, _ = load_tiny(tiny_model_dir)
    with torch.no_grad():
        for pair in trainer.train_data[:3]:
            for row, reference in ((pair.chosen, pair.ref_chosen), (pair.rejected, pair.ref_rejected)):
                logits = base(input_ids=torch.tensor([row.input_ids])).logits[0, :-1]
                labels = torch.tensor(row.labels[1:])
                mask = labels != IGNORE_INDEX
                expected = torch.log_softmax(logits[mask], dim=-1).gather(1, labels[mask][:, None]).sum()
                assert reference == pytest.approx(float(expected), rel=1e-4)


def test_dpo_raises_the_preferred_answers_margin_and_lowers_the_loss(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    before = policy_margins(trainer)
    events: list[dict] = []
    result = trainer.train(events.append)
    after = policy_margins(trainer)
    steps = [e for e in events if e["type"] == "step"]
    epochs = [e for e in events if e["type"] == "epoch"]

    assert result.status == "succeeded" and len(steps) == 9 and [e["epoch"] for e in epochs] == [1, 2, 3]
    assert {"train_loss", "train_reward_accuracy", "train_reward_margin"} <= set(steps[0])
    assert {"valid_loss", "valid_reward_accuracy", "full_valid_loss", "full_valid_reward_margin"} <= set(epochs[0])
    # The policy starts as its reference: every reward is 0, the loss log 2.
    assert steps[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert sum(s["train_loss"] for s in steps[-3:]) / 3 < 0.3
    assert steps[-1]["train_reward_accuracy"] == 1.0 and steps[-1]["train_reward_margin"] > 1.0
    gains = [a - b for a, b in zip(after, before, strict=True)]
    assert all(gain > 5.0 for gain in gains), gains

    assert (tmp_path / "checkpoints" / "epoch-3" / "adapter_model.safetensors").is_file()
    manifest = json.loads((result.adapter_dir / ADAPTER_MANIFEST).read_text())
    assert (manifest["kind"], manifest["method"], manifest["train_config"]["dpo_beta"]) == ("lora", "dpo", 0.1)
    assert (result.adapter_dir / "adapter_config.json").is_file()


def test_a_dpo_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(tiny_model_dir, tmp_path):
    events: list[dict] = []
    whole = make_trainer(tiny_model_dir, tmp_path / "whole", n_epochs=2).train(events.append)
    whole_losses = [e["train_loss"] for e in events if e["type"] == "step"]

    stop = threading.Event()
    interrupted = make_trainer(tiny_model_dir, tmp_path / "resumed", n_epochs=2, cancel=stop)
    assert interrupted.train(lambda e: stop.set() if e["type"] == "epoch" else None).status == "cancelled"
    resumed = make_trainer(tiny_model_dir, tmp_path / "resumed", n_epochs=2)
    resumed.resume_from(tmp_path / "resumed" / "checkpoints" / "epoch-1")
    events = []
    result = resumed.train(events.append)
    assert [e["train_loss"] for e in events if e["type"] == "step"] == pytest.approx(whole_losses[3:], abs=1e-5)
    expected = load_file(whole.adapter_dir / "adapter_model.safetensors")
    actual = load_file(result.adapter_dir / "adapter_model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, atol=1e-5, rtol=1e-4)


def test_a_dpo_run_warm_started_from_an_adapter_takes_it_as_the_reference(tiny_model_dir, tmp_path):
    """The reference is the policy as the run starts: from a supervised adapter, that adapter (not the
    bare base), so every reward starts at 0 and the loss at log 2, as a run from the base does."""
    adapter = make_supervised_trainer(tiny_model_dir, tmp_path / "sft", n_epochs=1).train().adapter_dir
    warm = make_trainer(tiny_model_dir, tmp_path / "warm", init_from=WarmStart(adapter, "lora"))
    cold = make_trainer(tiny_model_dir, tmp_path / "cold")
    shifts = [abs(w.ref_chosen - c.ref_chosen) for w, c in zip(warm.train_data, cold.train_data, strict=True)]
    assert min(shifts) > 0.1, shifts  # the adapter's log-probs, not the base's
    metrics = warm.evaluate()
    assert metrics["full_valid_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics["full_valid_reward_margin"] == pytest.approx(0.0, abs=1e-5)
