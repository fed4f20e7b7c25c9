"""Vectors a test writes as a worker would.

- ``embed``: without a model, deterministic unit vectors of ``DIM`` values (equal texts, equal
  vectors; a text's own vector scores 1.0), for tests of writing and fencing.
- ``model_vectors``: the real model's vectors from a running embedder (the live suite's), for
  tests whose point is that a text query finds what was embedded.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from hevlayer.client import Client

DIM = 4


def embed(text: str) -> list[float]:
    """A deterministic unit vector of ``DIM`` values for ``text``."""
    digest = hashlib.sha256(text.encode()).digest()
    values = [digest[i] - 127.5 for i in range(DIM)]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


async def model_vectors(embedder_address: str, texts: Sequence[str]) -> list[list[float]]:
    """The vectors the embedder at ``embedder_address`` gives ``texts`` (documents' embeddings,
    in order): what a worker writes for those texts with the suite's real model."""
    async with Client.connect(embedder_address) as client:
        return await client.embedding.embed(texts)
