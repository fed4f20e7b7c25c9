"""Pipelines that cannot touch each other, in the claimer: a target namespace belongs to one
pipeline per sink (checked, and enforced by a unique index so that racing creates cannot both
win), migration 0004 on a database that already has pipelines sharing a namespace, and
RecordStaged refusing a backing outside the pipeline's own packs. A refused call writes
nothing: every test counts the rows before and after."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import pytest
from claimer.stores import Stores, counters, make_stores, new_pipeline, packs_of, stage, unique_id

from hevlayer.claimer.database import Database, migrate, migrations
from hevlayer.claimer.pipelines import PipelineSpec
from hevlayer.client.naming import default_namespace, incarnation, incarnation_of, pack_prefix
from hevlayer.client.types import StagedRecord
from hevlayer.common.errors import AlreadyExists, InvalidArgument, NotFound
from hevlayer.devstack import PostgresServer
from hevlayer.devstack.testing import fresh_database


async def snapshot(db: Database) -> dict[str, Any]:
    """Everything a create or a staging could have written."""
    async with db.acquire() as conn:
        return {
            "pipelines": sorted(
                tuple(r) for r in await conn.fetch("SELECT id, sink, target_namespace FROM pipelines")
            ),
            "documents": sorted(
                tuple(r)
                for r in await conn.fetch(
                    "SELECT pipeline_id, document_id, stage, fencing_token, backing FROM documents"
                )
            ),
            "objects": sorted(tuple(r) for r in await conn.fetch("SELECT * FROM backing_objects")),
            "counts": sorted(
                tuple(r)
                for r in await conn.fetch("SELECT pipeline_id, stage, count FROM pipeline_stage_counts")
            ),
        }


def namespace_violation(error: AlreadyExists) -> str:
    assert [v.field for v in error.violations] == ["pipeline.target_namespace"]
    assert error.reason == "NAMESPACE_TAKEN"
    return error.violations[0].description


# -- target_namespace: one pipeline per namespace of a sink -----------------------------------


async def test_an_explicit_namespace_of_another_pipeline_is_refused(stores: Stores) -> None:
    owner = unique_id("own")
    await stores.pipelines.create(PipelineSpec(id=owner))
    before = await snapshot(stores.db)
    intruder = unique_id("int")
    with pytest.raises(AlreadyExists) as caught:
        await stores.pipelines.create(PipelineSpec(id=intruder, target_namespace=default_namespace(owner)))
    assert caught.value.message.startswith("pipeline.target_namespace: ")
    assert repr(owner) in namespace_violation(caught.value)
    assert caught.value.metadata["owner_pipeline_id"] == owner
    assert await snapshot(stores.db) == before
    with pytest.raises(NotFound):
        await stores.pipelines.get(intruder)


async def test_a_default_namespace_equal_to_another_pipelines_is_refused(stores: Stores) -> None:
    """The default (the id with '-' replaced by '_') counts like an explicit namespace."""
    intruder = unique_id("dflt")
    owner = unique_id("own")
    await stores.pipelines.create(PipelineSpec(id=owner, target_namespace=default_namespace(intruder)))
    before = await snapshot(stores.db)
    with pytest.raises(AlreadyExists) as caught:
        await stores.pipelines.create(PipelineSpec(id=intruder))
    assert repr(owner) in namespace_violation(caught.value)
    assert await snapshot(stores.db) == before


async def test_the_same_namespace_in_another_sink_is_its_own(stores: Stores) -> None:
    namespace = f"shared_{unique_id('n').replace('-', '_')}"
    lite = await stores.pipelines.create(PipelineSpec(id=unique_id("a"), target_namespace=namespace))
    puffer = await stores.pipelines.create(
        PipelineSpec(id=unique_id("b"), target_namespace=namespace, sink="turbopuffer")
    )
    assert (lite.sink, puffer.sink) == ("milvus_lite", "turbopuffer")
    assert lite.target_namespace == puffer.target_namespace == namespace


async def test_a_namespace_is_free_again_once_its_pipeline_is_deleted(stores: Stores) -> None:
    namespace = f"reused_{unique_id('n').replace('-', '_')}"
    first = await stores.pipelines.create(PipelineSpec(id=unique_id("a"), target_namespace=namespace))
    await stores.pipelines.delete(first.id)
    second = await stores.pipelines.create(PipelineSpec(id=unique_id("b"), target_namespace=namespace))
    assert second.target_namespace == namespace


async def test_an_existing_id_is_still_refused_as_an_id(stores: Stores) -> None:
    pid = await new_pipeline(stores)
    with pytest.raises(AlreadyExists) as caught:
        await stores.pipelines.create(PipelineSpec(id=pid))
    assert caught.value.message == f"pipeline {pid!r} already exists"
    assert not caught.value.violations


async def test_racing_creates_of_one_namespace_have_one_winner(stores: Stores) -> None:
    namespace = f"race_{unique_id('n').replace('-', '_')}"
    ids = [unique_id("r") for _ in range(6)]
    results = await asyncio.gather(
        *(stores.pipelines.create(PipelineSpec(id=pid, target_namespace=namespace)) for pid in ids),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    losers = [r for r in results if isinstance(r, BaseException)]
    for error in losers:
        assert isinstance(error, AlreadyExists)
        assert repr(winners[0].id) in namespace_violation(error)
    async with stores.db.acquire() as conn:
        owners = await conn.fetch("SELECT id FROM pipelines WHERE target_namespace = $1", namespace)
    assert [r["id"] for r in owners] == [winners[0].id]


async def test_the_database_refuses_a_second_owner_by_itself(stores: Stores) -> None:
    """The unique index holds even for a writer that skips the store's check."""
    pid = await new_pipeline(stores)
    async with stores.db.acquire() as conn:
        with pytest.raises(asyncpg.UniqueViolationError) as caught:
            await conn.execute(
                """INSERT INTO pipelines (id, target_namespace, distance_metric, max_attempts,
                       default_lease_seconds, queue_backend, sink)
                   VALUES ($1, $2, 'cosine_distance', 3, 10, 'row', 'milvus_lite')""",
                unique_id("raw"),
                default_namespace(pid),
            )
    assert caught.value.constraint_name == "pipelines_sink_namespace"


