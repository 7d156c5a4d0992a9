"""Fixtures of the event-bus and outbox tests: a database with the test tables, and a bus."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.shared.bus import EventBus
from services.shared.db import Database
from services.shared.settings import Settings
from tests.shared.consumer_process import PREFIX, STREAM, build_tables

METADATA, TABLES, EFFECTS = build_tables()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, service=PREFIX)
    async with database.engine.begin() as connection:
        await connection.run_sync(METADATA.create_all)
    yield database
    await database.close()


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[EventBus]:
    event_bus = await EventBus.connect(Settings(nats_url=nats_url, stream_name=STREAM), name="test")
    await event_bus.ensure_stream()
    yield event_bus
    await event_bus.close()
