"""Embedding requests, transport-free: validation, prefixes, the model's description.

The gRPC adapter (:mod:`hevlayer.embedder.grpc_embedding`) converts protos to
and from these values; the vectors come from an :class:`EmbeddingBackend`
(Triton in production, see :mod:`hevlayer.embedder.triton_client`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from hevlayer.common.errors import InvalidArgument
from hevlayer.embedder.triton_client import ModelInfo

Vectors = npt.NDArray[np.float32]


class InputType(enum.Enum):
    """What the texts are (models may embed queries and passages differently)."""

    DOCUMENT = "document"
    QUERY = "query"


@dataclass(frozen=True)
class ModelDescription:
    """The served model, as DescribeModel reports it."""

    model: str
    dimension: int
    max_batch_size: int
    normalized: bool


class EmbeddingBackend(Protocol):
    """Where vectors come from."""

    async def model_info(self) -> ModelInfo: ...

    async def embed(self, texts: Sequence[str]) -> Vectors: ...


class Embedder:
    """Validates Embed requests and embeds them with the backend."""

    def __init__(
        self,
        backend: EmbeddingBackend,
        *,
        max_request_texts: int = 1024,
        normalized: bool = True,
        query_prefix: str = "",
        document_prefix: str = "",
    ) -> None:
        self._backend = backend
        self._max_texts = max_request_texts
        self._normalized = normalized
        self._prefixes = {InputType.QUERY: query_prefix, InputType.DOCUMENT: document_prefix}

    async def embed(self, texts: Sequence[str], input_type: InputType = InputType.DOCUMENT) -> Vectors:
        """One vector per text, in order; InvalidArgument for an empty or oversized batch."""
        if not 1 <= len(texts) <= self._max_texts:
            raise InvalidArgument.field("texts", f"must hold 1 to {self._max_texts} texts, got {len(texts)}")
        prefix = self._prefixes[input_type]
        if prefix:
            texts = [prefix + text for text in texts]
        return await self._backend.embed(texts)

    async def embed_documents(self, texts: Sequence[str]) -> Vectors:
        """Document vectors for the worker: any number of texts (the Triton client cuts
        them into requests), with the document prefix."""
        prefix = self._prefixes[InputType.DOCUMENT]
        if prefix:
            texts = [prefix + text for text in texts]
        return await self._backend.embed(texts)

    async def describe(self) -> ModelDescription:
        """The model's name and dimension (Unavailable while Triton cannot be reached)."""
        info = await self._backend.model_info()
        return ModelDescription(
            model=info.name,
            dimension=info.dimension,
            max_batch_size=self._max_texts,
            normalized=self._normalized,
        )
