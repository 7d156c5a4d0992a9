"""Serving fine-tuned models: LoRA adapters on their base model's one copy, full fine-tunes, and
the chat-template check, with adapters and models really trained on the tiny Llama."""

from __future__ import annotations

import json
import time

import pytest
import torch

from services.inference.fine_tuned import FineTuned, read_fine_tuned
from services.inference.generation import Generator
from services.shared.errors import FailedPrecondition, InvalidArgument
from services.shared.models import ModelStore
from tests.fixtures.adapters import QUESTION, train_adapter
from tests.fixtures.engine import held_back_then_released, same
from tests.fixtures.tiny_model import TINY_MODEL_ID


@pytest.fixture(scope="module")
def store(learning_store):
    return learning_store


@pytest.fixture(scope="module")
def blue(store, tmp_path_factory) -> FineTuned:
    return train_adapter(store, tmp_path_factory.mktemp("blue"), "blue")


@pytest.fixture(scope="module")
def green(store, tmp_path_factory) -> FineTuned:
    return train_adapter(store, tmp_path_factory.mktemp("green"), "green")


# float32, not the machine's "auto" (bf16 where the CPU has it): these tests compare batched answers
# with lone ones and with peft's own, token for token, on a tiny random model, and bf16's
# coarser rounding in a batch of another shape could flip such an argmax. The bf16
# tests below say what holds there.
def _generator(store: ModelStore, **options) -> Generator:
    return Generator(store, dtype="float32", **options)


def _greedy(generator: Generator, model: str, fine_tuned: FineTuned | None = None) -> str:
    return generator.generate(model, messages=QUESTION, max_tokens=4, temperature=0, fine_tuned=fine_tuned).text


def _says(text: str, answer: str) -> bool:
    """The tiny models learn their answer for sure, not always where to stop after it."""
    return text.startswith(answer)


def test_adapters_share_one_base_and_base_requests_stay_the_base_models(store, blue, green):
    generator = _generator(store)
    before = _greedy(generator, TINY_MODEL_ID)
    assert blue.kind == "lora" and not _says(before, "blue") and not _says(before, "green")
    blue_answer = _greedy(generator, blue.model_id, blue)
    assert _says(blue_answer, "blue")
    assert _says(_greedy(generator, green.model_id, green), "green")
    assert _greedy(generator, TINY_MODEL_ID) == before  # the adapters are off for the base model
    assert _greedy(generator, blue.model_id, blue) == blue_answer  # and switch per request
    assert list(generator._models) == [TINY_MODEL_ID]  # one copy of the base in memory


def test_a_full_fine_tune_is_served_as_a_model_of_its_own(store, tmp_path):
    full = train_adapter(store, tmp_path / "full", "red", method="full")
    assert full.kind == "full"
    assert _says(_greedy(_generator(store), full.model_id, full), "red")
    in_bf16 = Generator(store, dtype="bfloat16")  # saved in float32, cast as it loads
    assert _says(_greedy(in_bf16, full.model_id, full), "red")
    assert in_bf16.loaded_dtype(full.model_id) == torch.bfloat16


def test_an_adapter_whose_chat_template_changed_after_training_is_refused(store, blue, tmp_path):
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(blue.path, copy)
    config_file = copy / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    config_file.write_text(json.dumps(config))
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    tampered = read_fine_tuned("ft:tiny-llama:acme:t:ftjob-t", TINY_MODEL_ID, str(copy))
    with pytest.raises(FailedPrecondition, match="not the one it was trained with") as raised:
        _greedy(_generator(store), tampered.model_id, tampered)
    assert raised.value.code == "chat_template_mismatch" and raised.value.param == "model"


def test_registry_entries_that_do_not_fit_are_refused(blue, tmp_path):
    with pytest.raises(FailedPrecondition, match="trained on 'tiny-llama', not 'other'"):
        read_fine_tuned(blue.model_id, "other", str(blue.path))
    with pytest.raises(FailedPrecondition, match="no readable tuneloop-adapter.json"):
        read_fine_tuned(blue.model_id, TINY_MODEL_ID, str(tmp_path))


