import threading

import pytest

from services.inference.generation import Generator
from services.shared.errors import InvalidArgument, NotFound
from services.shared.models import ModelStore
from services.shared.settings import Settings
from tests.fixtures.engine import held_back_then_released, same

MODEL = "tiny-llama"
CHAT = [{"role": "user", "content": "Hello there"}]


# float32, not the machine's "auto" (bf16 where the CPU has it): these tests compare batched answers
# with lone ones token for token on a random model whose logits are nearly uniform, and bf16's
# coarser rounding in a batch of another shape could flip such an argmax. test_precision.py
# covers bf16.
EXACT = "float32"


@pytest.fixture
def generator(tiny_settings: Settings) -> Generator:
    return Generator(ModelStore(tiny_settings), dtype=EXACT)


def test_greedy_generation_is_deterministic(generator: Generator) -> None:
    first = generator.generate(MODEL, messages=CHAT, max_tokens=12, temperature=0)
    second = generator.generate(MODEL, messages=CHAT, max_tokens=12, temperature=0, seed=123)
    assert first == second
    assert first.finish_reason == "length"
    assert first.completion_tokens == 12
    assert first.text


def test_chat_is_rendered_with_the_template(generator: Generator, tiny_settings: Settings) -> None:
    _, tokenizer = ModelStore(tiny_settings).load(MODEL)
    rendered = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    expected = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    generation = generator.generate(MODEL, messages=CHAT, max_tokens=1, temperature=0)
    assert generation.prompt_tokens == expected
    assert rendered.endswith("<|im_start|>assistant\n")


def test_same_seed_same_sample(generator: Generator) -> None:
    runs = [
        generator.generate(MODEL, prompt="Once upon", max_tokens=10, temperature=1.0, top_p=0.9, seed=7)
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_zero_max_tokens_generates_nothing(generator: Generator) -> None:
    generation = generator.generate(MODEL, prompt="Hi", max_tokens=0, temperature=0)
    assert (generation.text, generation.completion_tokens, generation.finish_reason) == ("", 0, "length")


def test_stop_string_cuts_the_text(generator: Generator) -> None:
    # A seeded sample: the random tiny model's greedy text just repeats one token.
    request = {"prompt": "The answer is", "max_tokens": 24, "temperature": 1.0, "seed": 3}
    full = generator.generate(MODEL, **request)
    words = full.text.split()
    stop = words[len(words) // 2]
    cut = generator.generate(MODEL, **request, stop=["never seen", stop])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.text and stop not in cut.text
    assert cut.completion_tokens < full.completion_tokens


def test_concurrent_requests_load_once_and_agree(
    generator: Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = []
    real_load = ModelStore.load

    def counting_load(self, model_id, dtype=None):
        loads.append(model_id)
        return real_load(self, model_id, dtype)

    monkeypatch.setattr(ModelStore, "load", counting_load)
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(generator.generate(MODEL, prompt="Hi", max_tokens=5, temperature=0))
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == [MODEL]
    # The same answer; log-probabilities up to float rounding, since the four may join the batch in
    # different turns and then share decoding steps with another row count (batching.py).
    assert len(results) == 4 and all(r.text == results[0].text for r in results)
    for result in results:
        assert [t.id for t in result.tokens] == [t.id for t in results[0].tokens]
        assert [t.logprob for t in result.tokens] == pytest.approx([t.logprob for t in results[0].tokens], abs=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"messages": CHAT, "prompt": "x"}, "messages"),
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [*CHAT, {"role": "user"}]}, "messages[1].content"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 10_000}, "max_tokens"),
        ({"prompt": "x", "temperature": -0.1}, "temperature"),
        ({"prompt": "x", "temperature": float("nan")}, "temperature"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "seed": "7"}, "seed"),
        ({"prompt": "x", "stop": [""]}, "stop"),
        ({"prompt": "x", "stop": "\n"}, "stop"),
    ],
)
def test_invalid_requests_name_the_field(generator: Generator, kwargs: dict, field: str) -> None:
    request = {"max_tokens": 4, "temperature": 0.0, **kwargs}
    with pytest.raises(InvalidArgument) as caught:
        generator.generate(MODEL, **request)
    assert caught.value.param == field


