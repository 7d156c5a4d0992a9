"""Fine-tuning on a CPU, seeded and resumable: supervised LoRA (the loss on the assistant's tokens
only), DPO of a LoRA adapter on preference pairs (`method="dpo"`, dpo.py) and full fine-tuning of a
small model (`method="full"`, full.py). What differs between them is an objective (objectives.py)
and which weights train; the loop, checkpoints, resume, cancel, early stopping and events are one.

    trainer = Trainer(TrainConfig(n_epochs=3, batch_size=8, learning_rate=2e-4), (model, tokenizer),
                      train_examples, valid_examples, output_dir=run_dir, base_model_id="smollm2-135m-instruct")
    trainer.setup()
    result = trainer.train(on_event=print)   # result.adapter_dir holds the adapter to serve

After each epoch a checkpoint (a servable adapter plus the optimizer, scheduler and RNG states) is
written to `output_dir/checkpoints/epoch-N`; `resume_from` continues from one exactly as if the
run had never stopped. The final adapter has the weights of the epoch with the lowest validation
loss (the last epoch when there is no validation set) and carries the tokenizer and chat template
it was trained with, so serving renders prompts the same way. With `method="full"` the "adapter"
directory holds a whole model instead (config and safetensors); its manifest says `"kind": "full"`.

`init_from` (a `WarmStart`) starts a run from a fine-tuned model's weights instead of fresh ones:
the adapter keeps its shape and starts from the parent's values, or a "full" run starts from the
parent's whole model. A checkpoint's weights still win over it when a run resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from services.shared.errors import InvalidArgument
from services.shared.models import ADAPTER_MANIFEST, cpu_supports_bf16
from services.training import full
from services.training.batching import length_grouped_batches, micro_batches
from services.training.distributed import World
from services.training.dpo import DEFAULT_BETA, DpoObjective
from services.training.lora import is_quantized, wrap_with_lora
from services.training.objectives import Objective, SupervisedObjective

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from services.dataprep.examples import Example

    ModelPair = tuple[PreTrainedModel, PreTrainedTokenizerBase]

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_DEFAULT_LENGTH = 2048
STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.pt"
BEST_WEIGHTS = "best_adapter.safetensors"
# Fields a resumed run may change; any other difference would make it a different run.
RESUMABLE_CHANGES = {"early_stopping_patience", "num_threads"}
METHODS = ("supervised", "dpo", "full", "qlora")

EventSink = Callable[[dict[str, Any]], None]


def physical_cores() -> int:
    """Cores this process may run on, not hyper-threads: one matmul thread per core is fastest."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_core = 0
    try:
        siblings = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").read_text().strip()
        for part in siblings.split(","):  # "0,8" or "0-1"
            first, _, last = part.partition("-")
            per_core += int(last) - int(first) + 1 if last else 1
    except (OSError, ValueError):
        per_core = 1
    return max(1, logical // max(1, per_core))


@dataclass(frozen=True)
class TrainConfig:
    n_epochs: int = 3
    batch_size: int = 8
    # Resolved by the caller: OpenAI's learning_rate_multiplier times the base model's base rate.
    learning_rate: float = 2e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ALL_LINEAR
    # Tokens per example; None: the model's context, at most 2048.
    max_length: int | None = None
    seed: int = 0
    # Epochs without a lower validation loss before stopping; None: never stop early.
    early_stopping_patience: int | None = None
    # bf16 base weights and autocast; None: on where the CPU has native bf16 (AVX512-BF16 / AMX).
    bf16: bool | None = None
    # A batch is run as micro-batches of at most this many (padded) tokens, gradients summed:
    # bounds activation memory whatever batch_size is, and changes no result.
    max_tokens_per_microbatch: int = 512
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    # None: one per physical core.
    num_threads: int | None = None
    # "supervised" (LoRA), "dpo" (LoRA, on preference pairs), "full" (every weight, no LoRA) or
    # "qlora" (LoRA on a base the model source loaded in 4 bits, see ModelStore.load).
    method: str = "supervised"
    # DPO's beta: how far the policy may move from the base model.
    dpo_beta: float = DEFAULT_BETA

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        problems = [(name, message) for name, ok, message in self._checks() if not ok]
        if problems:
            raise InvalidArgument("; ".join(f"{name}: {message}" for name, message in problems), param=problems[0][0])

    def _checks(self) -> list[tuple[str, bool, str]]:
        def integer(value: Any, low: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= low

        def number(value: Any) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

        return [
            ("n_epochs", integer(self.n_epochs, 1), f"must be an integer >= 1, got {self.n_epochs!r}"),
            ("batch_size", integer(self.batch_size, 1), f"must be an integer >= 1, got {self.batch_size!r}"),
            ("learning_rate", number(self.learning_rate) and self.learning_rate > 0,
             f"must be a positive number, got {self.learning_rate!r}"),
            ("lora_r", integer(self.lora_r, 1), f"must be an integer >= 1, got {self.lora_r!r}"),
            ("lora_alpha", number(self.lora_alpha) and self.lora_alpha > 0,
             f"must be a positive number, got {self.lora_alpha!r}"),
            ("lora_dropout", number(self.lora_dropout) and 0 <= self.lora_dropout < 1,
             f"must be in [0, 1), got {self.lora_dropout!r}"),
            ("target_modules", bool(self.target_modules) and all(isinstance(m, str) and m for m in self.target_modules)
             and not {"lm_head", "embed_tokens"} & set(self.target_modules),
             f"must be names of linear layers other than lm_head/embed_tokens, got {list(self.target_modules)!r}"),
            ("max_length", self.max_length is None or integer(self.max_length, 2),
             f"must be an integer >= 2 or None, got {self.max_length!r}"),
            ("seed", integer(self.seed, 0) and self.seed < 2**32, f"must be an integer in [0, 2**32), got {self.seed!r}"),
            ("early_stopping_patience", self.early_stopping_patience is None or integer(self.early_stopping_patience, 1),
             f"must be an integer >= 1 or None, got {self.early_stopping_patience!r}"),
            ("bf16", self.bf16 is None or isinstance(self.bf16, bool), f"must be true, false or None, got {self.bf16!r}"),
            ("max_tokens_per_microbatch", integer(self.max_tokens_per_microbatch, 1),
             f"must be an integer >= 1, got {self.max_tokens_per_microbatch!r}"),
            ("warmup_ratio", number(self.warmup_ratio) and 0 <= self.warmup_ratio < 1,
             f"must be in [0, 1), got {self.warmup_ratio!r}"),
            ("weight_decay", number(self.weight_decay) and self.weight_decay >= 0,
             f"must be a number >= 0, got {self.weight_decay!r}"),
            ("max_grad_norm", self.max_grad_norm is None or (number(self.max_grad_norm) and self.max_grad_norm > 0),
             f"must be a positive number or None, got {self.max_grad_norm!r}"),
            ("num_threads", self.num_threads is None or integer(self.num_threads, 1),
             f"must be an integer >= 1 or None, got {self.num_threads!r}"),
            ("method", self.method in METHODS, f"must be one of {', '.join(METHODS)}, got {self.method!r}"),
            ("dpo_beta", number(self.dpo_beta) and self.dpo_beta > 0, f"must be a positive number, got {self.dpo_beta!r}"),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "target_modules": list(self.target_modules)}


@dataclass(frozen=True)
class WarmStart:
    """Trained weights a run starts from: a LoRA adapter's directory ("lora", for the LoRA methods,
    with the run's adapter of the same shape) or a whole model's ("full", for method "full")."""

    path: Path
    kind: str


@dataclass
class TrainState:
    """Counters that make a resumed run continue exactly where the checkpoint left it."""

    epochs_completed: int = 0
    step: int = 0
    # Batches of the epoch in progress already trained: a checkpoint taken mid-epoch (a paused
    # job's) resumes after them, since an epoch's batches are a function of (seed, epoch) only.
    epoch_step: int = 0
    trained_tokens: int = 0
    best_valid_loss: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    data_sha256: str = ""


@dataclass(frozen=True)
class TrainResult:
    status: str  # "succeeded", "early_stopped" or "cancelled"
    epochs_completed: int
    steps: int
    trained_tokens: int
    # The servable result: a LoRA adapter, or a whole model for method "full".
    adapter_dir: Path | None
    best_epoch: int | None
    metrics: dict[str, Any]
    dropped_examples: int


SINGLE_PROCESS = World()


def _linear_warmup_decay(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def _data_fingerprint(examples: Sequence[Any]) -> str:
    digest = hashlib.sha256()
    for example in examples:  # an EncodedExample is (input_ids, labels); a pair, two of them
        digest.update(json.dumps(astuple(example)).encode())
    return digest.hexdigest()


def _objective(config: TrainConfig) -> Objective:
    if config.method == "dpo":
        return DpoObjective(config.dpo_beta)
    return SupervisedObjective(full.labelled_loss) if config.method == "full" else SupervisedObjective()


class Trainer:
    """One run (supervised LoRA, DPO or full): `setup()`, optionally `resume_from()`, then `train()`."""

    def __init__(
        self,
        config: TrainConfig,
        model: ModelPair | Callable[[torch.dtype], ModelPair],
        train_examples: Sequence[Example | Mapping[str, Any] | Sequence[Mapping[str, Any]]],
        valid_examples: Sequence[Example | Mapping[str, Any] | Sequence[Mapping[str, Any]]] = (),
        *,
        output_dir: Path,
        base_model_id: str,
        cancel: threading.Event | Callable[[], bool] | None = None,
        init_from: WarmStart | None = None,
        world: World = SINGLE_PROCESS,
    ):
        if config.early_stopping_patience is not None and not valid_examples:
            raise InvalidArgument("early stopping needs a validation set", param="early_stopping_patience")
        self.config = config
        self._model_source = model
        self._raw_train, self._raw_valid = train_examples, valid_examples
        self.output_dir = Path(output_dir)
        self.base_model_id = base_model_id
        self._cancel = cancel
        self._init_from = init_from
        self.world = world
        self.model: Any = None
        self.state = TrainState()
        self.objective = _objective(config)
        self._full = config.method == "full"

    # ---- setup -----------------------------------------------------------------------------

    def setup(self) -> None:
        config = self.config
        # The GPU when there is one (a 4-bit QLoRA base is put there as it loads, see ModelStore.load).
        self.device = torch.device("cuda", self.world.local_rank) if torch.cuda.is_available() else torch.device("cpu")
        native_bf16 = torch.cuda.is_bf16_supported() if self.device.type == "cuda" else cpu_supports_bf16()
        bf16 = native_bf16 if config.bf16 is None else config.bf16
        torch.set_num_threads(config.num_threads or physical_cores())
        if callable(self._model_source):
            # Full fine-tuning keeps float32 master weights (bf16 only under autocast).
            model, tokenizer = self._model_source(torch.bfloat16 if bf16 and not self._full else torch.float32)
        else:
            model, tokenizer = self._model_source
        if not tokenizer.chat_template:
            raise InvalidArgument("the base model's tokenizer has no chat template", param="model")
        if (config.method == "qlora") != is_quantized(model):
            raise InvalidArgument("method 'qlora' trains a base loaded in 4 bits, and only it does: load the model "
                                  "with quantize_4bit for it", param="method")
        if not is_quantized(model):
            model.to(self.device)
        context = getattr(model.config, "max_position_embeddings", None) or MAX_DEFAULT_LENGTH
        self.config = config = replace(config, bf16=bf16, max_length=config.max_length or min(context, MAX_DEFAULT_LENGTH))
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        objective = self.objective
        self.train_data, self.dropped = objective.encode(tokenizer, self._raw_train, config.max_length, "training_file")
        self.valid_data, dropped_valid = objective.encode(tokenizer, self._raw_valid, config.max_length,
                                                          "validation_file")
        self.dropped += dropped_valid
        self.state = TrainState(data_sha256=_data_fingerprint(self.train_data + self.valid_data))
        # Micro-batches are cut by example; an example of DPO is two sequences.
        self._microbatch_tokens = max(1, config.max_tokens_per_microbatch // objective.rows_per_example)

        torch.manual_seed(config.seed)  # LoRA's A matrices, then dropout masks
        if self._full:
            self.model = full.prepare_full_model(model)
        else:
            self.model = wrap_with_lora(model, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                                        target_modules=config.target_modules, bf16=bf16)
            self.model.peft_config["default"].base_model_name_or_path = self.base_model_id
        if self._init_from is not None:
            self._warm_start(self._init_from)
        self.model.train()
        if isinstance(objective, DpoObjective):
            # The reference is the policy as the run starts: a warm start's parent, else the base.
            self.train_data, self.valid_data = (
                objective.prepare(self.model, data, self.pad_id, bf16, config.max_tokens_per_microbatch,
                                  reference_adapter=self._init_from is not None)
                for data in (self.train_data, self.valid_data))
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self._params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                           foreach=True)
        self.steps_per_epoch = math.ceil(len(self.train_data) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.n_epochs
        warmup = round(config.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _linear_warmup_decay(warmup, self.total_steps))
        self._best_weights: dict[str, torch.Tensor] | None = None

    def _warm_start(self, init: WarmStart) -> None:
        if (init.kind == "full") != self._full:
            raise InvalidArgument(f"a {init.kind} model cannot start a {self.config.method} run: a whole model "
                                  "starts method 'full' only, an adapter the LoRA methods only", param="model")
        self._load_weights(self._saved_weights(Path(init.path), param="model"), param="model")

    def _require_setup(self) -> None:
        if self.model is None:
            raise RuntimeError("call Trainer.setup() first")

    # ---- training --------------------------------------------------------------------------

    def train(self, on_event: EventSink | None = None) -> TrainResult:
        self._require_setup()
        emit = on_event or (lambda event: None)
        config, state = self.config, self.state
        if self.dropped:
            emit({"type": "message", "level": "warn",
                  "message": f"{self.dropped} examples have no assistant token within {config.max_length} tokens; skipped"})
        lengths = [self.objective.length(example) for example in self.train_data]
        run_tokens, run_seconds, run_steps = 0, 0.0, 0
        status = "succeeded"
        for epoch in range(state.epochs_completed, config.n_epochs):
            batches = length_grouped_batches(lengths, config.batch_size, config.seed, epoch)
            for batch in batches[state.epoch_step:]:
                if self.world.any(self._cancelled()):  # all processes stop after the same step
                    status = "cancelled"
                    break
                started = time.perf_counter()
                metrics, tokens = self._train_step(batch, lengths)
                run_seconds += time.perf_counter() - started
                run_tokens += tokens
                run_steps += 1
                state.step += 1
                state.epoch_step += 1
                state.trained_tokens += tokens
                emit({"type": "step", "step": state.step, "epoch": epoch + 1, "total_steps": self.total_steps,
                      **metrics,
                      "tokens_per_second": run_tokens / run_seconds,
                      "eta_seconds": (self.total_steps - state.step) * run_seconds / run_steps})
            if status == "cancelled":
                break
            metrics = self._end_epoch(epoch)
            checkpoint = self.save_checkpoint(self.output_dir / "checkpoints" / f"epoch-{epoch + 1}")
            emit({"type": "epoch", "epoch": epoch + 1, "step": state.step, **metrics, "checkpoint": str(checkpoint)})
            patience = config.early_stopping_patience
            if patience is not None and state.epochs_without_improvement >= patience:
                status = "early_stopped" if epoch + 1 < config.n_epochs else status
                break
        adapter_dir = None
        if status != "cancelled":
            if self._best_weights is not None and state.best_epoch != state.epochs_completed:
                self._load_weights(self._best_weights)
            adapter_dir = self.save_adapter(self.output_dir / "adapter")
        return TrainResult(status, state.epochs_completed, state.step, state.trained_tokens, adapter_dir,
                           state.best_epoch, state.history[-1] if state.history else {}, self.dropped)

    def _cancelled(self) -> bool:
        if self._cancel is None:
            return False
        if isinstance(self._cancel, threading.Event):
            return self._cancel.is_set()
        return bool(self._cancel())

    def _losses(self, examples: Sequence[Any], indices: Sequence[int], lengths: Sequence[int],
                weight: int) -> tuple[dict[str, float], int]:
        """Run `indices` as micro-batches, each summed loss divided by `weight` (backward when
        gradients are on), so the gradient is the whole batch's; the summed metrics and tokens."""
        objective, tokens = self.objective, 0
        totals = dict.fromkeys(objective.total_names, 0.0)
        for part in micro_batches(indices, lengths, self._microbatch_tokens):
            rows = [examples[i] for i in part]
            loss_sum, stats = objective.loss(self.model, rows, self.pad_id, self.config.bf16)
            if torch.is_grad_enabled():
                (loss_sum / weight).backward()
            for name, value in {"loss": loss_sum.item(), **stats}.items():
                totals[name] += value
            tokens += sum(objective.tokens(row) for row in rows)
        return totals, tokens

    def _shared_losses(self, examples: Sequence[Any], indices: Sequence[int], lengths: Sequence[int],
                       weight: int) -> tuple[dict[str, float], int]:
        """`_losses` of this process's share of `indices`, summed over every process (gradients
        included), so each process ends with the whole batch's gradient and metrics."""
        totals, tokens = self._losses(examples, self.world.share(indices), lengths, weight)
        if torch.is_grad_enabled():
            self.world.sum_gradients(self._params)
        return self.world.sum_totals(totals, tokens)

    def _train_step(self, batch: list[int], lengths: list[int]) -> tuple[dict[str, float], int]:
        """One optimizer step over a batch: its `train_*` metrics and the tokens it read."""
        weight = sum(self.objective.weight(self.train_data[i]) for i in batch)
        totals, tokens = self._shared_losses(self.train_data, batch, lengths, weight)
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._params, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.objective.metrics(totals, weight, "train_"), tokens

    def evaluate(self) -> dict[str, float | None]:
        """The objective's validation metrics (loss, and token accuracy or DPO's reward accuracy and
        margin): on one batch (OpenAI's `valid_*`, the first batch_size validation examples, the
        same every epoch) and on the whole set (`full_valid_*`)."""
        self._require_setup()
        objective, data = self.objective, self.valid_data
        if not data:
            return {f"{prefix}{name}": None for prefix in ("valid_", "full_valid_") for name in objective.metric_names}
        lengths = [objective.length(example) for example in data]
        sample = list(range(min(self.config.batch_size, len(data))))
        rest = list(range(len(sample), len(data)))
        self.model.eval()
        try:
            with torch.inference_mode():
                (sample_totals, _), (rest_totals, _) = (self._shared_losses(data, indices, lengths, 1)
                                                        for indices in (sample, rest))
        finally:
            self.model.train()
        sample_weight = sum(objective.weight(data[i]) for i in sample)
        whole = {name: sample_totals[name] + rest_totals.get(name, 0.0) for name in sample_totals}
        return {**objective.metrics(sample_totals, sample_weight, "valid_"),
                **objective.metrics(whole, sum(objective.weight(example) for example in data), "full_valid_")}

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        state = self.state
        metrics = self.evaluate()
        state.epochs_completed = epoch + 1
        state.epoch_step = 0
        valid = metrics["full_valid_loss"]
        if valid is None or state.best_valid_loss is None or valid < state.best_valid_loss:
            state.best_valid_loss, state.best_epoch = valid, epoch + 1
            state.epochs_without_improvement = 0
            self._best_weights = {name: t.detach().clone() for name, t in self._adapter_weights().items()}
        else:
            state.epochs_without_improvement += 1
        state.history.append({"epoch": epoch + 1, "step": state.step, **metrics})
        return metrics

    # ---- checkpoints -----------------------------------------------------------------------

    def _adapter_weights(self) -> dict[str, torch.Tensor]:
        """The weights that train: the adapter's, or every one for method "full"."""
        from peft.utils import get_peft_model_state_dict

        if self._full:
            return full.trainable_weights(self.model)
        return get_peft_model_state_dict(self.model, save_embedding_layers=False)

    def _load_weights(self, weights: dict[str, torch.Tensor], param: str = "checkpoint") -> None:
        from peft.utils import set_peft_model_state_dict

        if self._full:
            full.load_trainable_weights(self.model, weights, param=param)
            return
        ours = self._adapter_weights()
        misfits = sorted(name for name, tensor in weights.items()
                         if name not in ours or ours[name].shape != tensor.shape)
        missing = sorted(set(ours) - set(weights))
        if misfits or missing:
            raise InvalidArgument(f"adapter weights do not fit this model's adapter (r={self.config.lora_r}, "
                                  f"target_modules={list(self.config.target_modules)}): unexpected or of another "
                                  f"shape {misfits[:3]}, missing {missing[:3]}", param=param)
        set_peft_model_state_dict(self.model, weights)

    def _saved_weights(self, directory: Path, param: str) -> dict[str, torch.Tensor]:
        """The trainable weights `save_adapter` wrote to `directory`; safetensors only, never pickles."""
        from safetensors.torch import load_file

        if self._full:
            return full.read_saved_weights(directory, param=param)
        adapter = directory / "adapter_model.safetensors"
        if not adapter.is_file():
            raise InvalidArgument(f"{directory} has no adapter_model.safetensors", param=param)
        return load_file(str(adapter))

    def save_adapter(self, directory: Path) -> Path:
        """A servable adapter: peft's files (safetensors), the tokenizer with its chat template,
        and `tuneloop-adapter.json` saying what it was trained from and how well it did. For method
        "full", a whole model instead (config, safetensors), with the same tokenizer and manifest.
        Of several processes the first writes it; every one returns once it is written."""
        self._require_setup()
        directory = Path(directory)
        if self.world.is_main:
            self._write_adapter(directory)
        self.world.barrier()
        return directory

    def _write_adapter(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if self._full:
            self.model.save_pretrained(str(directory))  # transformers 5 writes safetensors only
        else:
            self.model.save_pretrained(str(directory), safe_serialization=True, save_embedding_layers=False)
        self.tokenizer.save_pretrained(str(directory))
        template = self.tokenizer.chat_template
        manifest = {
            "format": 1,
            # "lora": peft adapter files to apply to base_model; "full": a complete model.
            "kind": "full" if self._full else "lora",
            "method": self.config.method,
            "base_model": self.base_model_id,
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
            "train_config": self.config.to_dict(),
            "epochs_completed": self.state.epochs_completed,
            "step": self.state.step,
            "trained_tokens": self.state.trained_tokens,
            "best_epoch": self.state.best_epoch,
            "metrics": self.state.history[-1] if self.state.history else {},
            "history": self.state.history,
        }
        (directory / ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    def save_checkpoint(self, directory: Path) -> Path:
        """The adapter plus everything `resume_from` needs, written to a temporary directory and
        renamed into place, so a crash never leaves a half-written checkpoint under the name."""
        directory = Path(directory)
        if self.world.is_main:
            self._write_checkpoint(directory)
        self.world.barrier()
        return directory

    def _write_checkpoint(self, directory: Path) -> None:
        from safetensors.torch import save_file

        tmp = directory.with_name(f".{directory.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self._write_adapter(tmp)
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    **({"cuda_rng": torch.cuda.get_rng_state()} if self.device.type == "cuda" else {})},
                   tmp / STATE_TENSORS)
        # Mid-epoch the live weights are past the best epoch's even when it is the last one completed.
        if self._best_weights is not None and (self.state.best_epoch != self.state.epochs_completed
                                               or self.state.epoch_step):
            save_file({k: v.contiguous() for k, v in self._best_weights.items()}, str(tmp / BEST_WEIGHTS))
        (tmp / STATE_JSON).write_text(json.dumps({"config": self.config.to_dict(), "state": asdict(self.state)}, indent=2))
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)

    def resume_from(self, directory: Path) -> None:
        """Continue from a checkpoint of the same run (same data and settings), after `setup()`."""
        from safetensors.torch import load_file

        self._require_setup()
        directory = Path(directory)
        if not (directory / STATE_JSON).is_file():
            raise InvalidArgument(f"{directory} is not a training checkpoint", param="checkpoint")
        saved = json.loads((directory / STATE_JSON).read_text())
        ours = self.config.to_dict()
        changed = sorted(k for k in ours if k not in RESUMABLE_CHANGES and saved["config"].get(k) != ours[k])
        if changed:
            raise InvalidArgument(f"checkpoint was made with different settings: {changed}", param="checkpoint")
        state = TrainState(**saved["state"])
        if state.data_sha256 != self.state.data_sha256:
            raise InvalidArgument("checkpoint was made from different training data", param="checkpoint")
        self._load_weights(self._saved_weights(directory, param="checkpoint"))
        # weights_only: our own dicts of tensors and numbers; never unpickle arbitrary objects.
        blob = torch.load(directory / STATE_TENSORS, weights_only=True)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["torch_rng"])
        if "cuda_rng" in blob and self.device.type == "cuda":  # dropout masks drawn on the GPU
            torch.cuda.set_rng_state(blob["cuda_rng"])
        self.state = state
        if (directory / BEST_WEIGHTS).is_file():
            self._best_weights = load_file(str(directory / BEST_WEIGHTS))
        elif state.best_epoch is not None:
            self._best_weights = {name: t.detach().clone() for name, t in self._adapter_weights().items()}

    def cleanup(self) -> None:
        """Drop the model and optimizer so their memory can go before the process does."""
        self.model = None
        self.optimizer = None
        self._best_weights = None
