"""A blocking facade over :class:`~hevlayer.client.Client`, for scripts and non-async code.

The async client runs on an event loop in a background thread; each method of
``SyncClient.pipelines``, ``.staging``, ... has the async method's name and
arguments, blocks until it is done and returns its result; a method that
streams returns a plain iterator. Arguments that the async API takes as async
iterables (StreamLeases credits, EnqueueDocuments batches) must be async
iterables here too; documents to stage may be any iterable.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

from hevlayer.client.client import DEFAULT_GATEWAY, Client
from hevlayer.client.options import ClientOptions

T = TypeVar("T")


class SyncClient:
    """The hevlayer API, blocking. Use as a context manager, or call :meth:`close`."""

    def __init__(self, target: str = DEFAULT_GATEWAY, options: ClientOptions | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hevlayer-client", daemon=True)
        self._thread.start()

        async def open_client() -> Client:
            return Client.connect(target, options)

        self._client = self.run(open_client())
        self.pipelines = _Blocking(self, self._client.pipelines)
        self.staging = _Blocking(self, self._client.staging)
        self.leases = _Blocking(self, self._client.leases)
        self.index = _Blocking(self, self._client.index)
        self.embedding = _Blocking(self, self._client.embedding)
        self.summaries = _Blocking(self, self._client.summaries)

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` on the client's loop and wait for its result."""

        async def wait() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wait(), self._loop).result()

    def iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        """Iterate an async iterator of the client's loop from this thread."""
        try:
            while True:
                try:
                    yield self.run(iterator.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            closer = getattr(iterator, "aclose", None)
            if closer is not None and not self._loop.is_closed():
                self.run(closer())

    def close(self) -> None:
        """Close the channel and stop the loop's thread."""
        if self._loop.is_closed():
            return
        self.run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Blocking:
    """One service client's methods, blocking."""

    def __init__(self, owner: SyncClient, service: object) -> None:
        self._owner = owner
        self._service = service

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._service, name)
        if name.startswith("_") or not callable(attribute):
            return attribute
        return self._blocking(attribute)

    def _blocking(self, function: Callable[..., Any]) -> Callable[..., Any]:
        owner = self._owner

        def call(*args: Any, **kwargs: Any) -> Any:
            async def start() -> Any:
                return function(*args, **kwargs)

            result = owner.run(start())
            if inspect.isasyncgen(result):
                return owner.iterate(result)
            if inspect.iscoroutine(result):
                return owner.run(result)
            return result

        call.__name__ = getattr(function, "__name__", "call")
        call.__doc__ = function.__doc__
        return call
