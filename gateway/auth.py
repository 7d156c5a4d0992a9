"""API keys: `Authorization: Bearer <key>` to a tenant.

Keys are 32 random bytes, so a plain SHA-256 is the right hash (as GitHub and Stripe do for
tokens): a slow password hash would buy nothing against a key that cannot be guessed, and would
cost every request.
"""

from __future__ import annotations

import hashlib
import secrets

from gateway import store
from services.shared.db import Database
from services.shared.errors import Unauthenticated
from services.shared.rpc import DEFAULT_TENANT

KEY_PREFIX = "tl-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def bearer_key(authorization: str | None) -> str:
    """The key in an `Authorization: Bearer` header, or Unauthenticated saying what is wrong."""
    if not authorization:
        raise Unauthenticated(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthenticated("The Authorization header must be 'Bearer YOUR_KEY'.", code="invalid_api_key")
    return key.strip()


class KeyRing:
    """Checks keys against the stored hashes, remembering the ones already seen."""

    def __init__(self, db: Database):
        self._db = db
        self._known: dict[str, str] = {}

    async def bootstrap(self, configured_key: str | None) -> str | None:
        """Make sure an admin key exists; returns a newly generated key, which the caller prints once."""
        async with self._db.transaction() as session:
            if configured_key:
                key_hash = hash_key(configured_key)
                if await store.tenant_for_hash(session, key_hash) is None:
                    await store.add_key(session, key_hash, DEFAULT_TENANT, "bootstrap")
                return None
            if await store.count_keys(session) > 0:
                return None
            generated = new_key()
            await store.add_key(session, hash_key(generated), DEFAULT_TENANT, "bootstrap")
            return generated

    async def tenant_for(self, key: str) -> str:
        key_hash = hash_key(key)
        tenant = self._known.get(key_hash)
        if tenant is None:
            async with self._db.transaction() as session:
                tenant = await store.tenant_for_hash(session, key_hash)
            if tenant is None:
                raise Unauthenticated(
                    f"Incorrect API key provided: {key[:5]}****{key[-4:] if len(key) > 12 else ''}.",
                    code="invalid_api_key",
                )
            self._known[key_hash] = tenant
        return tenant
