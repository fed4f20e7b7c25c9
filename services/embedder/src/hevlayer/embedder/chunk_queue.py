"""The bounded in-memory chunk queue between the readers and the one embed consumer.

Its ``maxsize`` derives from the batch size (``batch_size x batches``), so
readers block on :meth:`ChunkQueue.put` as soon as the consumer falls
behind: the chunks held in memory are bounded whatever the backlog of
pending documents, and the backpressure travels upstream through the
ReadChunks stream (gRPC flow control) to the gateway. The queue is not
durable and need not be: a crash loses only chunks whose documents are
still leased, and those leases expire and the documents are claimed again.
"""

from __future__ import annotations

import asyncio

from hevlayer.embedder.inflight import QueueItem


class ChunkQueue:
    """An ``asyncio.Queue`` of chunks and end-of-document markers with a fixed bound."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("a chunk queue needs maxsize >= 1")
        self._queue: asyncio.Queue[QueueItem] = asyncio.Queue(maxsize)

    @classmethod
    def for_batch_size(cls, batch_size: int, batches: int = 2) -> ChunkQueue:
        """A queue holding ``batches`` full batches."""
        return cls(max(1, batch_size) * max(1, batches))

    @property
    def maxsize(self) -> int:
        return self._queue.maxsize

    def qsize(self) -> int:
        return self._queue.qsize()

    def empty(self) -> bool:
        return self._queue.empty()

    async def put(self, item: QueueItem) -> None:
        """Add ``item``, waiting while the queue is full (backpressure)."""
        await self._queue.put(item)

    def get_nowait(self) -> QueueItem | None:
        """The next item, or None if the queue is empty."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def get(self) -> QueueItem:
        """The next item, waiting for one."""
        return await self._queue.get()

    async def get_within(self, timeout: float) -> QueueItem | None:
        """The next item, or None once ``timeout`` seconds pass without one.

        Unlike ``asyncio.wait_for(queue.get(), ...)`` on Python 3.11, an item
        that arrives as the timeout fires is returned, never lost.
        """
        item = self.get_nowait()
        if item is not None:
            return item
        getter = asyncio.ensure_future(self._queue.get())
        try:
            done, _ = await asyncio.wait({getter}, timeout=timeout)
        except BaseException:
            getter.cancel()
            raise
        if getter in done:
            return getter.result()
        return await take_or_cancel(getter)


async def take_or_cancel(getter: asyncio.Future[QueueItem]) -> QueueItem | None:
    """Cancel a pending ``queue.get()`` task; its item if it had already got one."""
    getter.cancel()
    try:
        return await getter
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        return None
