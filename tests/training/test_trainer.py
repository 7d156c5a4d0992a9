"""The supervised LoRA trainer on the tiny Llama: labels, learning, seeds, resume, early stop, cancel."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.dataprep.chat_templates import (
    SMOLLM2_TEMPLATE,  # SmolLM2-135M-Instruct's own, as its GGUF carries it
)
from services.shared.errors import InvalidArgument
from services.training.batching import (
    IGNORE_INDEX,
    encode_chat,
    encode_dataset,
    length_grouped_batches,
    micro_batches,
)
from services.training.trainer import ADAPTER_MANIFEST, TrainConfig, Trainer, WarmStart


def parity_examples(count: int, seed: int, answer: str | None = None) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        n = rng.randint(0, 99)
        reply = answer or ("yes" if n % 2 == 0 else "no")
        examples.append([{"role": "user", "content": f"Is {n} even?"}, {"role": "assistant", "content": reply}])
    return examples


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def load_tiny(tiny_model_dir: Path):
    """The tiny model, with its embeddings scaled up: at the fixture's init scale (0.02) its
    logits can barely move from uniform, so no adapter could lower the loss much."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(10.0)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def make_trainer(tiny_model_dir: Path, output_dir: Path, train=None, valid=None, cancel=None, init_from=None,
                 **overrides) -> Trainer:
    settings = {"n_epochs": 3, "batch_size": 4, "learning_rate": 2e-2, "bf16": False, "seed": 7, **overrides}
    trainer = Trainer(
        TrainConfig(**settings),
        load_tiny(tiny_model_dir),
        parity_examples(24, seed=1) if train is None else train,
        parity_examples(8, seed=2) if valid is None else valid,
        output_dir=output_dir,
        base_model_id="tiny-llama",
        cancel=cancel,
        init_from=init_from,
    )
    trainer.setup()
    return trainer


def run(trainer: Trainer) -> tuple[list[dict], list[dict], object]:
    events: list[dict] = []
    result = trainer.train(events.append)
    return [e for e in events if e["type"] == "step"], [e for e in events if e["type"] == "epoch"], result


# ---- labels --------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["fixture", "smollm2"])
def test_labels_cover_exactly_the_assistant_tokens(tokenizer, template):
    if template == "smollm2":
        tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
        tokenizer.chat_template = SMOLLM2_TEMPLATE
    messages = [
        {"role": "system", "content": "Answer briefly."} if template == "fixture" else None,
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4, of course."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "Not telling.", "weight": 0},
        {"role": "user", "content": "Please?"},
        {"role": "assistant", "content": "Fine: it is 6.\nAnything else?"},
    ]
    messages = [m for m in messages if m is not None]
    example = encode_chat(tokenizer, messages, max_length=512)

    assert example.input_ids == tuple(tokenizer(tokenizer.apply_chat_template(messages, tokenize=False),
                                                add_special_tokens=False)["input_ids"])
    labelled = [token for token, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(example.input_ids, example.labels, strict=True))
    assert tokenizer.decode(labelled) == "4, of course.<|im_end|>Fine: it is 6.\nAnything else?<|im_end|>"


def test_truncation_keeps_the_labels_that_fit_and_drops_examples_left_without_any(tokenizer):
    long_answer = [{"role": "user", "content": "Count."}, {"role": "assistant", "content": " ".join(["one"] * 50)}]
    long_prompt = [{"role": "user", "content": " ".join(["word"] * 80)}, {"role": "assistant", "content": "ok"}]
    truncated = encode_chat(tokenizer, long_answer, max_length=20)
    assert len(truncated) == 20 and truncated.n_targets > 0
    kept, dropped = encode_dataset(tokenizer, [long_answer, long_prompt], max_length=20)
    assert (len(kept), dropped) == (1, 1)
    with pytest.raises(InvalidArgument) as error:
        encode_dataset(tokenizer, [long_prompt], max_length=20)
    assert error.value.param == "training_file"


