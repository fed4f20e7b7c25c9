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
from typing import Any

DEFAULT_REGION = "us-east-1"
"""The region of a client whose region is empty."""


async def open_s3_client(
    stack: AsyncExitStack,
    *,
    endpoint_url: str = "",
    access_key_id: str = "",
    secret_access_key: str = "",
    region: str = "",
    max_connections: int,
    max_attempts: int = 3,
    connect_timeout: float = 5.0,
    read_timeout: float,
) -> Any:
    """An aiobotocore S3 client, closed when ``stack`` closes (no request is made):
    ``max_connections`` pooled connections, ``max_attempts`` attempts per request (botocore's
    standard retries), ``connect_timeout`` and ``read_timeout`` in seconds."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    kwargs: dict[str, Any] = {
        "region_name": region or DEFAULT_REGION,
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
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    if access_key_id:
        kwargs["aws_access_key_id"] = access_key_id
        kwargs["aws_secret_access_key"] = secret_access_key
    return await stack.enter_async_context(get_session().create_client("s3", **kwargs))
