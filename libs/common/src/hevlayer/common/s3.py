"""The one way hevlayer opens an S3 client: aiobotocore with the same client configuration
for every caller (the gateway's chunk store, the claimer's segment manifests, the ingest
library's object sources and Artifact Cache).

Path-style addressing (SeaweedFS, MinIO and other S3-compatible stores), botocore's
"standard" retry mode, checksums only where the operation requires them (stores that do not
implement the newer default checksums accept every request). Empty credentials or endpoint fall
back to botocore's defaults (AWS's endpoint, the default credential chain).

``aiobotocore`` is not a dependency of ``hevlayer-common``: it is imported when a client is
opened, and each package that calls :func:`open_s3_client` declares it (the gateway, the
claimer, ``hevlayer-ingest``).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Protocol

DEFAULT_REGION = "us-east-1"
"""The region of a client whose region is empty."""


class S3Endpoint(Protocol):
    """Where an S3 client connects and with which credentials (empty: botocore's defaults).
    :class:`S3Connection` is one; the gateway's ``S3Settings`` is another."""

    @property
    def endpoint_url(self) -> str: ...

    @property
    def access_key_id(self) -> str: ...

    @property
    def secret_access_key(self) -> str: ...

    @property
    def region(self) -> str: ...


@dataclass(frozen=True)
class S3Connection:
    """An S3 endpoint and its credentials; empty fields fall back to botocore's defaults
    (AWS's endpoint, the default credential chain). Its repr never shows the secret."""

    endpoint_url: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""
    region: str = DEFAULT_REGION

    def __repr__(self) -> str:
        secret = "'***'" if self.secret_access_key else "''"
        return (
            f"S3Connection(endpoint_url={self.endpoint_url!r}, access_key_id={self.access_key_id!r}, "
            f"secret_access_key={secret}, region={self.region!r})"
        )


async def open_s3_client(
    stack: AsyncExitStack,
    endpoint: S3Endpoint,
    *,
    max_connections: int,
    max_attempts: int = 3,
    connect_timeout: float = 5.0,
    read_timeout: float,
) -> Any:
    """An aiobotocore S3 client for ``endpoint``, closed when ``stack`` closes (no request is made):
    ``max_connections`` pooled connections, ``max_attempts`` attempts per request (botocore's
    standard retries), ``connect_timeout`` and ``read_timeout`` in seconds."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    kwargs: dict[str, Any] = {
        "region_name": endpoint.region or DEFAULT_REGION,
        "config": AioConfig(
            max_pool_connections=max_connections,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            s3={"addressing_style": "path"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    }
    if endpoint.endpoint_url:
        kwargs["endpoint_url"] = endpoint.endpoint_url
    if endpoint.access_key_id:
        kwargs["aws_access_key_id"] = endpoint.access_key_id
        kwargs["aws_secret_access_key"] = endpoint.secret_access_key
    return await stack.enter_async_context(get_session().create_client("s3", **kwargs))
