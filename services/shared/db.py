"""Database sessions and migrations: SQLAlchemy 2 (async) on SQLite by default, PostgreSQL by URL.

Every service owns its tables, prefixed with its name, and migrates them with its own Alembic
history (`services/<name>/migrations`, version table `<name>_alembic_version`), so five services
can share one PostgreSQL database without touching each other's tables.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


def _driver_urls(url: str) -> tuple[str, str]:
    """The (async, sync) SQLAlchemy URLs for a plain `sqlite:///` or `postgresql://` URL."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return (
            parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False),
            parsed.set(drivername="sqlite").render_as_string(hide_password=False),
        )
    if backend == "postgresql":
        psycopg = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return psycopg, psycopg
    raise ValueError(f"database URL {url!r}: only sqlite and postgresql are supported")


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets readers run beside the one writer; busy_timeout makes a writer wait instead of
    # failing with "database is locked" when the outbox relay and a handler write at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """One service's connection to its database."""

    def __init__(self, url: str, *, service: str, migrations: Path | None = None):
        self.url = url
        self.service = service
        self.migrations = migrations
        async_url, self._sync_url = _driver_urls(url)
        if make_url(url).get_backend_name() == "sqlite":
            database = make_url(url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(async_url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def version_table(self) -> str:
        return f"{self.service}_alembic_version"

    def migrate(self) -> None:
        """Bring the service's tables to the newest migration (safe to run on every start)."""
        if self.migrations is None:
            raise ValueError(f"{self.service}: no migrations directory given")
        sync_engine = sa.create_engine(self._sync_url)
        if sync_engine.dialect.name == "sqlite":
            sa.event.listen(sync_engine, "connect", _sqlite_pragmas)
        try:
            with sync_engine.begin() as connection:
                config = Config()
                config.set_main_option("script_location", str(self.migrations))
                config.attributes["connection"] = connection
                config.attributes["version_table"] = self.version_table
                command.upgrade(config, "head")
        finally:
            sync_engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session whose work commits when the block ends and rolls back if it raises."""
        async with self._sessions() as session, session.begin():
            yield session

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


def run_migrations_env() -> None:
    """The body of every service's Alembic `env.py`: migrate the connection `Database.migrate` passes."""
    from alembic import context

    attributes = context.config.attributes
    context.configure(
        connection=attributes["connection"],
        version_table=attributes["version_table"],
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()
