"""The decoding step compiled ahead of time (compiled_decode.py), against the engine's eager one:
the same logits and cache over left-padded rows, rows leaving, padding rows, and in the generator
the same answers, in float32 where the two agree to rounding. Each package is really built
(torch.export + AOTInductor in a child process: ~20 s for the tiny model)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from transformers import DynamicCache

from services.inference import compiled_decode
from services.inference.batching import BASE
from services.inference.compiled_decode import CompiledDecode
from services.inference.generation import Generator
from services.inference.llama_decoder import LlamaDecoder
from services.inference.settings import InferenceSettings
from services.shared.models import ModelStore
from services.shared.settings import Settings
from tests.fixtures.engine import held_back_then_released, same

MODEL = "tiny-llama"
ROWS, CAPACITY = 4, 32

pytestmark = pytest.mark.slow  # each module builds a package


@pytest.fixture(scope="module")
def package(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = compiled_decode.package_path(tmp_path_factory.mktemp("compiled"), str(tiny_model_dir), torch.float32,
                                        ROWS, CAPACITY)
    compiled_decode.build(tiny_model_dir, torch.float32, ROWS, CAPACITY, path)
    return path


def _copy(cache: DynamicCache) -> DynamicCache:
    return DynamicCache(ddp_cache_data=[(layer.keys.clone(), layer.values.clone()) for layer in cache.layers])


def test_steps_match_the_eager_decoder_as_rows_leave(tiny_settings: Settings, package: Path) -> None:
    model, _ = ModelStore(tiny_settings).load(MODEL, torch.float32)
    model.eval()
    eager = LlamaDecoder(model)
    compiled = CompiledDecode(package, model, ROWS, CAPACITY)
    torch.manual_seed(0)
    # Three left-padded prompts: row 1 is the longest, row 2 the shortest.
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    ids = torch.randint(5, 500, mask.shape)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        reference = DynamicCache()
        eager(ids, mask, positions, reference)
        cache = _copy(reference)
        for step in range(9):
            if step == 5:  # row 0 leaves: the engine gives the cache new tensors, copied in again
                keep = torch.tensor([1, 2])
                mask = mask[keep]
                for kept in (reference, cache):
                    for layer in kept.layers:
                        layer.keys, layer.values = layer.keys[keep], layer.values[keep]
            positions = mask.sum(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=torch.long)], dim=-1)
            new = torch.randint(5, 500, (mask.shape[0], 1))
            expected = eager(new, mask, positions, reference)
            got = compiled.step(new, mask, positions, cache)
            torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
            for ours, theirs in zip(cache.layers, reference.layers, strict=True):
                assert ours.keys.shape == theirs.keys.shape
                hidden = mask.bool()[:, None, :, None]  # padding columns hold whatever was there
                torch.testing.assert_close(ours.keys * hidden, theirs.keys * hidden, atol=2e-5, rtol=1e-4)
                torch.testing.assert_close(ours.values * hidden, theirs.values * hidden, atol=2e-5, rtol=1e-4)
    assert compiled.steps == 9


def test_only_steps_that_fit_are_compiled(tiny_settings: Settings, package: Path) -> None:
    model, _ = ModelStore(tiny_settings).load(MODEL, torch.float32)
    compiled = CompiledDecode(package, model, ROWS, CAPACITY)
    assert compiled.fits(ROWS, CAPACITY, None)
    assert compiled.fits(2, 10, [BASE, BASE])
    assert not compiled.fits(ROWS + 1, 10, None)  # more rows than the package has
    assert not compiled.fits(2, CAPACITY + 1, None)  # more keys than its buffers hold
    assert not compiled.fits(2, 10, [BASE, "ft_adapter"])  # LoRA rows: the package holds base weights only


def test_the_generator_answers_the_same_with_compiled_steps(tiny_settings: Settings) -> None:
    """Requests batched together, one of them too long for the compiled step's keys."""
    compiled = Generator(ModelStore(tiny_settings), dtype="float32", compiled_decode=(ROWS, CAPACITY))
    plain = Generator(ModelStore(tiny_settings), dtype="float32")
    requests = [
        {"prompt": "Hi", "max_tokens": 12, "temperature": 0},
        {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 9, "temperature": 0},
        {"prompt": "Tell me", "max_tokens": 7, "temperature": 0.8, "seed": 3},
        {"prompt": "A prompt long enough to leave the compiled keys " * 2, "max_tokens": 8, "temperature": 0},
    ]
    try:
        expected = [plain.generate(MODEL, **request) for request in requests]
        compiled.generate(MODEL, prompt="warm", max_tokens=1)  # loads the model, starts building the package
        assert compiled.compiled_decode_ready(MODEL, timeout=600)
        got = held_back_then_released(
            compiled, MODEL, [lambda request=request: compiled.generate(MODEL, **request) for request in requests])
        for ours, theirs in zip(got, expected, strict=True):
            same(ours, theirs)
        alone = [compiled.generate(MODEL, **request) for request in requests[:2]]
        for ours, theirs in zip(alone, expected[:2], strict=True):
            same(ours, theirs)
        stats = compiled.engine(MODEL).stats
        assert stats.compiled_steps > 0
        assert stats.compiled_steps < stats.steps  # prompts, and the long prompt's steps, went the eager way
        assert list((tiny_settings.data_dir / "compiled").glob("decode-*.pt2"))  # built once, kept
    finally:
        compiled.close()
        plain.close()


