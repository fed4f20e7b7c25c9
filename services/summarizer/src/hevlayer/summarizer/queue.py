"""The SummaryQueue: per-job depth heaps fanned round-robin into one ready queue.

Each job has its own heap of ready directories keyed on negative depth, so a
job's deepest ready directory pops first. Jobs with ready work sit in a
rotation; :meth:`SummaryQueue.pop` takes one directory from the job at the
head and moves that job to the back. So while several jobs have ready
directories they are served in turn: a job with ready work waits for at most
one pop of every other active job, and one large deep job cannot starve
another job's shallow tree.

:class:`SummaryQueue` is synchronous and transport free (the property tests
drive it directly). :class:`Dispatcher` is the asyncio part: it moves popped
directories into one bounded ``ready`` queue that the fold workers read.
The bound keeps the dispatcher from draining one job into ``ready`` before
another job's directories arrive, which is what makes the round robin matter.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class ReadyDir:
    """A directory ready to fold."""

    job_id: str
    path: str
    depth: int


class SummaryQueue:
    """Per-job heaps on negative depth and a round-robin rotation over jobs."""

    def __init__(self) -> None:
        self._heaps: dict[str, list[tuple[int, str]]] = {}
        self._rotation: deque[str] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def pending(self, job_id: str) -> int:
        """Ready directories of ``job_id`` not popped yet."""
        return len(self._heaps.get(job_id, ()))

    def jobs(self) -> list[str]:
        """Jobs with ready directories, in the order they will be served."""
        return list(self._rotation)

    def push(self, job_id: str, path: str, depth: int) -> None:
        """Add a ready directory; a job that had none joins the back of the rotation."""
        heap = self._heaps.get(job_id)
        if heap is None:
            heap = self._heaps[job_id] = []
            self._rotation.append(job_id)
        heapq.heappush(heap, (-depth, path))
        self._size += 1

    def pop(self) -> ReadyDir | None:
        """The deepest ready directory of the job at the head of the rotation."""
        if not self._rotation:
            return None
        job_id = self._rotation.popleft()
        heap = self._heaps[job_id]
        negative_depth, path = heapq.heappop(heap)
        self._size -= 1
        if heap:
            self._rotation.append(job_id)
        else:
            del self._heaps[job_id]
        return ReadyDir(job_id, path, -negative_depth)

    def drop(self, job_id: str) -> int:
        """Forget ``job_id``'s ready directories (a cancelled job); how many there were."""
        heap = self._heaps.pop(job_id, None)
        if heap is None:
            return 0
        self._rotation.remove(job_id)
        self._size -= len(heap)
        return len(heap)


class Dispatcher:
    """Fans a :class:`SummaryQueue` into one bounded ``ready`` queue.

    ``run`` is the dispatcher task. Directories of a job dropped after they
    were moved to ``ready`` still come out of :meth:`get`; the consumer skips
    them (it checks the job's state).
    """

    def __init__(self, capacity: int) -> None:
        self.queue = SummaryQueue()
        self.ready: asyncio.Queue[ReadyDir] = asyncio.Queue(max(1, capacity))
        self._wake = asyncio.Event()

    def push(self, job_id: str, path: str, depth: int) -> None:
        """Add a ready directory and wake the dispatcher."""
        self.queue.push(job_id, path, depth)
        self._wake.set()

    def drop(self, job_id: str) -> int:
        """Forget a job's directories that have not reached ``ready`` yet."""
        return self.queue.drop(job_id)

    async def get(self) -> ReadyDir:
        """The next directory to fold."""
        return await self.ready.get()

    async def run(self) -> None:
        """Move directories from the heaps to ``ready`` until cancelled."""
        while True:
            item = self.queue.pop()
            if item is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self.ready.put(item)
