"""Condemned pack objects: the fence between the gateway's orphan-pack sweep and staging
(``CondemnObjects``; migration 0008; docs/reliability.md, "Orphan packs and replicas").

A gateway writes a pack object, then records its documents (``RecordStaged``). Another
gateway's sweep cannot tell such a pack, still being recorded, from an orphan left by a gateway
that died: both are old enough and no document points into them yet. So the sweep condemns
before it deletes: :meth:`Condemnations.condemn`, in one transaction, returns the keys no live
document points into and records them as condemned; :func:`refuse_condemned`, called by
``RecordStaged`` in its transaction, refuses a backing in a condemned object. Both first take a
transaction-scoped advisory lock per object key (sorted, so they never deadlock), so for each
object either the staging commits first (the sweep then sees it live) or the condemnation does
(the staging is refused and records nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from hevlayer.claimer import validation as v
from hevlayer.claimer.database import Database
from hevlayer.claimer.txn import pipeline_config
from hevlayer.client.naming import object_key_of
from hevlayer.client.types import StagedRecord
from hevlayer.common.errors import FailedPrecondition, InvalidArgument, Violation

CONDEMNED = "PACK_CONDEMNED"
"""ErrorInfo reason of a RecordStaged refused because its pack object was condemned."""

# Transaction-scoped advisory locks on the keys, taken in the order of the sorted array (a
# volatile function in the target list is evaluated after the subquery's ORDER BY).
_LOCK_KEYS = """
SELECT pg_advisory_xact_lock(hashtextextended(k.key, 0))
FROM (SELECT key FROM unnest($1::text[]) AS u(key) ORDER BY key) AS k
"""


async def _lock(conn: asyncpg.Connection, keys: Sequence[str]) -> None:
    if keys:
        await conn.execute(_LOCK_KEYS, sorted(set(keys)))


async def refuse_condemned(
    conn: asyncpg.Connection, pipeline_id: str, records: Sequence[StagedRecord]
) -> None:
    """In RecordStaged's transaction, before it counts documents onto their objects: lock the
    records' objects and refuse (FAILED_PRECONDITION, reason PACK_CONDEMNED, naming
    ``records[i].backing``) the first record whose object was condemned."""
    keys = {object_key_of(r.backing) for r in records if r.backing}
    if not keys:
        return
    await _lock(conn, sorted(keys))
    rows = await conn.fetch(
        "SELECT object_key FROM condemned_objects WHERE pipeline_id = $1 AND object_key = ANY($2::text[])",
        pipeline_id,
        sorted(keys),
    )
    condemned = {r[0] for r in rows}
    for i, record in enumerate(records):
        key = object_key_of(record.backing) if record.backing else ""
        if key in condemned:
            raise FailedPrecondition(
                f"pack object {key} was swept as an orphan before its documents were recorded "
                "(the staging took longer than GATEWAY_PACK_ORPHAN_AGE_SECONDS); nothing was "
                "recorded: stage the documents again",
                violations=[Violation(f"records[{i}].backing", "names a condemned pack object")],
                reason=CONDEMNED,
                metadata={"object_key": key},
            )


class Condemnations:
    """CondemnObjects on top of PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def condemn(self, pipeline_id: str, object_keys: Sequence[str]) -> list[str]:
        """Of ``object_keys``, those no live document points into, in request order (each once),
        recorded as condemned; NOT_FOUND if the pipeline does not exist, INVALID_ARGUMENT naming
        ``object_keys[i]``."""
        v.batch_size(len(object_keys), "object_keys")
        for i, key in enumerate(object_keys):
            if not key:
                raise InvalidArgument.field(f"object_keys[{i}]", "must not be empty")
            v.max_bytes(key, v.MAX_BACKING_BYTES, f"object_keys[{i}]")
            if "\x00" in key:
                raise InvalidArgument.field(f"object_keys[{i}]", "must not contain NUL")
        wanted = list(dict.fromkeys(object_keys))
        live_sql = """SELECT object_key FROM backing_objects
                      WHERE pipeline_id = $1 AND object_key = ANY($2::text[]) AND documents > 0"""
        async with self._db.transaction() as conn:
            cfg = await pipeline_config(conn, pipeline_id)
            # Most keys a sweep sends are live: only the others are locked and checked again.
            live = {r[0] for r in await conn.fetch(live_sql, cfg.id, wanted)}
            candidates = sorted(key for key in wanted if key not in live)
            if not candidates:
                return []
            await _lock(conn, candidates)
            live |= {r[0] for r in await conn.fetch(live_sql, cfg.id, candidates)}
            doomed = [key for key in wanted if key not in live]
            await conn.execute(
                """INSERT INTO condemned_objects (pipeline_id, object_key)
                   SELECT $1, key FROM unnest($2::text[]) AS u(key) ORDER BY key
                   ON CONFLICT DO NOTHING""",
                cfg.id,
                sorted(doomed),
            )
        return doomed
