"""Warm start: a job whose `model` is one of the tenant's fine-tuned models (as OpenAI allows)
trains from that model's weights instead of from its base model alone.

Only a model trained here can be a parent: its files are what training starts from. The job trains
on the parent's root base model, so the model it produces is `ft:<root-base>:<tenant>:<suffix>:<job>`
and its lineage names the parent.

- A LoRA parent: the new adapter takes the parent's shape (r, alpha, dropout, target modules: an
  adapter's weights only fit an adapter of their own shape, so the request's lora_* give way) and
  starts from its weights, with any LoRA method (supervised, qlora, dpo, distillation).
- A "full" parent (a whole model): method "full" only, starting from every weight of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from services.shared.errors import FailedPrecondition, InvalidArgument
from services.shared.models import ADAPTER_MANIFEST
from services.training.jobs import JobSpec

KINDS = ("lora", "full")


@dataclass(frozen=True)
class Parent:
    """A fine-tuned model a job starts from: its id, root base model, kind and files."""

    id: str
    base_model: str
    kind: str
    path: Path
    # A LoRA parent's adapter shape, as JobSpec fields: lora_r, lora_alpha, lora_dropout, target_modules.
    lora: dict[str, Any] = field(default_factory=dict)

    def init_from(self) -> dict[str, str]:
        """What the job process starts from (the job spec's `init_from`)."""
        return {"model": self.id, "path": str(self.path), "kind": self.kind}


def parent_of(row) -> Parent:
    """A registry row (store.models) as a parent, or why it cannot be one (param "model")."""
    model_id, lineage = row.id, json.loads(row.lineage)
    if lineage.get("provider") or lineage.get("provider_model"):
        raise InvalidArgument(
            f"The model '{model_id}' was trained on the provider '{lineage.get('provider') or 'openai'}' and lives "
            "there; only a model trained here can be fine-tuned further here", param="model")
    directory = Path(row.path)
    try:
        manifest = json.loads((directory / ADAPTER_MANIFEST).read_text(encoding="utf-8"))
        kind = manifest.get("kind", "lora")
        lora = _lora_shape(directory, manifest) if kind == "lora" else {}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FailedPrecondition(f"The model '{model_id}' cannot be fine-tuned further: its files at {directory} "
                                 f"cannot be read ({error})", param="model", code="model_unavailable") from None
    if kind not in KINDS:
        raise FailedPrecondition(f"The model '{model_id}' is of kind {kind!r}, which cannot be fine-tuned further",
                                 param="model", code="model_unavailable")
    return Parent(id=model_id, base_model=row.base_model, kind=kind, path=directory, lora=lora)


def _lora_shape(directory: Path, manifest: dict) -> dict[str, Any]:
    """The adapter's shape, from the settings it was trained with, else from peft's own config."""
    trained = manifest.get("train_config")
    if trained:
        return {"lora_r": int(trained["lora_r"]), "lora_alpha": trained["lora_alpha"],
                "lora_dropout": float(trained["lora_dropout"]), "target_modules": tuple(trained["target_modules"])}
    peft = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
    return {"lora_r": int(peft["r"]), "lora_alpha": peft["lora_alpha"], "lora_dropout": float(peft["lora_dropout"]),
            "target_modules": tuple(sorted(peft["target_modules"]))}


def check_method(parent: Parent, method: str) -> None:
    if parent.kind == "full" and method != "full":
        raise InvalidArgument(f"'{parent.id}' is a fully fine-tuned model: continue it with method.type 'full', "
                              f"not {method!r}", param="method.type")
    if parent.kind == "lora" and method == "full":
        raise InvalidArgument(f"'{parent.id}' is a LoRA adapter: continue it with a LoRA method (supervised, qlora, "
                              "dpo, distillation), not 'full'", param="method.type")


def warm_started(spec: JobSpec, parent: Parent) -> tuple[JobSpec, str]:
    """The job's spec as it trains from `parent`, and the job event that says what that changed."""
    if parent.kind == "full":
        return spec, f"Warm start: training starts from the weights of {parent.id}."
    shape = parent.lora
    requested = {name: getattr(spec, name) for name in ("lora_r", "lora_alpha", "lora_dropout")}
    overridden = [f"{name}={value}" for name, value in requested.items() if value != shape[name]]
    message = (f"Warm start: the adapter starts from the weights of {parent.id}, with its LoRA settings "
               f"(r={shape['lora_r']}, alpha={shape['lora_alpha']}, dropout={shape['lora_dropout']}, target modules "
               f"{', '.join(shape['target_modules'])})")
    message += f"; they override the request's {', '.join(overridden)}." if overridden else "."
    return replace(spec, **shape), message
