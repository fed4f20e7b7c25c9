"""Where the ingest library's S3 objects live (object sources and the Artifact Cache): one
connection description and the aiobotocore client it opens."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from hevlayer.common import s3


@dataclass(frozen=True)
class S3Connection:
    """An S3 endpoint and its credentials; empty fields fall back to botocore's defaults
    (AWS's endpoint, the default credential chain)."""

    endpoint_url: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""
    region: str = "us-east-1"

    def __repr__(self) -> str:
        secret = "'***'" if self.secret_access_key else "''"
        return (
            f"S3Connection(endpoint_url={self.endpoint_url!r}, access_key_id={self.access_key_id!r}, "
            f"secret_access_key={secret}, region={self.region!r})"
        )


async def open_s3_client(
    connection: S3Connection, stack: AsyncExitStack, *, max_connections: int = 32
) -> Any:
    """An aiobotocore S3 client for ``connection``, closed when ``stack`` closes
    (:func:`hevlayer.common.s3.open_s3_client`; 60 s read timeout)."""
    return await s3.open_s3_client(
        stack,
        endpoint_url=connection.endpoint_url,
        access_key_id=connection.access_key_id,
        secret_access_key=connection.secret_access_key,
        region=connection.region,
        max_connections=max_connections,
        read_timeout=60,
    )


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``; ValueError naming the URI when it has no bucket."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r}: not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r}: no bucket in the s3:// URI")
    return bucket, key
