"""EmbeddingService: embed texts with the deployment's model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from grpc import aio

from hevlayer.api.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from hevlayer.client._base import ServiceClient
from hevlayer.client.enums import InputType
from hevlayer.client.errors import Unavailable
from hevlayer.client.methods import EMBEDDING_SERVICE, method
from hevlayer.client.options import ClientOptions

_EMBED = method(EMBEDDING_SERVICE, "Embed")
_DESCRIBE = method(EMBEDDING_SERVICE, "DescribeModel")

MAX_BATCH = 1024
"""Texts per EmbedRequest (the service's limit)."""


class EmbeddingClient(ServiceClient):
    """Calls of EmbeddingService."""

    def __init__(self, channel: aio.Channel, options: ClientOptions | None = None) -> None:
        super().__init__(channel, options)
        self._stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)

    async def embed(
        self,
        texts: Sequence[str],
        *,
        input_type: InputType = InputType.DOCUMENT,
        batch_size: int = 64,
        timeout: float | None = None,
    ) -> list[list[float]]:
        """One embedding per text, in order, through one Embed stream of ``batch_size`` texts a message."""
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"embed: batch_size must be 1 to {MAX_BATCH}")

        async def requests() -> AsyncIterator[embedding_pb2.EmbedRequest]:
            for start in range(0, len(texts), batch_size):
                yield embedding_pb2.EmbedRequest(
                    texts=texts[start : start + batch_size], input_type=input_type.value
                )

        vectors: list[list[float]] = []
        if not texts:
            return vectors
        async for response in self._stream(_EMBED, self._stub.Embed, requests(), timeout):
            vectors.extend(list(e.values) for e in response.embeddings)
        if len(vectors) != len(texts):
            raise Unavailable(
                f"the embedding service answered {len(vectors)} embeddings for {len(texts)} texts",
                reason="EMBEDDINGS_MISSING",
            )
        return vectors

    async def embed_query(self, text: str, *, timeout: float | None = None) -> list[float]:
        """The query embedding of ``text``."""
        return (await self.embed([text], input_type=InputType.QUERY, timeout=timeout))[0]

    async def describe_model(self, *, timeout: float | None = None) -> embedding_pb2.DescribeModelResponse:
        """The served model: name, dimension, largest batch, normalization."""
        response: embedding_pb2.DescribeModelResponse = await self._unary(
            _DESCRIBE, self._stub.DescribeModel, embedding_pb2.DescribeModelRequest(), timeout
        )
        return response
