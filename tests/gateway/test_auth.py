"""API keys: bootstrap once, stored hashed, checked per request (SQLite and PostgreSQL)."""

import pytest
import sqlalchemy as sa

from gateway import store
from gateway.app import MIGRATIONS
from gateway.auth import KeyRing, bearer_key, hash_key
from services.shared.db import Database
from services.shared.errors import Unauthenticated


@pytest.fixture
async def db(database_url):
    database = Database(database_url, service="gateway", migrations=MIGRATIONS)
    database.migrate()
    yield database
    await database.close()


async def _stored_hashes(db):
    async with db.transaction() as session:
        return [row.key_hash for row in await session.execute(sa.select(store.api_keys.c.key_hash))]


async def test_a_key_is_generated_once_and_only_its_hash_is_stored(db):
    keys = KeyRing(db)
    generated = await keys.bootstrap(None)
    assert generated and generated.startswith("tl-") and len(generated) > 40
    assert await keys.bootstrap(None) is None  # the next start does not make another
    assert await _stored_hashes(db) == [hash_key(generated)]
    assert await keys.tenant_for(generated) == "default"
    with pytest.raises(Unauthenticated):
        await keys.tenant_for("tl-guess")


async def test_a_configured_key_is_stored_hashed_and_accepted(db):
    keys = KeyRing(db)
    assert await keys.bootstrap("tl-mine-0123456789") is None
    assert await keys.bootstrap("tl-mine-0123456789") is None  # restarts do not duplicate it
    assert await _stored_hashes(db) == [hash_key("tl-mine-0123456789")]
    assert await keys.tenant_for("tl-mine-0123456789") == "default"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Token abc", "basic abc"])
def test_malformed_authorization_headers_are_refused(header):
    with pytest.raises(Unauthenticated):
        bearer_key(header)


def test_bearer_scheme_is_case_insensitive():
    assert bearer_key("bearer abc") == "abc"