def test_requests_are_served_while_the_package_builds(tiny_settings: Settings, monkeypatch) -> None:
    """The first load builds in the background: answers come meanwhile (eager), compiled steps after;
    the next process finds the package built and loads it with the model."""
    release, builds = threading.Event(), []
    real_build = compiled_decode.build

    def held_build(*args, **kwargs) -> None:
        builds.append(args)
        assert release.wait(timeout=600)
        real_build(*args, **kwargs)

    monkeypatch.setattr(compiled_decode, "build", held_build)
    first = Generator(ModelStore(tiny_settings), dtype="float32", compiled_decode=(ROWS, CAPACITY))
    try:
        answer = first.generate(MODEL, prompt="Hi", max_tokens=6, temperature=0)
        assert answer.completion_tokens == 6
        assert not first.compiled_decode_ready(MODEL, timeout=0)
        assert first.engine(MODEL).stats.compiled_steps == 0
        release.set()
        assert first.compiled_decode_ready(MODEL, timeout=600)
        again = first.generate(MODEL, prompt="Hi", max_tokens=6, temperature=0)
        same(again, answer)
        assert first.engine(MODEL).stats.compiled_steps == 5  # every step after the prompt's
    finally:
        first.close()
    second = Generator(ModelStore(tiny_settings), dtype="float32", compiled_decode=(ROWS, CAPACITY))
    try:
        second.generate(MODEL, prompt="Hi", max_tokens=6, temperature=0)
        assert second.engine(MODEL).stats.compiled_steps == 5  # from its first request on
        assert len(builds) == 1
    finally:
        second.close()