def test_length_grouped_batches_cover_every_example_once_with_little_padding():
    lengths = [random.Random(i).randint(20, 200) for i in range(300)]
    batches = length_grouped_batches(lengths, batch_size=8, seed=3, epoch=0)
    assert sorted(i for batch in batches for i in batch) == list(range(300))
    assert batches == length_grouped_batches(lengths, batch_size=8, seed=3, epoch=0)
    assert batches != length_grouped_batches(lengths, batch_size=8, seed=3, epoch=1)
    assert max(lengths[i] for i in batches[0]) == max(lengths)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    assert padded / sum(lengths) < 1.05
    for batch in batches:
        parts = micro_batches(batch, lengths, max_tokens=400)
        assert sorted(i for part in parts for i in part) == sorted(batch)
        assert all(len(part) == 1 or len(part) * max(lengths[i] for i in part) <= 400 for part in parts)


# ---- training ------------------------------------------------------------------------------


@pytest.mark.parametrize("bf16", [False, True])
def test_loss_falls_and_events_carry_openai_metric_names(tiny_model_dir, tmp_path, bf16):
    trainer = make_trainer(tiny_model_dir, tmp_path, bf16=bf16)
    untrained = trainer.evaluate()["full_valid_loss"]
    steps, epochs, result = run(trainer)
    assert result.status == "succeeded" and result.steps == len(steps) == 18
    assert set(steps[0]) == {"type", "step", "epoch", "train_loss", "train_mean_token_accuracy",
                             "tokens_per_second", "eta_seconds", "total_steps"}
    assert {"valid_loss", "valid_mean_token_accuracy", "full_valid_loss", "full_valid_mean_token_accuracy"} <= set(epochs[0])
    assert steps[-1]["eta_seconds"] == 0 and steps[0]["tokens_per_second"] > 0
    first, last = steps[0]["train_loss"], sum(s["train_loss"] for s in steps[-6:]) / 6
    assert last < first - 0.5
    assert epochs[-1]["full_valid_loss"] < untrained - 0.5
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert (tmp_path / "checkpoints" / "epoch-3" / "adapter_model.safetensors").is_file()


def test_validation_loss_equals_the_models_own_loss(tiny_model_dir, tmp_path):
    """Logits only at label positions plus the fused cross-entropy compute what HF's loss does."""
    trainer = make_trainer(tiny_model_dir, tmp_path)
    metrics = trainer.evaluate()
    total, count = 0.0, 0
    trainer.model.eval()
    with torch.no_grad():
        for example in trainer.valid_data:
            ids = torch.tensor([example.input_ids])
            loss = trainer.model(input_ids=ids, labels=torch.tensor([example.labels])).loss
            total, count = total + loss.item() * example.n_targets, count + example.n_targets
    assert metrics["full_valid_loss"] == pytest.approx(total / count, rel=1e-5)


def test_runs_with_the_same_seed_are_identical(tiny_model_dir, tmp_path):
    first, _, _ = run(make_trainer(tiny_model_dir, tmp_path / "a", n_epochs=1))
    second, _, _ = run(make_trainer(tiny_model_dir, tmp_path / "b", n_epochs=1))
    other, _, _ = run(make_trainer(tiny_model_dir, tmp_path / "c", n_epochs=1, seed=8))
    assert [s["train_loss"] for s in first] == [s["train_loss"] for s in second]
    assert [s["train_loss"] for s in first] != [s["train_loss"] for s in other]


