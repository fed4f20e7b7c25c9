"""gRPC adapter of EmbeddingService (protos in, :class:`Embedder` calls, protos out)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from grpc import aio

from hevlayer.api.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from hevlayer.common.errors import Unavailable
from hevlayer.embedder.embedding import Embedder, InputType, Vectors

_INPUT_TYPES = {
    embedding_pb2.INPUT_TYPE_UNSPECIFIED: InputType.DOCUMENT,
    embedding_pb2.INPUT_TYPE_DOCUMENT: InputType.DOCUMENT,
    embedding_pb2.INPUT_TYPE_QUERY: InputType.QUERY,
}


def to_response(vectors: Vectors) -> embedding_pb2.EmbedResponse:
    return embedding_pb2.EmbedResponse(
        embeddings=[embedding_pb2.Embedding(values=row) for row in vectors.tolist()]
    )


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    """Embed answers each request of a stream in order; up to ``window`` of them are
    embedded at once, so a client that streams ahead keeps Triton busy."""

    def __init__(self, embedder: Embedder, stopping: asyncio.Event, *, window: int = 4) -> None:
        self._embedder = embedder
        self._stopping = stopping
        self._window = window

    async def Embed(
        self,
        request_iterator: AsyncIterator[embedding_pb2.EmbedRequest],
        context: aio.ServicerContext,
    ) -> AsyncIterator[embedding_pb2.EmbedResponse]:
        pending: asyncio.Queue[asyncio.Task[Vectors] | None] = asyncio.Queue(maxsize=self._window)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    if self._stopping.is_set():
                        break
                    texts = list(request.texts)
                    input_type = _INPUT_TYPES.get(request.input_type, InputType.DOCUMENT)
                    task = asyncio.create_task(self._embedder.embed(texts, input_type))
                    try:
                        await pending.put(task)
                    except BaseException:
                        task.cancel()
                        raise
            finally:
                await pending.put(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await pending.get()) is not None:
                yield to_response(await task)
            await reader
            if self._stopping.is_set():
                raise Unavailable("the embedder is shutting down; send the unanswered requests again")
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def DescribeModel(
        self, request: embedding_pb2.DescribeModelRequest, context: aio.ServicerContext
    ) -> embedding_pb2.DescribeModelResponse:
        description = await self._embedder.describe()
        return embedding_pb2.DescribeModelResponse(
            model=description.model,
            dimension=description.dimension,
            max_batch_size=description.max_batch_size,
            normalized=description.normalized,
        )