def test_a_fine_tuned_id_needs_its_registry_entry(store):
    with pytest.raises(InvalidArgument, match="resolve it in the registry") as raised:
        _generator(store).generate("ft:tiny-llama:acme:x:ftjob-1", prompt="x", max_tokens=1, temperature=0)
    assert raised.value.param == "model"


def test_the_served_adapter_computes_what_peft_computes(store, blue):
    """The generator's output is peft's own greedy decoding of the adapter, token for token."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    base, _ = store.load(TINY_MODEL_ID)
    model = PeftModel.from_pretrained(base, str(blue.path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(blue.path)
    text = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**ids, max_new_tokens=4, do_sample=False)
    expected = tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert _greedy(_generator(store), blue.model_id, blue) == expected


def test_the_base_model_and_its_adapters_answer_in_one_mixed_batch(store, blue, green):
    """peft's mixed-adapter batches: each row gets its own adapter (or none), as it would alone."""
    generator = _generator(store)
    cases = [(TINY_MODEL_ID, None), (blue.model_id, blue), (green.model_id, green), (blue.model_id, blue)]

    def ask(model, fine_tuned):
        return generator.generate(model, messages=QUESTION, max_tokens=4, temperature=0, fine_tuned=fine_tuned)

    alone = [ask(*case) for case in cases]
    assert _says(alone[1].text, "blue") and _says(alone[2].text, "green") and not _says(alone[0].text, "blue")
    engine = generator.engine(TINY_MODEL_ID)
    batched = held_back_then_released(generator, TINY_MODEL_ID, [lambda case=case: ask(*case) for case in cases])
    for together, by_itself in zip(batched, alone, strict=True):
        same(together, by_itself)
    assert engine.stats.max_rows == len(cases) and engine.stats.mixed_steps > 0


def test_past_max_adapters_the_least_recently_used_adapter_is_unloaded(store, blue, green):
    generator = _generator(store, max_adapters=1)
    blue_answer = _greedy(generator, blue.model_id, blue)
    assert generator.loaded_adapters(TINY_MODEL_ID) == [blue.model_id]
    assert _says(_greedy(generator, green.model_id, green), "green")
    assert generator.loaded_adapters(TINY_MODEL_ID) == [green.model_id]
    peft_model = generator._models[TINY_MODEL_ID].peft
    assert len(peft_model.peft_config) == 1  # blue's weights are gone from the model, not only from our list
    assert _greedy(generator, blue.model_id, blue) == blue_answer  # and come back when asked for
    assert generator.loaded_adapters(TINY_MODEL_ID) == [blue.model_id]


def test_an_adapter_in_use_is_not_unloaded(store, blue, green):
    """A request still decoding with an adapter keeps it loaded, whatever max_adapters says; and
    loading another adapter meanwhile (the engine's thread does it between two turns) neither fails
    nor changes that request's answer."""
    import threading

    generator = _generator(store, max_adapters=1)
    blue_alone = generator.generate(blue.model_id, messages=QUESTION, max_tokens=4, temperature=0, fine_tuned=blue)
    engine = generator.engine(TINY_MODEL_ID)
    assert engine is not None
    answers = {}
    green_thread = threading.Thread(target=lambda: answers.update(green=_greedy(generator, green.model_id, green)))

    def hold(_text, _tokens):  # on the engine's thread, blue in the batch: green's load is handed over now
        if not green_thread.is_alive() and "green" not in answers:
            green_thread.start()
            deadline = time.monotonic() + 30
            while not engine.queued_calls:
                assert time.monotonic() < deadline, "green's adapter was never handed to the engine"
                time.sleep(0.001)

    answers["blue"] = generator.generate(blue.model_id, messages=QUESTION, max_tokens=4, temperature=0,
                                         fine_tuned=blue, on_text=hold)
    green_thread.join(30)
    same(answers["blue"], blue_alone)
    assert _says(answers["green"], "green")
    # Loaded while blue was in use, with room for one: blue stayed.
    assert generator.loaded_adapters(TINY_MODEL_ID) == [blue.model_id, green.model_id]
    assert _says(_greedy(generator, green.model_id, green), "green")  # both stay until the next load
    assert generator.loaded_adapters(TINY_MODEL_ID) == [blue.model_id, green.model_id]  # blue least recent


