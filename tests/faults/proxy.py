"""A TCP proxy on loopback that adds delay to, and cuts, the connections it carries.

Put between two services (e.g. the gateway's ``CLAIMER_ADDRESS`` pointed at the proxy, which
forwards to the claimer) to play a slow or partitioned network without namespaces or
``tc netem``. It runs on its own event loop in a thread so that synchronous fixtures can use it.

A cut can fall inside one call, at a point chosen by bytes rather than by a timer: after a byte
count towards the target (:meth:`FaultProxy.cut_after_upload`), right before a request carrying
some marker bytes reaches the target (:meth:`FaultProxy.cut_before`), or after such a request
reached it, with its answer held back until the test cuts (:meth:`FaultProxy.drop_answers_after`).
A marker is any byte string the request's message holds, such as a document id or a worker id:
gRPC messages go over the wire as they are (no compression unless asked for).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from hevlayer.devstack.ports import free_port


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target`` (``host:port``).

    ``delay`` (seconds) is waited before each forwarded chunk, in both directions; ``cut()``
    closes every open connection, and while ``refuse`` is set new connections are closed at once.
    ``cut_after_upload(n)`` arms a cut in the middle of a transfer: once ``n`` more bytes have
    been forwarded towards ``target`` (over all connections), every connection is cut and new ones
    are refused, whatever the timing. ``cut_before(marker)`` and ``drop_answers_after(marker)``
    act on the first bytes towards ``target`` that hold ``marker`` (:attr:`marked` is set then).
    """

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.delay = 0.0
        self.refuse = False
        self._upload_budget: int | None = None
        self._marker = b""
        self._cut_at_marker = False
        self._dropping = False
        self.marked = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", self.port), self._loop
        ).result(timeout=10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            self._close_all()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def cut(self) -> None:
        """Close every connection open now (both sides see a reset or an EOF)."""

        async def cut() -> None:
            self._close_all()

        asyncio.run_coroutine_threadsafe(cut(), self._loop).result(timeout=10)

    def cut_after_upload(self, byte_count: int) -> None:
        """Cut every connection, and refuse new ones, once ``byte_count`` more bytes have gone
        towards the target (the data of the chunk that crosses the mark is not forwarded)."""

        async def arm() -> None:
            self._upload_budget = byte_count

        asyncio.run_coroutine_threadsafe(arm(), self._loop).result(timeout=10)

    def cut_before(self, marker: bytes) -> None:
        """When bytes holding ``marker`` are about to go towards the target, do not forward them:
        cut every connection and refuse new ones (clear ``refuse`` to let them in again). The
        request carrying ``marker`` never reaches the target."""
        self._arm(marker, cut=True)

    def drop_answers_after(self, marker: bytes) -> None:
        """Forward the bytes holding ``marker`` towards the target, then forward nothing back
        (the target's answers are dropped) until the next :meth:`cut`. The request reaches the
        target and its answer is lost: the caller waits until the test, having seen the request's
        effect in the target's store, cuts."""
        self._arm(marker, cut=False)

    def reset(self) -> None:
        """Back to a plain link: no delay, no refusal, nothing armed (open connections stay)."""

        async def reset() -> None:
            self.delay = 0.0
            self.refuse = False
            self._upload_budget = None
            self._marker = b""
            self._dropping = False

        asyncio.run_coroutine_threadsafe(reset(), self._loop).result(timeout=10)

    def _arm(self, marker: bytes, *, cut: bool) -> None:
        if not marker:
            raise ValueError("marker: must not be empty")

        async def arm() -> None:
            self.marked.clear()
            self._marker = marker
            self._cut_at_marker = cut
            self._dropping = False

        asyncio.run_coroutine_threadsafe(arm(), self._loop).result(timeout=10)

    @property
    def tripped(self) -> bool:
        """True once an armed :meth:`cut_after_upload` has cut (until ``refuse`` is cleared)."""
        return self.refuse and self._upload_budget == 0

    def _close_all(self) -> None:
        self._dropping = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))
        await asyncio.gather(
            self._pipe(reader, upstream_writer, upload=True),
            self._pipe(upstream_reader, writer, upload=False),
            return_exceptions=True,
        )
        for end in (writer, upstream_writer):
            self._writers.discard(end)
            end.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upload: bool
    ) -> None:
        tail = b""  # the end of the bytes before, so that a marker split across reads is found
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                if not upload and self._dropping:
                    continue
                if upload and self._marker:
                    seen = tail + data
                    tail = seen[-(len(self._marker) - 1) :] if len(self._marker) > 1 else b""
                    if self._marker in seen:
                        self._marker = b""
                        self.marked.set()
                        if self._cut_at_marker:
                            self.refuse = True
                            self._close_all()
                            return
                        self._dropping = True
                if upload and self._upload_budget is not None and self._upload_budget > 0:
                    if len(data) >= self._upload_budget:
                        self._upload_budget = 0
                        self.refuse = True
                        self._close_all()
                        return
                    self._upload_budget -= len(data)
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
