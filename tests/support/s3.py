"""Clients of a ``SeaweedS3`` bucket as the services configure them (claimer and gateway), and
the keys a bucket holds."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import pytest

from hevlayer.claimer.manifests import ObjectStore
from hevlayer.common.s3 import S3Connection
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


def bucket_keys(s3: SeaweedS3, bucket: str, prefix: str = "") -> list[str]:
    """Every key of ``bucket`` under ``prefix`` (one signed ListObjects; tests stay below 1000)."""
    status, body = s3.request("GET", f"/{bucket}")
    if status != 200:
        raise RuntimeError(f"listing {bucket} failed: {status} {body[:200]!r}")
    root = ElementTree.fromstring(body)
    keys: list[str] = []
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "IsTruncated" and element.text == "true":
            raise RuntimeError(f"bucket {bucket} holds more than one page of keys")
        if tag == "Key" and element.text and element.text.startswith(prefix):
            keys.append(element.text)
    return sorted(keys)


def pack_keys(s3: SeaweedS3, bucket: str, pipeline_id: str) -> list[str]:
    """The keys of one pipeline's pack objects."""
    return [k for k in bucket_keys(s3, bucket, f"pipelines/{pipeline_id}/") if k.endswith(".pack")]


def cache_location(
    request: pytest.FixtureRequest, tmp_path: Path, name: str, *, on_s3: bool
) -> tuple[str, S3Connection | None]:
    """Where a test keeps a cache named ``name``: a directory under ``tmp_path``, or (``on_s3``)
    a prefix of the test's fresh bucket (the ``s3`` and ``s3_bucket`` fixtures) with the
    connection to it."""
    if not on_s3:
        return str(tmp_path / name), None
    s3: SeaweedS3 = request.getfixturevalue("s3")
    bucket: str = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/{name}", S3Connection(s3.endpoint_url, s3.access_key, s3.secret_key, s3.region)