def test_prompt_plus_max_tokens_must_fit_the_context(generator: Generator) -> None:
    with pytest.raises(InvalidArgument, match="context length") as caught:
        generator.generate(MODEL, prompt="word " * 200, max_tokens=100, temperature=0)
    assert caught.value.param == "max_tokens"


def test_unknown_model(generator: Generator) -> None:
    with pytest.raises(NotFound, match="tiny-llama"):
        generator.generate("gpt-9", prompt="x", max_tokens=1, temperature=0)
    with pytest.raises(InvalidArgument):
        generator.generate("../tiny-llama", prompt="x", max_tokens=1, temperature=0)


def test_streamed_pieces_add_up_to_the_text_and_hold_back_stop_strings(generator: Generator) -> None:
    whole = generator.generate(MODEL, messages=CHAT, max_tokens=16, temperature=0)
    pieces: list[tuple[str, list]] = []
    streamed = generator.generate(MODEL, messages=CHAT, max_tokens=16, temperature=0,
                                  on_text=lambda text, tokens: pieces.append((text, tokens)))
    assert streamed == whole and "".join(text for text, _ in pieces) == whole.text and len(pieces) > 1
    assert [t for _, tokens in pieces for t in tokens] == list(whole.tokens) and len(whole.tokens) == 16
    stop = whole.text[4:7]
    pieces.clear()
    cut = generator.generate(MODEL, messages=CHAT, max_tokens=16, temperature=0, stop=[stop, "never"],
                             on_text=lambda text, tokens: pieces.append((text, tokens)))
    assert cut.finish_reason == "stop" and cut.stop_sequence == stop
    assert "".join(text for text, _ in pieces) == cut.text == whole.text[: whole.text.find(stop)]
    assert [t for _, tokens in pieces for t in tokens] == list(cut.tokens) == list(whole.tokens[: len(cut.tokens)])


