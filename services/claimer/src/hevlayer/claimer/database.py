"""PostgreSQL access: the pool, versioned migrations, and the mapping of
connection failures to UNAVAILABLE."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from importlib import resources

import asyncpg

from hevlayer.common.errors import Unavailable

log = logging.getLogger("hevlayer.claimer.database")

# Key of the advisory lock that serializes migrations across claimer replicas.
MIGRATION_LOCK_KEY = 0x68657631  # "hev1"
# Plan every statement for its actual parameters and the table's current
# size. With cached generic plans, a claim statement planned while a table
# was empty kept a plan that filtered the whole table against the id array
# once the table had grown (seconds per batch); planning costs ~0.2 ms.
SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

# Exceptions meaning "PostgreSQL is unreachable or went away", not "bad query".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped with the claimer, in order."""
    found = []
    for entry in resources.files("hevlayer.claimer.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations under an advisory lock; return the names applied."""
    applied: list[str] = []
    # A migration reports what an operator must know (RAISE WARNING) through the log.
    conn.add_log_listener(_log_server_message)
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            applied.append(name)
            log.info("applied migration %s", name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        conn.remove_log_listener(_log_server_message)
    return applied


def _log_server_message(conn: asyncpg.Connection, message: asyncpg.PostgresLogMessage) -> None:
    """Log a WARNING a migration raised (NOTICEs such as "already exists, skipping" are not news)."""
    if message.severity == "WARNING":
        log.warning("migration: %s", message.message)


async def keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset: nothing beyond asyncpg's own (roll back an open transaction,
    drop listeners). The claimer's pooled connections never change session state
    (no SET, LISTEN, cursors or advisory locks: the status listener and migrations
    use connections of their own), so the default reset query (``RESET ALL``,
    ``UNLISTEN *``, ``CLOSE ALL``, ``pg_advisory_unlock_all()``) would be a round trip
    per call that changes nothing."""


class Database:
    """The claimer's connection pool. ``acquire`` maps connection failures to
    :class:`Unavailable` (with RetryInfo) so callers never see half a batch."""

    def __init__(self, dsn: str, *, min_size: int, max_size: int, timeout: float) -> None:
        self._dsn = dsn
        self._min = min_size
        self._max = max_size
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None

    @property
    def ready(self) -> bool:
        """True once connected and migrated."""
        return self._pool is not None

    async def open(self) -> None:
        """Connect, migrate, and create the pool (raises on failure)."""
        conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=self._min,
            max_size=self._max,
            timeout=self._timeout,
            command_timeout=self._timeout,
            server_settings=SERVER_SETTINGS,
            reset=keep_session,
        )

    async def open_with_retry(self, stopping: asyncio.Event, max_delay: float = 5.0) -> bool:
        """Retry :meth:`open` with backoff until it succeeds or ``stopping`` is set."""
        delay = 0.2
        while not stopping.is_set():
            try:
                await self.open()
                return True
            except Exception as exc:
                # Unreachable server, database not created yet, credentials not
                # provisioned yet: all may heal, so keep trying and stay NOT_SERVING.
                log.warning(
                    "PostgreSQL not usable (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(delay * 2, max_delay)
        return False

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> None:
        """``SELECT 1`` on a pooled connection (the readiness probe); Unavailable when
        PostgreSQL does not answer."""
        async with self.acquire() as conn:
            await conn.fetchval("SELECT 1")

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; UNAVAILABLE if PostgreSQL cannot be reached."""
        if self._pool is None:
            raise Unavailable("PostgreSQL is not reachable yet", retry_after=1.0)
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                yield conn
        except CONNECTION_ERRORS as exc:
            raise Unavailable(f"PostgreSQL is unreachable: {type(exc).__name__}", retry_after=1.0) from exc

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection inside a transaction (rolled back on any error)."""
        async with self.acquire() as conn, conn.transaction():
            yield conn
