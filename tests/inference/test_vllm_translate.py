"""What the `vllm` backend hands vLLM and makes of its answers, checked without vLLM or a GPU.

vLLM's RequestOutput, CompletionOutput and Logprob are played by the stand-in dataclasses below,
which carry the attributes of vLLM 0.33.0's own (vllm/outputs.py, vllm/logprobs.py) that the
backend reads; the streams they make follow vLLM's cumulative output kind (each output holds the
whole text and token ids so far of each row that moved, and rows interleave when n > 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.inference.fine_tuned import FineTuned
from services.inference.vllm_translate import (
    Choices,
    adapter_directory,
    answer_logprob,
    engine_fields,
    finish_of,
    sampled_logprob,
    sampling_fields,
)
from services.shared.errors import FailedPrecondition, Unavailable


@dataclass
class LogprobStandIn:
    """Stands for vllm.logprobs.Logprob."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutputStandIn:
    """Stands for vllm.outputs.CompletionOutput."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, LogprobStandIn]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutputStandIn:
    """Stands for vllm.outputs.RequestOutput."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutputStandIn]
    finished: bool
    prompt_logprobs: list[dict[int, LogprobStandIn] | None] | None = None


class TokenizerStandIn:
    """Our own tokenizer's two members the backend uses: one character per token, id 0 the end of sequence."""

    all_special_ids = [0]
    pieces = {0: "</s>", 1: "b", 2: "l", 3: "u", 4: "e", 5: " ", 6: "g", 7: "r", 8: "n"}

    def decode(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids)


@dataclass
class Row:
    """A row as the engine decodes it, producing the cumulative outputs a stream carries."""

    index: int
    ids: list[int]
    logprobs: list[float]
    finish_reason: str = "stop"
    stop_reason: int | str | None = None
    cut: int = 0  # characters of a stop string cut from the end of the final text

    def output(self, tokens: int, hold: int = 0) -> CompletionOutputStandIn:
        done = tokens == len(self.ids)
        text = TokenizerStandIn().decode([i for i in self.ids[:tokens] if i != 0])
        text = text[:len(text) - self.cut] if done and self.cut else text[:max(0, len(text) - hold)]
        return CompletionOutputStandIn(
            self.index, text, self.ids[:tokens], None,
            [{token: LogprobStandIn(lp, rank=1)} for token, lp in zip(self.ids[:tokens], self.logprobs, strict=False)],
            finish_reason=self.finish_reason if done else None, stop_reason=self.stop_reason if done else None)


def _stream(rows: list[Row], hold: int = 0) -> list[RequestOutputStandIn]:
    """The outputs of rows decoded a token a step, each step's output holding the rows that moved."""
    outputs = []
    for step in range(1, max(len(row.ids) for row in rows) + 1):
        moved = [row.output(step, hold) for row in rows if step <= len(row.ids)]
        outputs.append(RequestOutputStandIn("tl-1", [7, 7, 7], moved, finished=all(step >= len(r.ids) for r in rows)))
    return outputs


def test_sampling_fields_carry_the_request_and_greedy_is_one_row():
    sampled = sampling_fields(n=3, max_tokens=9, temperature=0.7, top_p=0.9, seed=5, stop=["\n"])
    assert sampled == {"n": 3, "temperature": 0.7, "top_p": 0.9, "seed": 5, "stop": ["\n"], "max_tokens": 9,
                       "logprobs": 0, "skip_special_tokens": True}
    greedy = sampling_fields(n=3, max_tokens=9, temperature=0, top_p=0.9, seed=5, stop=())
    assert (greedy["n"], greedy["temperature"], greedy["top_p"], greedy["seed"]) == (1, 0.0, 1.0, None)
    # top_p 0 keeps only the most likely token: greedy too, which vLLM (top_p in (0, 1]) is asked for.
    assert sampling_fields(n=2, max_tokens=1, temperature=1, top_p=0, seed=None, stop=())["temperature"] == 0.0


def test_engine_fields_serve_lora_from_safetensors_only(tmp_path):
    fields = engine_fields(tmp_path, dtype="bfloat16", max_adapters=8, max_loras=4, max_lora_rank=32,
                           gpu_memory_utilization=0.5, max_model_len=0)
    assert fields["model"] == fields["tokenizer"] == str(tmp_path)
    assert (fields["enable_lora"], fields["max_loras"], fields["max_lora_rank"], fields["max_cpu_loras"]) == (
        True, 4, 32, 8)
    assert (fields["load_format"], fields["trust_remote_code"], fields["dtype"]) == ("safetensors", False, "bfloat16")
    assert "max_model_len" not in fields  # 0: the model's own
    assert engine_fields(tmp_path, dtype="float32", max_adapters=1, max_loras=1, max_lora_rank=8,
                         gpu_memory_utilization=0.9, max_model_len=512)["max_model_len"] == 512