def test_a_run_resumed_from_its_epoch_checkpoint_ends_as_an_uninterrupted_one(tiny_model_dir, tmp_path):
    whole_steps, _, whole = run(make_trainer(tiny_model_dir, tmp_path / "whole"))

    stop = threading.Event()
    interrupted = make_trainer(tiny_model_dir, tmp_path / "resumed", cancel=stop)
    stopped = interrupted.train(lambda event: stop.set() if event["type"] == "epoch" else None)
    assert (stopped.status, stopped.epochs_completed, stopped.steps, stopped.adapter_dir) == ("cancelled", 1, 6, None)

    resumed = make_trainer(tiny_model_dir, tmp_path / "resumed")
    resumed.resume_from(tmp_path / "resumed" / "checkpoints" / "epoch-1")
    resumed_steps, _, result = run(resumed)
    assert [s["step"] for s in resumed_steps] == list(range(7, 19))
    assert [s["train_loss"] for s in resumed_steps] == pytest.approx([s["train_loss"] for s in whole_steps[6:]], abs=1e-5)
    assert result.metrics["full_valid_loss"] == pytest.approx(whole.metrics["full_valid_loss"], abs=1e-5)
    expected = load_file(whole.adapter_dir / "adapter_model.safetensors")
    actual = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, atol=1e-5, rtol=1e-4)


