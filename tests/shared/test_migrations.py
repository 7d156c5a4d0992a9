"""Every part's Alembic history builds exactly the tables its store declares, on SQLite and PostgreSQL."""

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gateway import store as gateway_store
from gateway.app import MIGRATIONS as GATEWAY_MIGRATIONS
from services.dataprep import store as dataprep_store
from services.dataprep.server import DEFINITION as DATAPREP
from services.evaluation import store as evaluation_store
from services.evaluation.server import DEFINITION as EVALUATION
from services.feedback import store as feedback_store
from services.feedback.server import DEFINITION as FEEDBACK
from services.inference import store as inference_store
from services.inference.server import DEFINITION as INFERENCE
from services.shared.db import Database
from services.training import store as training_store
from services.training.server import DEFINITION as TRAINING

PARTS = {
    "dataprep": (DATAPREP.migrations, dataprep_store.metadata),
    "training": (TRAINING.migrations, training_store.metadata),
    "evaluation": (EVALUATION.migrations, evaluation_store.metadata),
    "feedback": (FEEDBACK.migrations, feedback_store.metadata),
    "inference": (INFERENCE.migrations, inference_store.metadata),
    "gateway": (GATEWAY_MIGRATIONS, gateway_store.metadata),
}


def _sync_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.mark.parametrize("part", PARTS)
def test_migrations_match_the_declared_tables(database_url, part):
    migrations, metadata = PARTS[part]
    Database(database_url, service=part, migrations=migrations).migrate()
    Database(database_url, service=part, migrations=migrations).migrate()  # a restart migrates again: no-op
    engine = sa.create_engine(_sync_url(database_url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": f"{part}_alembic_version"})
            ours = [d for d in compare_metadata(context, metadata) if _table_of(d).startswith(f"{part}_")]
            assert ours == []
    finally:
        engine.dispose()


def test_all_parts_share_one_database_without_touching_each_other(database_url):
    for part, (migrations, _) in PARTS.items():
        Database(database_url, service=part, migrations=migrations).migrate()
    engine = sa.create_engine(_sync_url(database_url))
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    for part, (_, metadata) in PARTS.items():
        assert set(metadata.tables) <= tables
        assert f"{part}_alembic_version" in tables
        assert all(name.startswith(f"{part}_") for name in metadata.tables)


def _table_of(diff) -> str:
    item = diff[0] if isinstance(diff, list) else diff
    for part in item[1:]:
        name = getattr(part, "name", None) if not isinstance(part, str) else part
        table = getattr(part, "table", None)
        if table is not None:
            return table.name
        if isinstance(name, str):
            return name
    return ""
