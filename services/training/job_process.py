"""One fine-tuning job in its own process: `python -m services.training.job_process` (spec on stdin,
or `--spec FILE` where a Kubernetes Job mounts it).

The supervisor starts it and reads what it reports: JSON lines on stdout (`{"event": ...}`), while
everything libraries print goes to stderr (the job's log). SIGTERM (cancel, shutdown) stops the
trainer between steps; SIGUSR1 (pause) stops it the same way and then checkpoints the step it
stopped after, so the resumed job redoes nothing. The process also dies with its parent, so a
killed service never leaves a training run behind to race the resumed one.
"""

from __future__ import annotations

import argparse
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
from services.shared.teacher import TeacherClient, TeacherEndpoint, TeacherParams
from services.training.distillation import TEACHER_API_KEY_ENV, TEMPERATURE, AnswerCache, TeacherRef, distil
from services.training.distributed import World, join_world, leave_world
from services.training.jobs import DEFAULT_BETA, learning_rate_for, validate_full_size
from services.training.replay import answer_prompts, cache_key, mix, replay_records
from services.training.settings import TrainingSettings

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


class _Cancelled(Exception):
    """Raised inside a teacher request once the job is cancelled, to stop asking."""


def _distil(settings: TrainingSettings, method: dict, api_key: str, splits: list[list[dict]], reporter: Reporter,
            cancel: threading.Event) -> list[list[dict]]:
    """Each split with its answers written by the teacher (see services.training.distillation)."""
    teacher = TeacherRef.from_method(method)
    endpoint = TeacherEndpoint(base_url=teacher.base_url, model=teacher.model, api_key=api_key,
                               params=TeacherParams(base_url="method.teacher.base_url", model="method.teacher.model",
                                                    api_key="method.teacher.api_key_name"))
    client = TeacherClient(endpoint, max_retries=settings.teacher_max_retries, timeout=settings.teacher_timeout_s)
    cache = AnswerCache(settings.data_dir / "training" / "teacher-answers", teacher)

    def ask(prompt: list[dict]) -> str:
        if cancel.is_set():
            raise _Cancelled
        return client.chat(prompt, temperature=TEMPERATURE)

    distilled = []
    for name, records in zip(("training", "validation"), splits, strict=True):
        answered, report = distil(records, ask, cache, concurrency=settings.teacher_concurrency)
        reporter.emit("message", level="info", message=(
            f"distillation: {teacher.model} at {teacher.base_url} answered {report.examples} {name} examples "
            f"({report.asked} asked now, {report.cached} from the cache)"))
        if report.empty:
            reporter.emit("message", level="warn",
                          message=f"distillation: left out {report.empty} {name} examples the teacher answered empty")
        distilled.append(answered)
    return distilled