def test_a_failed_build_leaves_the_model_served_eagerly(tiny_settings: Settings, monkeypatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    def no_compiler(*_args, **_kwargs) -> None:
        raise RuntimeError("building the compiled decoding step failed (1): no C++ compiler")

    monkeypatch.setattr(compiled_decode, "build", no_compiler)
    generator = Generator(ModelStore(tiny_settings), dtype="float32", compiled_decode=(ROWS, CAPACITY))
    try:
        generator.generate(MODEL, prompt="Hi", max_tokens=1, temperature=0)
        assert not generator.compiled_decode_ready(MODEL, timeout=60)
        answer = generator.generate(MODEL, prompt="Hi", max_tokens=4, temperature=0)
        assert answer.completion_tokens == 4
        assert generator.engine(MODEL).stats.compiled_steps == 0
        assert "decoding steps stay eager: building the compiled decoding step failed" in caplog.text
    finally:
        generator.close()


def test_a_damaged_package_leaves_the_model_served_eagerly(tiny_settings: Settings,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    store = ModelStore(tiny_settings)
    path = compiled_decode.package_path(tiny_settings.data_dir / "compiled",
                                        compiled_decode.model_identity(store.ensure(MODEL)), torch.float32, ROWS,
                                        CAPACITY)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a package")
    generator = Generator(store, dtype="float32", compiled_decode=(ROWS, CAPACITY))
    try:
        answer = generator.generate(MODEL, prompt="Hi", max_tokens=4, temperature=0)
        assert answer.completion_tokens == 4
        assert not generator.compiled_decode_ready(MODEL, timeout=0)
        assert generator.engine(MODEL).stats.compiled_steps == 0
        assert f"its package {path} does not load" in caplog.text
    finally:
        generator.close()


def test_a_build_ends_with_the_process_that_asked_for_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A service stopped (here: killed) while it builds leaves no compile running."""
    path = tmp_path / "step.pt2"
    script = ("import sys, torch; from pathlib import Path; from services.inference import compiled_decode; "
              "compiled_decode.build(Path(sys.argv[1]), torch.float32, 4, 32, Path(sys.argv[2]))")
    parent = subprocess.Popen([sys.executable, "-c", script, str(tiny_model_dir), str(path)],
                              cwd=Path(__file__).resolve().parents[2])
    asking = psutil.Process(parent.pid)
    deadline = time.monotonic() + 60
    while not (children := asking.children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert children, "the build's child process never started"
    builder = children[0]
    assert "services.inference.compiled_decode" in " ".join(builder.cmdline())
    time.sleep(8)  # into its compile, which writes nothing (a child that writes to a closed pipe ends anyway)
    parent.kill()
    parent.wait()
    _, alive = psutil.wait_procs([builder], timeout=30)
    assert not alive
    assert not path.exists()


def test_a_directory_keeps_the_packages_used_most_recently(tmp_path: Path) -> None:
    packages = [tmp_path / f"decode-{index:02d}.pt2" for index in range(compiled_decode.KEEP_PACKAGES + 3)]
    for age, package in enumerate(reversed(packages)):  # packages[0] is the newest
        package.write_bytes(b"package")
        os.utime(package, (1_000_000 + age, 1_000_000 + age))
    other = tmp_path / "notes.txt"
    other.write_text("not a package")
    oldest = packages[-1]
    compiled_decode.prune(tmp_path, keep=oldest)  # just built, say, with an old modification time
    left = sorted(tmp_path.glob("decode-*.pt2"))
    assert left == sorted([*packages[:compiled_decode.KEEP_PACKAGES - 1], oldest])
    assert other.exists()


def test_a_model_it_cannot_compute_is_refused_in_the_child(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="building the compiled decoding step failed"):
        compiled_decode.build(tmp_path / "missing", torch.float32, ROWS, CAPACITY, tmp_path / "x.pt2", timeout=300)
    assert not (tmp_path / "x.pt2").exists()


@pytest.mark.parametrize(("change", "computed"), [
    ({}, True),
    ({"head_dim": 32}, False),  # heads wider than hidden size / heads
    ({"attention_bias": True}, False),
    ({"mlp_bias": True}, False),
])
def test_which_models_it_computes(change: dict, computed: bool) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, **change)
    assert compiled_decode.supports(LlamaForCausalLM(config)) is computed


def test_the_same_weights_and_shape_share_one_package(tmp_path: Path) -> None:
    one = compiled_decode.package_path(tmp_path, "model|1", torch.bfloat16, 8, 128)
    assert one == compiled_decode.package_path(tmp_path, "model|1", torch.bfloat16, 8, 128)
    others = {compiled_decode.package_path(tmp_path, "model|2", torch.bfloat16, 8, 128),
              compiled_decode.package_path(tmp_path, "model|1", torch.float32, 8, 128),
              compiled_decode.package_path(tmp_path, "model|1", torch.bfloat16, 16, 128),
              compiled_decode.package_path(tmp_path, "model|1", torch.bfloat16, 8, 256)}
    assert one not in others and len(others) == 4
    assert one.parent == tmp_path and one.suffix == ".pt2"



def test_a_model_saved_again_gets_a_new_package(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("config.json", "model.safetensors"):
        (model_dir / name).write_bytes((tiny_model_dir / name).read_bytes())
    before = compiled_decode.model_identity(model_dir)
    weights = model_dir / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert compiled_decode.model_identity(model_dir) != before
    assert (compiled_decode.package_path(tmp_path, compiled_decode.model_identity(model_dir), torch.float32, 4, 32)
            != compiled_decode.package_path(tmp_path, before, torch.float32, 4, 32))


def test_the_capacity_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNELOOP_COMPILED_DECODE_CAPACITY", raising=False)
    assert InferenceSettings().compiled_decode_capacity == 2048  # on unless set to 0
    assert InferenceSettings(compiled_decode_capacity=0).compiled_decode_capacity == 0
    with pytest.raises(ValueError, match="compiled_decode_capacity .* must be 0 \\(off\\) or at least 16 keys"):
        InferenceSettings(compiled_decode_capacity=8)