def test_a_reference_answer_is_scored_with_the_models_own_probabilities(store, blue):
    """score(): the log-probability of an answer (and the end of the turn) after the prompt, as
    peft computes it by hand; what the evaluation's perplexity is made of."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    generator = _generator(store)
    blue_blue, tokens = generator.score(blue.model_id, messages=QUESTION, answer="blue", fine_tuned=blue)
    blue_green, _ = generator.score(blue.model_id, messages=QUESTION, answer="green", fine_tuned=blue)
    base_blue, base_tokens = generator.score(TINY_MODEL_ID, messages=QUESTION, answer="blue")
    assert tokens == base_tokens > 1 and blue_blue > blue_green and blue_blue > base_blue

    tokenizer = AutoTokenizer.from_pretrained(blue.path)
    prompt = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template([*QUESTION, {"role": "assistant", "content": "blue"}], tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + tokenizer(whole[len(prompt):], add_special_tokens=False)["input_ids"]
    base, _ = store.load(TINY_MODEL_ID)
    model = PeftModel.from_pretrained(base, str(blue.path)).eval()
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    expected = sum(float(logprobs[i - 1, ids[i]]) for i in range(len(prompt_ids), len(ids)))
    assert blue_blue == pytest.approx(expected, abs=1e-3) and tokens == len(ids) - len(prompt_ids)
    with pytest.raises(InvalidArgument) as empty:
        generator.score(TINY_MODEL_ID, messages=QUESTION, answer="")
    assert empty.value.param == "answer"


# ---- on a bf16 base (the "auto" choice on a CPU with AVX512-BF16 or AMX) ----------------------------


def test_adapters_on_a_bf16_base_answer_what_they_learned_alone_and_in_one_mixed_batch(store, blue, green):
    """peft keeps each adapter's weights in float32 on a bf16 base and adds their product to the bf16
    output: the adapters still answer what they learned and the base model still does not, as in float32."""
    exact, generator = _generator(store), Generator(store, dtype="bfloat16")
    cases = [(TINY_MODEL_ID, None), (blue.model_id, blue), (green.model_id, green)]
    in_float32 = [_greedy(exact, *case) for case in cases]
    alone = [_greedy(generator, *case) for case in cases]
    batched = held_back_then_released(generator, TINY_MODEL_ID, [lambda case=case: _greedy(generator, *case)
                                                                 for case in cases])
    for answers in (in_float32, alone, batched):
        assert _says(answers[1], "blue") and _says(answers[2], "green")
        assert not _says(answers[0], "blue") and not _says(answers[0], "green")
    assert generator.engine(TINY_MODEL_ID).stats.mixed_steps > 0
    peft_model = generator._models[TINY_MODEL_ID].peft
    dtypes = {("lora_" in name, parameter.dtype) for name, parameter in peft_model.named_parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
    assert generator.loaded_dtype(TINY_MODEL_ID) == torch.bfloat16


def test_scores_on_a_bf16_model_stay_close_to_float32s_and_rank_answers_the_same(store, blue):
    """Score upcasts the logits of a bf16 model before its log-softmax: perplexities barely move."""
    exact, generator = _generator(store), Generator(store, dtype="bfloat16")
    scores = {}
    for model, fine_tuned in ((TINY_MODEL_ID, None), (blue.model_id, blue)):
        for answer in ("blue", "green", "The sky is blue today."):
            want, tokens = exact.score(model, messages=QUESTION, answer=answer, fine_tuned=fine_tuned)
            got, bf16_tokens = generator.score(model, messages=QUESTION, answer=answer, fine_tuned=fine_tuned)
            assert bf16_tokens == tokens
            assert got == pytest.approx(want, abs=0.05 * tokens)  # nats per token
            scores[model, answer] = got
    assert scores[blue.model_id, "blue"] > scores[blue.model_id, "green"]
    assert scores[blue.model_id, "blue"] > scores[TINY_MODEL_ID, "blue"]