def test_a_run_checkpointed_mid_epoch_resumes_exactly_where_it_stopped(tiny_model_dir, tmp_path):
    """What a paused job does: stop after a step in the middle of an epoch, checkpoint, resume."""
    whole_steps, _, whole = run(make_trainer(tiny_model_dir, tmp_path / "whole"))

    stop = threading.Event()
    interrupted = make_trainer(tiny_model_dir, tmp_path / "paused", cancel=stop)
    stopped = interrupted.train(lambda event: stop.set() if event.get("step") == 8 else None)
    assert (stopped.status, stopped.epochs_completed, stopped.steps) == ("cancelled", 1, 8)
    interrupted.save_checkpoint(tmp_path / "paused" / "checkpoints" / "paused")

    resumed = make_trainer(tiny_model_dir, tmp_path / "paused")
    resumed.resume_from(tmp_path / "paused" / "checkpoints" / "paused")
    assert (resumed.state.step, resumed.state.epoch_step) == (8, 2)
    resumed_steps, epochs, result = run(resumed)
    assert [s["step"] for s in resumed_steps] == list(range(9, 19))
    assert [e["epoch"] for e in epochs] == [2, 3]
    assert [s["train_loss"] for s in resumed_steps] == pytest.approx([s["train_loss"] for s in whole_steps[8:]], abs=1e-5)
    assert (result.steps, result.trained_tokens, result.best_epoch) == (whole.steps, whole.trained_tokens, whole.best_epoch)
    expected = load_file(whole.adapter_dir / "adapter_model.safetensors")
    actual = load_file(result.adapter_dir / "adapter_model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, atol=1e-5, rtol=1e-4)


def test_resume_refuses_a_checkpoint_of_different_settings(tiny_model_dir, tmp_path):
    run(make_trainer(tiny_model_dir, tmp_path, n_epochs=1))
    other = make_trainer(tiny_model_dir, tmp_path / "other", n_epochs=1, lora_r=4)
    with pytest.raises(InvalidArgument) as error:
        other.resume_from(tmp_path / "checkpoints" / "epoch-1")
    assert error.value.param == "checkpoint" and "lora_r" in error.value.message


# ---- warm start ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["supervised", "full"])
def test_a_warm_started_run_starts_from_its_parents_weights(tiny_model_dir, tmp_path, method):
    rate = {"learning_rate": 1e-3} if method == "full" else {}
    _, _, parent = run(make_trainer(tiny_model_dir, tmp_path / "parent", n_epochs=2, method=method, **rate))
    kind = "full" if method == "full" else "lora"
    scratch = make_trainer(tiny_model_dir, tmp_path / "scratch", n_epochs=1, method=method, **rate)
    warm = make_trainer(tiny_model_dir, tmp_path / "warm", n_epochs=1, method=method,
                        init_from=WarmStart(parent.adapter_dir, kind), **rate)
    scratch_loss, warm_loss = scratch.evaluate()["full_valid_loss"], warm.evaluate()["full_valid_loss"]
    assert warm_loss == pytest.approx(parent.metrics["full_valid_loss"], abs=1e-4)
    assert warm_loss < scratch_loss - 0.5
    scratch_steps, _, _ = run(scratch)
    warm_steps, _, _ = run(warm)
    assert warm_steps[0]["train_loss"] < scratch_steps[0]["train_loss"] - 0.5


def test_a_warm_start_that_does_not_fit_the_run_is_refused_naming_the_model(tiny_model_dir, tmp_path):
    parent = make_trainer(tiny_model_dir, tmp_path / "parent", n_epochs=1).save_adapter(tmp_path / "adapter")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_model.bin").write_bytes(b"never unpickled")
    adapter = WarmStart(parent, "lora")
    for init_from, overrides, says in (
        (adapter, {"lora_r": 4}, "do not fit"),
        (adapter, {"target_modules": ("q_proj", "v_proj")}, "do not fit"),
        (adapter, {"method": "full"}, "cannot start a full run"),
        (WarmStart(parent, "full"), {}, "cannot start a supervised run"),
        (WarmStart(pickled, "lora"), {}, "has no adapter_model.safetensors"),
    ):
        with pytest.raises(InvalidArgument) as error:
            make_trainer(tiny_model_dir, tmp_path / "run", n_epochs=1, init_from=init_from, **overrides)
        assert error.value.param == "model" and says in error.value.message, error.value.message


def test_a_warm_started_run_resumes_from_its_checkpoint_not_from_the_parent(tiny_model_dir, tmp_path):
    _, _, parent = run(make_trainer(tiny_model_dir, tmp_path / "parent", n_epochs=1))
    init_from = WarmStart(parent.adapter_dir, "lora")
    whole_steps, _, _ = run(make_trainer(tiny_model_dir, tmp_path / "whole", n_epochs=2, init_from=init_from))

    stop = threading.Event()
    interrupted = make_trainer(tiny_model_dir, tmp_path / "resumed", n_epochs=2, init_from=init_from, cancel=stop)
    interrupted.train(lambda event: stop.set() if event["type"] == "epoch" else None)
    resumed = make_trainer(tiny_model_dir, tmp_path / "resumed", n_epochs=2, init_from=init_from)
    resumed.resume_from(tmp_path / "resumed" / "checkpoints" / "epoch-1")
    resumed_steps, _, _ = run(resumed)
    assert [s["train_loss"] for s in resumed_steps] == pytest.approx([s["train_loss"] for s in whole_steps[6:]],
                                                                     abs=1e-5)


def test_early_stopping_stops_when_validation_loss_stops_improving(tiny_model_dir, tmp_path):
    # Validation answers are a word training never shows: once the end-of-turn token is learnt,
    # every step towards "yes"/"no" makes "maybe" less likely.
    # Room for many epochs: where the validation loss turns depends on the machine's float rounding
    # (on a Xeon with AMX it fell for six epochs of eight, so a run of eight ended before stopping).
    trainer = make_trainer(tiny_model_dir, tmp_path, valid=parity_examples(8, seed=2, answer="maybe"),
                           n_epochs=20, early_stopping_patience=2)
    _, epochs, result = run(trainer)
    losses = [e["full_valid_loss"] for e in epochs]
    best = losses.index(min(losses))
    assert result.status == "early_stopped"
    assert len(epochs) == best + 3 < 20  # stopped two epochs after the best one
    assert result.best_epoch == best + 1
    manifest = json.loads((result.adapter_dir / ADAPTER_MANIFEST).read_text())
    assert manifest["best_epoch"] == best + 1
    # The adapter saved is the best epoch's, not the last one's.
    best_checkpoint = load_file(tmp_path / "checkpoints" / f"epoch-{best + 1}" / "adapter_model.safetensors")
    final = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert all(torch.equal(final[name], tensor) for name, tensor in best_checkpoint.items())


def test_cancel_stops_between_steps(tiny_model_dir, tmp_path):
    stop = threading.Event()
    trainer = make_trainer(tiny_model_dir, tmp_path, cancel=stop)
    result = trainer.train(lambda event: stop.set() if event.get("step") == 2 else None)
    assert (result.status, result.steps, result.epochs_completed, result.adapter_dir) == ("cancelled", 2, 0, None)
    calls = iter([False, False, False, True])
    assert make_trainer(tiny_model_dir, tmp_path / "b", cancel=lambda: next(calls)).train().steps == 3


def test_saved_adapter_loads_with_peft_and_generates(tiny_model_dir, tmp_path):
    from peft import PeftModel

    trainer = make_trainer(tiny_model_dir, tmp_path, n_epochs=1)
    _, _, result = run(trainer)
    adapter = result.adapter_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", ADAPTER_MANIFEST):
        assert (adapter / name).is_file(), name
    manifest = json.loads((adapter / ADAPTER_MANIFEST).read_text())
    saved_tokenizer = AutoTokenizer.from_pretrained(adapter)
    assert saved_tokenizer.chat_template == trainer.tokenizer.chat_template
    import hashlib

    assert manifest["chat_template_sha256"] == hashlib.sha256(saved_tokenizer.chat_template.encode()).hexdigest()
    assert manifest["base_model"] == "tiny-llama" and manifest["train_config"]["lora_r"] == 16
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16

    base, _ = load_tiny(tiny_model_dir)
    model = PeftModel.from_pretrained(base, adapter)
    model.eval()
    prompt = saved_tokenizer.apply_chat_template([{"role": "user", "content": "Is 4 even?"}],
                                                 add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert output.shape[1] > prompt["input_ids"].shape[1]
    ids = torch.tensor([trainer.valid_data[0].input_ids])
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, trainer.model(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_epochs", 0), ("batch_size", -1), ("batch_size", True), ("learning_rate", 0.0),
        ("learning_rate", float("nan")), ("lora_r", 0), ("lora_alpha", -1), ("lora_dropout", 1.0),
        ("target_modules", ()), ("target_modules", ("lm_head",)), ("max_length", 1), ("seed", -1),
        ("early_stopping_patience", 0), ("bf16", "yes"), ("max_tokens_per_microbatch", 0),
        ("warmup_ratio", 1.5), ("weight_decay", -0.1), ("max_grad_norm", 0), ("num_threads", 0),
    ],
)
def test_invalid_config_fields_are_named(field, value):
    with pytest.raises(InvalidArgument) as error:
        TrainConfig(**{field: value})
    assert error.value.param == field
    assert field in error.value.message


def test_unknown_target_modules_and_early_stopping_without_validation_are_refused(tiny_model_dir, tmp_path):
    with pytest.raises(InvalidArgument) as error:
        make_trainer(tiny_model_dir, tmp_path, target_modules=("q_proj", "wq"))
    assert error.value.param == "target_modules"
    with pytest.raises(InvalidArgument) as error:
        Trainer(TrainConfig(early_stopping_patience=1), load_tiny(tiny_model_dir), parity_examples(4, 1),
                output_dir=tmp_path, base_model_id="tiny-llama")
    assert error.value.param == "early_stopping_patience"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["supervised", "full"])
def test_training_runs_on_a_cuda_gpu_when_there_is_one(tiny_model_dir, tmp_path, method):
    trainer = make_trainer(tiny_model_dir, tmp_path, method=method, learning_rate=2e-2 if method != "full" else 1e-3)
    assert trainer.device.type == "cuda" and next(trainer.model.parameters()).device.type == "cuda"
    untrained = trainer.evaluate()["full_valid_loss"]
    _steps, epochs, result = run(trainer)
    assert result.status == "succeeded" and epochs[-1]["full_valid_loss"] < untrained - 0.5
