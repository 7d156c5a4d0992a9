"""A fine-tuned model as the registry hands it over: its files, checked before anything is served.

The trainer writes, beside a LoRA adapter (or a whole model, for method "full"), the tokenizer with
the chat template it trained with and `tuneloop-adapter.json`, which records that template's
sha256. Serving renders prompts with that same template: a model fine-tuned on one prompt format
answers worse in another. So the template found with the files must be the one the manifest
names, or the model is refused with the reason; and the adapter's own tokenizer, not the base
model's, renders its prompts, so a base model whose template changed since cannot change them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.shared.errors import FailedPrecondition
from services.shared.models import ADAPTER_MANIFEST


@dataclass(frozen=True)
class FineTuned:
    model_id: str
    base_model: str
    path: Path
    kind: Literal["lora", "full"]
    chat_template_sha256: str


def read_fine_tuned(model_id: str, base_model: str, path: str) -> FineTuned:
    """The fine-tuned model at `path` (from the registry), after checking its manifest."""
    directory = Path(path)
    try:
        manifest = json.loads((directory / ADAPTER_MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise FailedPrecondition(f"{model_id}: its files at {directory} have no readable {ADAPTER_MANIFEST}: {error}",
                                 param="model", code="model_not_available") from None
    kind = manifest.get("kind")
    if kind not in ("lora", "full"):
        raise FailedPrecondition(f"{model_id}: unknown kind {kind!r} in {ADAPTER_MANIFEST}", param="model",
                                 code="model_not_available")
    if manifest.get("base_model") != base_model:
        raise FailedPrecondition(f"{model_id} was trained on {manifest.get('base_model')!r}, not {base_model!r}",
                                 param="model", code="model_not_available")
    return FineTuned(model_id, base_model, directory, kind, str(manifest.get("chat_template_sha256", "")))


def check_chat_template(model: FineTuned, template: str | None) -> None:
    """Refuse to serve `model` with a chat template other than the one it was trained with."""
    found = hashlib.sha256(template.encode()).hexdigest() if template else ""
    if found != model.chat_template_sha256:
        raise FailedPrecondition(
            f"{model.model_id}: the chat template stored with it (sha256 {found[:12] or 'none'}) is not the one it "
            f"was trained with (sha256 {model.chat_template_sha256[:12]}); its files were changed after training",
            param="model",
            code="chat_template_mismatch",
        )
