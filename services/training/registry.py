"""The model registry: the base models from the model store and a tenant's fine-tuned versions."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from services.shared.db import Database
from services.shared.errors import InvalidArgument, NotFound
from services.shared.models import ModelStore
from services.training import store


@dataclass(frozen=True)
class RegisteredModel:
    id: str
    created: int
    owned_by: str
    kind: str
    base_model: str
    available: bool
    unavailable_reason: str
    lineage: dict | None = None
    path: str = ""
    provider_model: str = ""


class ModelRegistry:
    def __init__(self, models: ModelStore, db: Database, adapters_dir: Path):
        self._models = models
        self._db = db
        self._adapters_dir = adapters_dir

    def _base(self, model_id: str) -> RegisteredModel:
        status = self._models.status(model_id)
        return RegisteredModel(
            id=model_id,
            created=status.created,
            owned_by="tuneloop",
            kind="base",
            base_model="",
            available=status.available,
            unavailable_reason=status.reason,
        )

    @staticmethod
    def _fine_tuned(row) -> RegisteredModel:
        lineage = json.loads(row.lineage)
        # A model trained on a provider lives there (lineage.provider_model); it has no adapter here.
        available = bool(lineage.get("provider_model")) or (bool(row.path) and Path(row.path).is_dir())
        return RegisteredModel(
            id=row.id,
            created=row.created_at,
            owned_by=row.tenant,
            kind="fine-tuned",
            base_model=row.base_model,
            available=available,
            unavailable_reason="" if available else f"adapter files missing at {row.path}",
            lineage=lineage,
            path=row.path or "",
            provider_model=lineage.get("provider_model", ""),
        )

    async def list_models(self, tenant: str) -> list[RegisteredModel]:
        base = await asyncio.to_thread(lambda: [self._base(m) for m in self._models.base_model_ids()])
        async with self._db.transaction() as session:
            rows = await store.tenant_models(session, tenant)
        return base + [self._fine_tuned(row) for row in rows]

    async def get_model(self, tenant: str, model_id: str) -> RegisteredModel:
        if model_id in self._models.base_model_ids():
            return await asyncio.to_thread(self._base, model_id)
        async with self._db.transaction() as session:
            row = await store.find_model(session, tenant, model_id)
        if row is None:
            raise NotFound(f"The model '{model_id}' does not exist", param="model", code="model_not_found")
        return self._fine_tuned(row)

    async def delete_model(self, tenant: str, model_id: str) -> None:
        if model_id in self._models.base_model_ids():
            raise InvalidArgument(f"'{model_id}' is a base model and cannot be deleted", param="model")
        async with self._db.transaction() as session:
            row = await store.find_model(session, tenant, model_id)
            if row is None:
                raise NotFound(f"The model '{model_id}' does not exist", param="model", code="model_not_found")
            await store.delete_model(session, model_id)
        path = Path(row.path).resolve()
        if path.is_relative_to(self._adapters_dir.resolve()):  # never delete outside the adapter store
            await asyncio.to_thread(shutil.rmtree, path, True)