def test_each_token_comes_with_its_log_probability(generator: Generator, tiny_settings: Settings) -> None:
    import torch

    generation = generator.generate(MODEL, prompt="Once upon", max_tokens=3, temperature=0)
    model, tokenizer = ModelStore(tiny_settings).load(MODEL)
    ids = tokenizer("Once upon")["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids + [t.id for t in generation.tokens[:2]]])).logits[0]
    for position, token in enumerate(generation.tokens):
        expected = torch.log_softmax(logits[len(ids) - 1 + position].float(), dim=-1)[token.id]
        assert token.logprob == pytest.approx(float(expected), abs=1e-4)
        assert token.text == tokenizer.decode([token.id]) and token.special is False


def test_cancelling_stops_the_generation_after_the_current_token(generator: Generator) -> None:
    cancel = threading.Event()
    generation = generator.generate(MODEL, messages=CHAT, max_tokens=50, temperature=0,
                                    on_text=lambda _text, _tokens: cancel.set(), cancel=cancel)
    assert generation.completion_tokens < 5


def test_concurrent_requests_decode_in_one_batch_each_as_it_would_alone(generator: Generator) -> None:
    """Prompts of different lengths (left padding), different lengths of answer (rows leave the
    batch early), greedy and seeded sampling, a stop string and a stream, all in one batch."""
    streamed: list[str] = []
    requests = [
        {"prompt": "Hi", "max_tokens": 3, "temperature": 0},
        {"messages": CHAT, "max_tokens": 9, "temperature": 0},
        {"prompt": "A much longer prompt than the others, to be padded against " * 3, "max_tokens": 6,
         "temperature": 0},
        {"messages": CHAT, "max_tokens": 7, "temperature": 0.9, "seed": 5},
        {"messages": [{"role": "user", "content": "Stream this"}], "max_tokens": 8, "temperature": 0,
         "on_text": lambda text, _tokens: streamed.append(text)},
    ]
    alone = [generator.generate(MODEL, **request) for request in requests]
    stop = alone[1].text[3:5]  # a stop string the second request's answer reaches
    requests[1]["stop"] = [stop]
    alone[1] = generator.generate(MODEL, **requests[1])
    assert alone[1].finish_reason == "stop"
    streamed.clear()
    engine = generator.engine(MODEL)
    batched = held_back_then_released(
        generator, MODEL, [lambda request=request: generator.generate(MODEL, **request) for request in requests])
    for together, by_itself in zip(batched, alone, strict=True):
        same(together, by_itself)
    assert "".join(streamed) == alone[4].text
    assert engine.stats.max_rows == len(requests)  # they really shared forward passes


def test_more_requests_than_the_batch_holds_wait_their_turn(tiny_settings: Settings) -> None:
    generator = Generator(ModelStore(tiny_settings), max_batch_size=2, dtype=EXACT)
    alone = generator.generate(MODEL, prompt="Hi", max_tokens=4, temperature=0)
    results = held_back_then_released(
        generator, MODEL, [lambda: generator.generate(MODEL, prompt="Hi", max_tokens=4, temperature=0)] * 5)
    for result in results:
        same(result, alone)
    assert generator.engine(MODEL).stats.max_rows == 2
    generator.close()
    with pytest.raises(RuntimeError, match="closed"):
        generator.generate(MODEL, prompt="Hi", max_tokens=2)


# The tiny model's template has no default system prompt: these chats bring one long enough to keep.
SYSTEM = {"role": "system", "content": "You are the support assistant of Example Corp. Answer briefly, politely and "
                                       "in English, and never promise a refund."}


def _asked(generator: Generator, question: str, system: dict | None = SYSTEM):
    chat = ([system] if system else []) + [{"role": "user", "content": question}]
    return generator.generate(MODEL, messages=chat, max_tokens=6, temperature=0)


def test_a_shared_system_prompt_is_read_once_and_no_answer_changes(tiny_settings: Settings) -> None:
    """The prefix cache: the system prompt's keys and values are computed once and reused, alone and
    in a batch beside a prompt without it; every answer is the one the whole prompt read at once gives."""
    store = ModelStore(tiny_settings)
    cached, uncached = Generator(store, dtype=EXACT), Generator(store, dtype=EXACT, prefix_cache_size=0)
    questions = ["Hello there", "How do I reset my password?", "Thanks"]
    whole = [_asked(uncached, q) for q in questions]
    alone = [_asked(cached, q) for q in questions]
    engine = cached.engine(MODEL)
    assert (engine.stats.prefix_misses, engine.stats.prefix_hits) == (1, 2)
    calls = [lambda q=q: _asked(cached, q) for q in questions] + [lambda: _asked(cached, "Hi", system=None)]
    batched = held_back_then_released(cached, MODEL, calls)
    for together, by_itself, read_whole in zip(batched, alone, whole, strict=False):
        same(together, by_itself)
        same(by_itself, read_whole)
    same(batched[-1], _asked(uncached, "Hi", system=None))
    assert (engine.stats.prefix_misses, engine.stats.prefix_hits) == (1, 5)
    assert uncached.engine(MODEL).stats.prefix_hits == uncached.engine(MODEL).stats.prefix_misses == 0


def test_the_prefix_cache_keeps_the_prefixes_used_most_recently(tiny_settings: Settings) -> None:
    generator = Generator(ModelStore(tiny_settings), dtype=EXACT, prefix_cache_size=1)
    other = {"role": "system", "content": SYSTEM["content"].replace("Example Corp", "Other Ltd")}
    first = _asked(generator, "Hello")
    for system in (SYSTEM, other, SYSTEM):
        _asked(generator, "Hello", system)
    stats = generator.engine(MODEL).stats
    assert (stats.prefix_misses, stats.prefix_hits) == (3, 1)  # room for one: the other one pushed it out
    same(_asked(generator, "Hello"), first)
