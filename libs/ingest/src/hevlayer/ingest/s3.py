"""Where the ingest library's S3 objects live (object sources and the Artifact Cache): the
connection description (:class:`~hevlayer.common.s3.S3Connection`, re-exported here) and the
aiobotocore client it opens."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from hevlayer.common import s3
from hevlayer.common.s3 import S3Connection

__all__ = ["S3Connection", "open_s3_client", "split_s3_uri"]


async def open_s3_client(
    connection: S3Connection, stack: AsyncExitStack, *, max_connections: int = 32
) -> Any:
    """An aiobotocore S3 client for ``connection``, closed when ``stack`` closes
    (:func:`hevlayer.common.s3.open_s3_client`; 60 s read timeout)."""
    return await s3.open_s3_client(stack, connection, max_connections=max_connections, read_timeout=60)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``; ValueError naming the URI when it has no bucket."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r}: not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r}: no bucket in the s3:// URI")
    return bucket, key
