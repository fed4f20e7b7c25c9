"""Clients of a ``SeaweedS3`` bucket as the services configure them (claimer and gateway)."""

from __future__ import annotations

from hevlayer.claimer.manifests import ObjectStore
from hevlayer.devstack import SeaweedS3
from hevlayer.gateway.settings import S3Settings


def claimer_object_store(s3: SeaweedS3, bucket: str) -> ObjectStore:
    """The claimer's ``ObjectStore`` on ``bucket`` (not yet opened: ``await store.open()``)."""
    return ObjectStore(
        bucket=bucket,
        endpoint_url=s3.endpoint_url,
        access_key_id=s3.access_key,
        secret_access_key=s3.secret_key,
        region=s3.region,
    )


def gateway_s3_settings(s3: SeaweedS3, bucket: str) -> S3Settings:
    """The gateway's ``S3Settings`` for ``bucket`` (what ``open_s3_client`` takes)."""
    env = s3.client_env(bucket)
    return S3Settings(
        endpoint_url=env["S3_ENDPOINT_URL"],
        access_key_id=env["S3_ACCESS_KEY_ID"],
        secret_access_key=env["S3_SECRET_ACCESS_KEY"],
        region=env["S3_REGION"],
        bucket=bucket,
    )
