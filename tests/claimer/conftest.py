"""Fixtures of the claimer tests: a migrated database, an S3 bucket, stores on them, and a
claimer process (``claimer``) with a channel to it (``channel``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from claimer.stores import Stores, make_stores
from grpc import aio
from support.claimer_grpc import Claimer, start_bare_claimer
from support.s3 import claimer_object_store

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
    store = claimer_object_store(s3, s3_bucket)
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


@pytest.fixture(scope="module")
def claimer(database_url: str, s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Claimer]:
    bucket = f"claimer-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(bucket)
    env = {
        "DATABASE_URL": database_url,
        "PIPELINE_SEGMENT_SIZE": "10",
        "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "2",
        **s3.client_env(bucket),
    }
    process, address, http = start_bare_claimer(env, tmp_path_factory.mktemp("claimer"))
    try:
        process.wait_ready(timeout=60)
        yield Claimer(process, address, http)
    finally:
        process.stop()


@pytest.fixture
async def channel(claimer: Claimer) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(claimer.address) as ch:
        yield ch
