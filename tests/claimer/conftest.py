"""Fixtures of the claimer tests: a migrated database and an S3 bucket."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from claimer.support import Stores, make_stores

from hevlayer.claimer.database import Database
from hevlayer.claimer.manifests import ObjectStore
from hevlayer.devstack import SeaweedS3


@pytest.fixture(scope="module")
async def claimer_db(database_url: str) -> AsyncIterator[Database]:
    """The claimer's pool on the module's fresh database (migrated)."""
    db = Database(database_url, min_size=1, max_size=8, timeout=10)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
async def objects(s3: SeaweedS3, s3_bucket: str) -> AsyncIterator[ObjectStore]:
    """An S3 client on a fresh bucket."""
    store = ObjectStore(
        bucket=s3_bucket,
        endpoint_url=s3.endpoint_url,
        access_key_id=s3.access_key,
        secret_access_key=s3.secret_key,
        region=s3.region,
    )
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def stores(claimer_db: Database) -> Stores:
    """Row-only stores (no S3) on a fake clock."""
    return make_stores(claimer_db)


@pytest.fixture
def seg_stores(claimer_db: Database, objects: ObjectStore) -> Stores:
    """Stores with the segmented queue (segments of 10 ids) on a fake clock."""
    return make_stores(claimer_db, objects, segment_size=10)
