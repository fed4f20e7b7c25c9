"""API tokens in PostgreSQL (table ``api_tokens``): create, list, revoke, verify, seed.

Only the SHA-256 of a token is stored; the secret exists in the answer of
:meth:`TokenStore.create` and nowhere else. See :mod:`hevlayer.common.auth`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from hevlayer.claimer.database import Database
from hevlayer.claimer.validation import validate_pipeline_id
from hevlayer.common.auth import ROLES, SeedToken, generate_token
from hevlayer.common.errors import InvalidArgument, NotFound

log = logging.getLogger("hevlayer.claimer.tokens")

MAX_NAME = 200
MAX_PIPELINES = 1000

_COLUMNS = "id, name, role, all_pipelines, pipeline_ids, create_time, revoke_time"


@dataclass(frozen=True)
class TokenRecord:
    """A stored token, without its hash."""

    id: str
    name: str
    role: str
    all_pipelines: bool
    pipeline_ids: tuple[str, ...]
    create_time: datetime
    revoke_time: datetime | None


def _record(row: asyncpg.Record) -> TokenRecord:
    return TokenRecord(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        all_pipelines=row["all_pipelines"],
        pipeline_ids=tuple(row["pipeline_ids"]),
        create_time=row["create_time"],
        revoke_time=row["revoke_time"],
    )


def validate_token_request(name: str, role: str, all_pipelines: bool, pipeline_ids: Sequence[str]) -> None:
    """INVALID_ARGUMENT naming the field if a new token's fields are invalid."""
    if not 1 <= len(name) <= MAX_NAME:
        raise InvalidArgument.field("name", f"must be 1 to {MAX_NAME} characters")
    if role not in ROLES:
        raise InvalidArgument.field("role", f"must be one of {', '.join(ROLES)}")
    if all_pipelines == bool(pipeline_ids):
        raise InvalidArgument.field("pipeline_ids", "give either all_pipelines or a list of pipeline ids")
    if len(pipeline_ids) > MAX_PIPELINES:
        raise InvalidArgument.field("pipeline_ids", f"at most {MAX_PIPELINES} pipelines")
    for index, pipeline_id in enumerate(pipeline_ids):
        validate_pipeline_id(pipeline_id, f"pipeline_ids[{index}]")


class TokenStore:
    """The ``api_tokens`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, name: str, role: str, all_pipelines: bool, pipeline_ids: Sequence[str]
    ) -> tuple[TokenRecord, str]:
        """A new token and its secret (which is not stored)."""
        validate_token_request(name, role, all_pipelines, pipeline_ids)
        token = generate_token()
        async with self._db.acquire() as conn:
            row = await conn.fetchrow(
                f"""INSERT INTO api_tokens (id, token_hash, name, role, all_pipelines, pipeline_ids)
                    VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}""",
                token.id,
                token.hash,
                name,
                role,
                all_pipelines,
                sorted(set(pipeline_ids)),
            )
        record = _record(row)
        log.info("created token %s (%s, role %s)", record.id, record.name, record.role)
        return record, token.secret

    async def list(self, include_revoked: bool) -> list[TokenRecord]:
        """Tokens oldest first; revoked ones only if asked."""
        where = "" if include_revoked else "WHERE revoke_time IS NULL"
        async with self._db.acquire() as conn:
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM api_tokens {where} ORDER BY create_time, id")
        return [_record(r) for r in rows]

    async def revoke(self, token_id: str) -> TokenRecord:
        """Revoke a token (NOT_FOUND if no token has this id); revoking twice keeps the first time."""
        if not token_id:
            raise InvalidArgument.field("token_id", "is required")
        if "\x00" in token_id:  # PostgreSQL text cannot hold NUL, so no token has such an id
            raise NotFound(f"token_id: no token {token_id!r}")
        async with self._db.acquire() as conn:
            row = await conn.fetchrow(
                f"""UPDATE api_tokens SET revoke_time = coalesce(revoke_time, now())
                    WHERE id = $1 RETURNING {_COLUMNS}""",
                token_id,
            )
        if row is None:
            raise NotFound(f"token_id: no token {token_id!r}")
        log.info("revoked token %s", token_id)
        return _record(row)

    async def verify(self, token_hash: bytes) -> TokenRecord | None:
        """The valid token with this hash; None if unknown or revoked."""
        if len(token_hash) != 32:
            raise InvalidArgument.field("token_hash", "must be 32 bytes (SHA-256)")
        async with self._db.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM api_tokens WHERE token_hash = $1 AND revoke_time IS NULL",
                token_hash,
            )
        return None if row is None else _record(row)

    async def seed(self, tokens: Sequence[SeedToken]) -> int:
        """Insert tokens that are not there yet (by id or hash); return how many were added."""
        added = 0
        async with self._db.transaction() as conn:
            for token in tokens:
                status = await conn.execute(
                    """INSERT INTO api_tokens (id, token_hash, name, role, all_pipelines, pipeline_ids)
                       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
                    token.id,
                    token.hash,
                    token.name,
                    token.role,
                    token.all_pipelines,
                    list(token.pipeline_ids),
                )
                added += int(status.rsplit(" ", 1)[-1])
        return added