# -- migration 0004 on a database whose pipelines already share a namespace -------------------


async def test_migration_keeps_pipelines_that_already_share_a_namespace(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = fresh_database(postgres, "isolation_migration")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, name, sql in migrations():
            if version >= 4:
                break
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
        insert = """INSERT INTO pipelines (id, target_namespace, distance_metric, max_attempts,
                        default_lease_seconds, queue_backend, sink)
                    VALUES ($1, $2, 'cosine_distance', 3, 10, 'row', $3)"""
        await conn.execute(insert, "alpha", "common", "milvus_lite")
        await conn.execute(insert, "beta", "common", "milvus_lite")
        await conn.execute(insert, "gamma", "common", "turbopuffer")
        await conn.execute(insert, "legacy-empty", "", "milvus_lite")
        with caplog.at_level(logging.WARNING, logger="hevlayer.claimer.database"):
            applied = await migrate(conn)
        # 0004 first; later migrations (0005_api_tokens, ...) follow it.
        assert applied[0] == "0004_unique_target_namespace.sql"
        rows = {
            r["id"]: (r["target_namespace"], r["namespace_shared"])
            for r in await conn.fetch("SELECT id, target_namespace, namespace_shared FROM pipelines")
        }
        assert rows == {
            "alpha": ("common", True),
            "beta": ("common", True),
            "gamma": ("common", False),
            "legacy-empty": ("legacy_empty", False),
        }
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [
            "migration: pipelines alpha, beta share namespace common of sink milvus_lite (created before "
            'namespaces were unique); see docs/operations.md, "Isolation of pipelines"'
        ]
    finally:
        await conn.close()

    db = Database(url, min_size=1, max_size=2, timeout=10)
    await db.open()
    try:
        stores = make_stores(db)
        before = await snapshot(db)
        with pytest.raises(AlreadyExists) as caught:
            await stores.pipelines.create(PipelineSpec(id="delta", target_namespace="common"))
        assert "'alpha'" in namespace_violation(caught.value)
        with pytest.raises(AlreadyExists):
            await stores.pipelines.create(PipelineSpec(id="epsilon", target_namespace="legacy_empty"))
        assert await snapshot(db) == before
        # the shared pipelines keep working: their documents stage as before
        await stage(stores, "alpha", ["doc"])
        assert await counters(db, "alpha") == {"pending": 1}
    finally:
        await db.close()


# -- RecordStaged: backings inside the pipeline's own packs -----------------------------------


async def test_staged_backings_must_be_in_the_pipelines_own_packs(stores: Stores) -> None:
    pid = await new_pipeline(stores)
    other = await new_pipeline(stores)
    await stage(stores, pid, ["kept"])
    await stage(stores, other, ["theirs"])
    packs = await packs_of(stores, pid)
    record = await stores.pipelines.get(pid)
    earlier = pack_prefix(pid, incarnation(int(incarnation_of(record.create_time), 16) - 1))
    foreign = [
        f"{await packs_of(stores, other)}theirs#0:1",  # another pipeline's pack
        f"{earlier}old.pack#0:1",  # an earlier pipeline of the same id
        "secrets/credentials.json#0:1",  # anywhere else in the bucket
        f"pipelines/{pid}/other/x.pack#0:1",  # the pipeline's prefix, not its packs
        f"{packs}sub/x.pack#0:1",  # below the packs
        f"{packs}a#b#0:1",  # two object keys, depending on who reads it
        f"{packs}#0:1",  # no object name
        f"{packs}x.pack",  # no range
        f"{packs}x.pack#0",  # half a range
        f"{packs}x.pack#a:1",  # not a number
    ]
    before = await snapshot(stores.db)
    for backing in foreign:
        records = [
            StagedRecord("new", "h", f"{packs}fine.pack#0:1", 1),
            StagedRecord("kept", "h2", backing, 1),
        ]
        with pytest.raises(InvalidArgument) as caught:
            await stores.documents.record_staged(pid, records)
        assert [v.field for v in caught.value.violations] == ["records[1].backing"], backing
        assert caught.value.message.startswith("records[1].backing: ")
    assert await snapshot(stores.db) == before


async def test_own_backings_and_no_backing_are_accepted(stores: Stores) -> None:
    pid = await new_pipeline(stores)
    packs = await packs_of(stores, pid)
    batch = await stores.documents.record_staged(
        pid,
        [
            StagedRecord("a", "ha", f"{packs}0000000000000001-abcdef012345.pack#8:100", 2),
            StagedRecord("b", "hb", "", 0),
        ],
    )
    assert [r.document_id for r in batch.results] == ["a", "b"]
    assert await counters(stores.db, pid) == {"pending": 2}


async def test_a_recreated_pipeline_refuses_its_predecessors_packs(stores: Stores) -> None:
    pid = await new_pipeline(stores)
    old_packs = await packs_of(stores, pid)
    await stores.pipelines.delete(pid)
    await stores.pipelines.create(PipelineSpec(id=pid, queue_backend="row"))
    assert await packs_of(stores, pid) != old_packs
    with pytest.raises(InvalidArgument) as caught:
        await stores.documents.record_staged(pid, [StagedRecord("a", "h", f"{old_packs}p.pack#0:1", 1)])
    assert [v.field for v in caught.value.violations] == ["records[0].backing"]
    assert await counters(stores.db, pid) == {}
