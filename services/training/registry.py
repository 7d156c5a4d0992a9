"""The model registry: which models a tenant can use.

Base models come from the model store; fine-tuned versions (with their lineage) join them when
the training jobs land.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.shared.errors import NotFound
from services.shared.models import ModelStore


@dataclass(frozen=True)
class RegisteredModel:
    id: str
    created: int
    owned_by: str
    kind: str
    base_model: str
    available: bool
    unavailable_reason: str


class ModelRegistry:
    def __init__(self, store: ModelStore):
        self._store = store

    def _base(self, model_id: str) -> RegisteredModel:
        status = self._store.status(model_id)
        return RegisteredModel(
            id=model_id,
            created=status.created,
            owned_by="tuneloop",
            kind="base",
            base_model="",
            available=status.available,
            unavailable_reason=status.reason,
        )

    def list_models(self, tenant: str) -> list[RegisteredModel]:
        return [self._base(model_id) for model_id in self._store.base_model_ids()]

    def get_model(self, tenant: str, model_id: str) -> RegisteredModel:
        if model_id in self._store.base_model_ids():
            return self._base(model_id)
        raise NotFound(
            f"The model '{model_id}' does not exist", param="model", code="model_not_found"
        )
