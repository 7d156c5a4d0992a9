"""One fine-tuning job in its own process: `python -m services.training.job_process` (spec on stdin).

The supervisor starts it and reads what it reports: JSON lines on stdout (`{"event": ...}`), while
everything libraries print goes to stderr (the job's log). SIGTERM (cancel, shutdown) stops the
trainer between steps; the process also dies with its parent, so a killed service never leaves a
training run behind to race the resumed one.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import TextIO

from services.shared.errors import TuneloopError
from services.shared.models import ModelStore
from services.shared.settings import Settings
from services.training.replay import answer_prompts, cache_key, mix, replay_records

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Not Linux: no libc.so.6; the supervisor's stop still terminates the process group.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class Reporter:
    def __init__(self, out: TextIO):
        self._out = out
        self.last_step: dict = {}

    def emit(self, event: str, **data) -> None:
        self._out.write(json.dumps({"event": event, **data}) + "\n")
        self._out.flush()

    def on_trainer_event(self, event: dict) -> None:
        kind = event.pop("type")
        if kind == "step":
            self.last_step = event
            self.emit("step", **event)
        elif kind == "epoch":
            checkpoint = event.pop("checkpoint", None)
            self.emit("epoch", **event)
            if checkpoint:
                metrics = {
                    "step": event["step"],
                    "train_loss": self.last_step.get("train_loss"),
                    "train_mean_token_accuracy": self.last_step.get("train_mean_token_accuracy"),
                    **{k: event.get(k) for k in ("valid_loss", "valid_mean_token_accuracy", "full_valid_loss",
                                                 "full_valid_mean_token_accuracy")},
                }
                self.emit("checkpoint", epoch=event["epoch"], step=event["step"], path=checkpoint,
                          metrics={k: v for k, v in metrics.items() if v is not None})
        else:
            self.emit("message", **event)


def _replay(models: ModelStore, settings: Settings, base_model: str) -> list[dict]:
    def generate(prompts: list[str]) -> list[str]:
        model, tokenizer = models.load(base_model)
        try:
            return answer_prompts(model, tokenizer, prompts)
        finally:
            del model

    key = cache_key(base_model, models.ensure(base_model))
    return replay_records(settings.data_dir / "training" / "replay", key, generate)


def run(spec: dict, reporter: Reporter, cancel: threading.Event) -> None:
    from services.training.trainer import TrainConfig, Trainer  # heavy: torch, peft

    hyperparameters = spec["hyperparameters"]
    method = spec["method"]
    config = TrainConfig(
        n_epochs=hyperparameters["n_epochs"],
        batch_size=hyperparameters["batch_size"],
        learning_rate=hyperparameters["learning_rate"],
        lora_r=method["lora_r"],
        lora_alpha=method["lora_alpha"],
        lora_dropout=method["lora_dropout"],
        early_stopping_patience=method["early_stopping_patience"] or None,
        seed=spec["seed"],
    )
    settings = Settings()
    models = ModelStore(settings)
    train = _read_jsonl(spec["train_path"])
    fraction = method.get("replay_fraction", 0.0)
    if fraction:
        replay = _replay(models, settings, spec["base_model"])
        mixed = mix(train, replay, fraction, spec["seed"])
        reporter.emit("message", level="info", message=f"replay: {len(mixed) - len(train)} general examples answered "
                      f"by {spec['base_model']} itself were mixed into {len(train)} training examples")
        train = mixed
    trainer = Trainer(
        config,
        lambda dtype: models.load(spec["base_model"], dtype=dtype),
        train,
        _read_jsonl(spec["validation_path"]),
        output_dir=Path(spec["job_dir"]),
        base_model_id=spec["base_model"],
        cancel=cancel,
    )
    trainer.setup()
    if spec.get("resume_from"):
        trainer.resume_from(Path(spec["resume_from"]))
        reporter.emit("message", level="info", message=f"resumed from {spec['resume_from']}")
    result = trainer.train(reporter.on_trainer_event)
    if result.status == "cancelled":
        return
    final = Path(spec["adapter_dir"])
    shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(result.adapter_dir, final)
    if result.status == "early_stopped":
        reporter.emit("message", level="info",
                      message=f"stopped early after epoch {result.epochs_completed}; kept the weights of epoch {result.best_epoch}")
    reporter.emit("completed", adapter_path=str(final), trained_tokens=result.trained_tokens, metrics=result.metrics)


def main() -> int:
    _die_with_parent()
    reporter = Reporter(os.fdopen(os.dup(1), "w", buffering=1))
    os.dup2(2, 1)  # from here on, anything printed goes to the job's log, not into the report stream
    cancel = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    spec = json.loads(sys.stdin.readline())
    try:
        run(spec, reporter, cancel)
    except TuneloopError as error:
        reporter.emit("failed", code=error.code or "training_failed", message=error.message)
        return 1
    except Exception as error:
        traceback.print_exc()
        reporter.emit("failed", code="training_error", message=f"{type(error).__name__}: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