def test_streamed_choices_add_up_to_their_generations():
    # "blue" then end of sequence, and "green" cut at the stop string "n" (its last character, held
    # back while it could still be one), interleaved as two rows of one request.
    blue = Row(0, [1, 2, 3, 4, 0], [-0.1, -0.2, -0.3, -0.4, -0.5])
    green = Row(1, [6, 7, 4, 4, 8], [-1.0, -1.1, -1.2, -1.3, -1.4], stop_reason="n", cut=1)
    pieces: list[tuple[int, str, list]] = []
    choices = Choices(2, 2, prompt_tokens=3, tokenizer=TokenizerStandIn(),
                      on_text=lambda index, text, tokens: pieces.append((index, text, tokens)))
    for output in _stream([blue, green], hold=0):
        choices.update(output)
    first, second = choices.generations()
    assert (first.text, first.finish_reason, first.stop_sequence) == ("blue", "stop", "")
    assert (second.text, second.finish_reason, second.stop_sequence) == ("gree", "stop", "n")
    assert [t.id for t in first.tokens] == [1, 2, 3, 4, 0] and first.tokens[-1].special
    assert [t.logprob for t in second.tokens] == [-1.0, -1.1, -1.2, -1.3, -1.4]
    assert [t.text for t in first.tokens] == ["b", "l", "u", "e", "</s>"]
    assert (first.prompt_tokens, first.completion_tokens, second.completion_tokens) == (3, 5, 5)
    assert first.first_token_at is not None
    for index, generation in enumerate((first, second)):
        assert "".join(text for i, text, _ in pieces if i == index) == generation.text
        assert [t for i, _, tokens in pieces if i == index for t in tokens] == list(generation.tokens)
    assert all(text for _, text, _ in pieces[:-2])  # no empty piece before the ends


def test_one_greedy_row_answers_every_choice():
    pieces: list[tuple[int, str]] = []
    choices = Choices(3, 1, prompt_tokens=2, tokenizer=TokenizerStandIn(),
                      on_text=lambda index, text, _tokens: pieces.append((index, text)))
    for output in _stream([Row(0, [1, 2, 3, 4], [-0.5] * 4, finish_reason="length")]):
        choices.update(output)
    generations = choices.generations()
    assert [g.text for g in generations] == ["blue"] * 3 and {g.finish_reason for g in generations} == {"length"}
    for index in range(3):
        assert "".join(text for i, text in pieces if i == index) == "blue"


def test_an_aborted_request_keeps_what_it_had_and_an_engine_error_is_an_error():
    choices = Choices(1, 1, prompt_tokens=2, tokenizer=TokenizerStandIn())
    aborted = Row(0, [1, 2], [-0.1, -0.2], finish_reason="abort")
    for output in _stream([aborted]):
        choices.update(output)
    assert (choices.generations()[0].text, choices.generations()[0].finish_reason) == ("bl", "length")
    assert finish_of("stop", 0) == ("stop", "")  # a stop token id is not a stop string
    assert finish_of("repetition", None) == ("stop", "")
    with pytest.raises(Unavailable, match="failed the request"):
        finish_of("error", None)


def test_logprobs_are_read_where_vllm_puts_them():
    logprobs = [{5: LogprobStandIn(-0.25)}, {6: LogprobStandIn(-1.5), 9: LogprobStandIn(-0.1)}]
    assert sampled_logprob(logprobs, 1, 6) == -1.5
    assert sampled_logprob(logprobs, 2, 6) == sampled_logprob(None, 0, 5) == 0.0
    # Prompt logprobs: position 0 has none; the answer starts at position 2 of [3, 4, 5, 6].
    prompt = [None, {4: LogprobStandIn(-9.0)}, {5: LogprobStandIn(-0.5)}, {6: LogprobStandIn(-0.25), 1: LogprobStandIn(-2)}]
    assert answer_logprob(prompt, [3, 4, 5, 6], 2) == -0.75


def _adapter(tmp_path: Path, *, files=("adapter_config.json", "adapter_model.safetensors"), r=16,
             rank_pattern=None) -> FineTuned:
    directory = tmp_path / "adapter"
    directory.mkdir(parents=True)
    for name in files:
        (directory / name).write_bytes(b"")
    if "adapter_config.json" in files:
        (directory / "adapter_config.json").write_text(json.dumps({"r": r, "rank_pattern": rank_pattern or {}}))
    return FineTuned("ft:tiny-llama:acme:blue:ftjob-1", "tiny-llama", directory, "lora", "")


def test_an_adapter_directory_is_absolute_and_holds_a_safetensors_peft_adapter(tmp_path, monkeypatch):
    adapter = _adapter(tmp_path)
    assert adapter_directory(adapter, 16) == str(adapter.path.resolve())
    monkeypatch.chdir(tmp_path)  # a relative path (which vLLM would take for a hub repo id) becomes absolute
    relative = FineTuned(adapter.model_id, adapter.base_model, Path("adapter"), "lora", "")
    assert adapter_directory(relative, 16) == str((tmp_path / "adapter").resolve())


def test_an_adapter_vllm_would_read_as_a_pickle_or_not_at_all_is_refused(tmp_path):
    pickled = _adapter(tmp_path, files=("adapter_config.json", "adapter_model.bin"))
    with pytest.raises(FailedPrecondition, match="not a PEFT adapter in safetensors") as raised:
        adapter_directory(pickled, 16)
    assert raised.value.code == "model_not_available"
    missing = FineTuned("ft:tiny-llama:acme:x:ftjob-2", "tiny-llama", tmp_path / "nowhere", "lora", "")
    with pytest.raises(FailedPrecondition, match="not a PEFT adapter"):
        adapter_directory(missing, 16)


def test_an_adapter_of_a_rank_above_the_engines_is_refused_with_the_setting_to_change(tmp_path):
    with pytest.raises(FailedPrecondition, match="LoRA rank 32, above .* max_lora_rank of 16.*TUNELOOP_VLLM_MAX_LORA_RANK") as raised:
        adapter_directory(_adapter(tmp_path, r=32), 16)
    assert raised.value.code == "lora_rank_too_high"
    with pytest.raises(FailedPrecondition, match="LoRA rank 64"):  # a layer's own rank counts too
        adapter_directory(_adapter(tmp_path / "p", r=8, rank_pattern={"q_proj": 64}), 32)
    with pytest.raises(FailedPrecondition, match="no valid LoRA rank"):
        adapter_directory(_adapter(tmp_path / "bad", r="16"), 16)
