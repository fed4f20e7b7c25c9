"""The asynchronous client: one channel to the gateway, one attribute per service."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from grpc import aio

from hevlayer.client.channel import open_channel
from hevlayer.client.embedding import EmbeddingClient
from hevlayer.client.index import IndexClient
from hevlayer.client.leases import LeasesClient
from hevlayer.client.options import ClientOptions
from hevlayer.client.pipelines import PipelinesClient
from hevlayer.client.staging import StagingClient
from hevlayer.client.summaries import SummariesClient
from hevlayer.client.tokens import TokensClient

DEFAULT_GATEWAY = "127.0.0.1:50051"


class Client:
    """The hevlayer API over one channel.

    ``client.pipelines``, ``client.staging``, ``client.leases``, ``client.index``
    answer on the gateway; ``client.embedding`` on an embedder (or a gateway that
    serves EmbeddingService) and ``client.summaries`` on a summarizer, each on the
    channel it was opened with. Use as an async context manager, or call
    :meth:`close`."""

    def __init__(self, channel: aio.Channel, options: ClientOptions | None = None) -> None:
        self.channel = channel
        self.options = options or ClientOptions()
        self.pipelines = PipelinesClient(channel, self.options)
        self.staging = StagingClient(channel, self.options)
        self.leases = LeasesClient(channel, self.options)
        self.index = IndexClient(channel, self.options)
        self.embedding = EmbeddingClient(channel, self.options)
        self.summaries = SummariesClient(channel, self.options)
        self.tokens = TokensClient(channel, self.options)

    @classmethod
    def connect(cls, target: str = DEFAULT_GATEWAY, options: ClientOptions | None = None) -> Client:
        """A client on a new channel to ``target`` (``host:port``)."""
        return cls(open_channel(target, options), options)

    async def close(self) -> None:
        """Close the channel (calls in flight are cancelled)."""
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