def run(spec: dict, reporter: Reporter, cancel: threading.Event, pause: threading.Event | None = None,
        teacher_api_key: str = "", world: World | None = None) -> None:
    """The job, in this process or as one of several (`world`, see services.training.distributed):
    then every process trains its share, and the first one alone reports and writes the results."""
    from services.training.trainer import TrainConfig, Trainer, WarmStart  # heavy: torch, peft

    world = world or World()
    if world.distributed:
        reporter.emit("message", level="info", message=f"data parallel: {world.size} processes, each training its "
                      "share of every batch")
    hyperparameters = spec["hyperparameters"]
    method = spec["method"]
    settings = TrainingSettings()
    config = TrainConfig(
        n_epochs=hyperparameters["n_epochs"],
        batch_size=hyperparameters["batch_size"],
        learning_rate=learning_rate_for(method["type"], hyperparameters["learning_rate_multiplier"]),
        method=method["type"] if method["type"] in ("dpo", "full", "qlora") else "supervised",
        dpo_beta=method.get("beta", DEFAULT_BETA),
        lora_r=method["lora_r"],
        lora_alpha=method["lora_alpha"],
        lora_dropout=method["lora_dropout"],
        **({"target_modules": tuple(method["target_modules"])} if method.get("target_modules") else {}),
        early_stopping_patience=method["early_stopping_patience"] or None,
        seed=spec["seed"],
        bf16=settings.training_bf16,
    )
    models = ModelStore(settings)
    if method["type"] == "full":  # the service checked already, unless the default model was not converted yet
        models.ensure(spec["base_model"])
        validate_full_size(models.parameter_count(spec["base_model"]), settings.max_full_parameters)
    train = _read_jsonl(spec["train_path"])
    validation = _read_jsonl(spec["validation_path"])
    if method["type"] == "distillation":
        try:
            with world.main_first():  # the others then find every answer in the cache
                train, validation = _distil(settings, method, teacher_api_key, [train, validation], reporter, cancel)
        except _Cancelled:
            return
    # DPO's loss already anchors the policy to the base model (beta), and replay answers are chats, not pairs.
    fraction = method.get("replay_fraction", 0.0) if method["type"] != "dpo" else 0.0
    if fraction:
        with world.main_first():  # the base model answers the general prompts once, into the cache
            replay = _replay(models, settings, spec["base_model"])
        mixed = mix(train, replay, fraction, spec["seed"])
        reporter.emit("message", level="info", message=f"replay: {len(mixed) - len(train)} general examples answered "
                      f"by {spec['base_model']} itself were mixed into {len(train)} training examples")
        train = mixed
    init_from = spec.get("init_from")
    if init_from:
        reporter.emit("message", level="info", message=f"warm start: from the weights of {init_from['model']}")
    trainer = Trainer(
        config,
        lambda dtype: models.load(spec["base_model"], dtype=dtype, quantize_4bit=method["type"] == "qlora"),
        train,
        validation,
        output_dir=Path(spec["job_dir"]),
        base_model_id=spec["base_model"],
        cancel=cancel,
        init_from=WarmStart(Path(init_from["path"]), init_from["kind"]) if init_from else None,
        world=world,
    )
    trainer.setup()
    if spec.get("resume_from"):
        trainer.resume_from(Path(spec["resume_from"]))
        reporter.emit("message", level="info", message=f"resumed from {spec['resume_from']}")
    result = trainer.train(reporter.on_trainer_event)
    if result.status == "cancelled":
        if world.any(pause is not None and pause.is_set()):
            checkpoint = trainer.save_checkpoint(Path(spec["job_dir"]) / "checkpoints" / "paused")
            reporter.emit("paused", path=str(checkpoint), step=trainer.state.step)
        return
    if not world.is_main:
        return
    final = Path(spec["adapter_dir"])
    shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(result.adapter_dir, final)
    if result.status == "early_stopped":
        reporter.emit("message", level="info",
                      message=f"stopped early after epoch {result.epochs_completed}; kept the weights of epoch {result.best_epoch}")
    reporter.emit("completed", adapter_path=str(final), trained_tokens=result.trained_tokens, metrics=result.metrics)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.training.job_process", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, help="read the job spec (JSON) from this file instead of stdin")
    return parser.parse_args()


def main() -> int:
    _die_with_parent()
    reporter = Reporter(os.fdopen(os.dup(1), "w", buffering=1))
    os.dup2(2, 1)  # from here on, anything printed goes to the job's log, not into the report stream
    cancel = threading.Event()
    pause = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    signal.signal(signal.SIGUSR1, lambda *_: (pause.set(), cancel.set()))
    arguments = _arguments()
    if arguments.spec:
        spec = json.loads(arguments.spec.read_text(encoding="utf-8"))
    else:
        spec = json.loads(sys.stdin.readline())
    # The runner hands the one teacher key a distillation job names through the environment; taken
    # out of it here so nothing this process starts inherits it.
    teacher_api_key = os.environ.pop(TEACHER_API_KEY_ENV, "")
    # Launched by `accelerate launch` or `torchrun` as several processes: each trains its share.
    world = join_world()
    if not world.is_main:  # one report per job: the first process's
        reporter = Reporter(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    try:
        run(spec, reporter, cancel, pause, teacher_api_key, world)
    except TuneloopError as error:
        reporter.emit("failed", code=error.code or "training_failed", message=error.message)
        return 1
    except Exception as error:
        traceback.print_exc()
        reporter.emit("failed", code="training_error", message=f"{type(error).__name__}: {error}")
        return 1
    finally:
        leave_world(world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
