"""Fan-out of per-pipeline notifications from PostgreSQL LISTEN/NOTIFY.

One dedicated connection listens on a channel whose payload is a pipeline id:
``hevlayer_status`` (counter triggers notify it) for ``WatchPipelineStatus``,
``hevlayer_document_changes`` (the change log's triggers) for ``WatchChanges``
(:mod:`hevlayer.claimer.changes`). Each watcher waits on a per-pipeline
:class:`asyncio.Condition`-like generation counter, so any number of streams
cost one connection per channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

import asyncpg

log = logging.getLogger("hevlayer.claimer.status")
CHANNEL = "hevlayer_status"


class StatusNotifier:
    """Per-pipeline change generations fed by LISTEN/NOTIFY."""

    def __init__(self, dsn: str, channel: str = CHANNEL) -> None:
        self._dsn = dsn
        self._channel = channel
        self._conn: asyncpg.Connection | None = None
        self._generation: dict[str, int] = defaultdict(int)
        self._events: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._generation[payload] += 1
        event = self._events.get(payload)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        """Wake every watcher (after a reconnect, or when the server stops)."""
        for key in list(self._events):
            self._generation[key] += 1
            self._events[key].set()

    async def start(self) -> None:
        """Keep a listening connection open, reconnecting after failures."""
        self._task = asyncio.create_task(self._run(), name=f"listener-{self._channel}")

    async def _run(self) -> None:
        delay = 0.2
        while not self._closed.is_set():
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
                terminated = asyncio.Event()
                conn.add_termination_listener(lambda _c, ev=terminated: ev.set())
                await conn.add_listener(self._channel, self._on_notify)
                self._conn = conn
                delay = 0.2
                # Changes may have been missed while disconnected.
                self.wake_all()
                closed = asyncio.create_task(self._closed.wait())
                lost = asyncio.create_task(terminated.wait())
                await asyncio.wait({closed, lost}, return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
                lost.cancel()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("listener of %s disconnected (%s); retrying in %.1fs", self._channel, exc, delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), delay)
                delay = min(delay * 2, 5.0)
            finally:
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.close(timeout=2)
                    self._conn = None

    async def close(self) -> None:
        """Stop listening and wake every watcher."""
        self._closed.set()
        self.wake_all()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def generation(self, pipeline_id: str) -> int:
        """A number that changes whenever the pipeline's counts may have changed."""
        return self._generation[pipeline_id]

    async def wait_change(self, pipeline_id: str, seen: int, timeout: float) -> int:
        """Wait until the generation differs from ``seen`` (or ``timeout``); return it."""
        event = self._events.setdefault(pipeline_id, asyncio.Event())
        while self._generation[pipeline_id] == seen and not self._closed.is_set():
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except TimeoutError:
                break
        return self._generation[pipeline_id]
