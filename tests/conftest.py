"""Fixtures every suite shares: a real nats-server per test and real databases (SQLite, PostgreSQL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.fixtures.stack import stack  # noqa: F401
from tests.fixtures.tiny_model import learning_model_dir, learning_store, tiny_model_dir, tiny_settings  # noqa: F401
from tuneloop.nats_server import NatsServer

POSTGRES_ENV = "TUNELOOP_TEST_POSTGRES_URL"

# The inference service compiles its decoding steps by default, a build of a minute or two in the
# background of the first request to a model. Here (and in the stacks tests start, which inherit the
# environment) every model is served eagerly unless a test asks otherwise:
# tests/inference/test_compiled_decode.py builds its packages on purpose.
os.environ.setdefault("TUNELOOP_COMPILED_DECODE_CAPACITY", "0")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream on a free port, as a new machine would start it."""
    server = NatsServer(store_dir=tmp_path / "jetstream").start()
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


def _postgres_database() -> Iterator[str]:
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        pytest.skip(f"PostgreSQL tests need {POSTGRES_ENV} (for example postgresql://postgres@127.0.0.1:5432/test)")
    name = f"tl_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test against a fresh SQLite file and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        yield from _postgres_database()
