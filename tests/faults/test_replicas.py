"""Replicas: two gateways and two claimers on one PostgreSQL, one S3 bucket and one sink.

The sink every gateway shares is Turbopuffer, served by the local fake of its HTTP API
(``tests/support/fakes/turbopuffer.py``; no Turbopuffer server runs here, and Milvus Lite has a
single owner). Gateway ``i`` forwards to claimer ``i``; both claimers share the database and the
bucket. Workers are plain clients of the gateways (claim, read chunks, write vectors), one per
gateway, so that a document staged through one gateway is often claimed, read and written
through the other.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from faults.services import Processes, write_document
from grpc import aio
from support.fakes.turbopuffer import FakeTurbopufferThread
from support.leases import claim, read_chunks
from support.pipelines import create_pipeline
from support.processes import start_claimer, start_gateway
from support.rpc_errors import reason, violations
from support.s3 import pack_keys
from support.service_http import metric_samples
from support.staging import document, get_document, stage
from support.vectors import embed

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.client.naming import effective_namespace, object_key_of
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.devstack.testing import claimer_metadata
from hevlayer.gateway.claimer_client import ClaimerClient
from hevlayer.gateway.sinks.milvus import MilvusSink


@dataclass
class Replicas:
    """The processes and addresses of the replicated suite."""

    tmp: Path
    traces: Path
    s3_env: dict[str, str]
    claimers: list[str]
    gateways: list[str]
    sink: FakeTurbopufferThread


@pytest.fixture(scope="module")
def replicas(
    database_url: str, s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    tmp = tmp_path_factory.mktemp("replicas")
    traces = tmp / "traces.jsonl"
    bucket = f"replicas-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(bucket)
    s3_env = s3.client_env(bucket)
    sink = FakeTurbopufferThread()
    base_url = sink.start()
    try:
        with Processes() as processes:
            claimers = [
                processes.add(
                    start_claimer(
                        database_url,
                        tmp,
                        traces,
                        PIPELINE_SEGMENT_SIZE="5",
                        PIPELINE_DEFAULT_SINK="turbopuffer",
                        **s3_env,
                    )
                )[1]
                for _ in range(2)
            ]
            for process in processes.started:
                process.wait_ready(timeout=60)
            gateways = [
                processes.add(
                    start_gateway(
                        claimer,
                        tmp,
                        traces,
                        GATEWAY_DEFAULT_SINK="turbopuffer",
                        GATEWAY_TURBOPUFFER_API_KEY=sink.fake.api_key,
                        GATEWAY_TURBOPUFFER_BASE_URL=base_url,
                        **s3_env,
                    )
                )[1]
                for claimer in claimers
            ]
            for process in processes.started[2:]:
                process.wait_ready(timeout=60)
            yield Replicas(tmp, traces, s3_env, claimers, gateways, sink)
    finally:
        sink.stop()


@pytest.fixture
async def channels(replicas: Replicas) -> AsyncIterator[list[aio.Channel]]:
    opened = [aio.insecure_channel(address) for address in replicas.gateways]
    try:
        yield opened
    finally:
        for channel in opened:
            await channel.close()


async def _work_once(channel: aio.Channel, pipeline_id: str, worker: str) -> int:
    """Claim up to 4 pending documents through ``channel``, read and index them; how many were claimed.

    A document re-staged or deleted since its claim fails its read or write (its lease is
    stale): that is what the flow does while mutations are in flight, and it is claimable again
    (or gone) afterwards.
    """
    leases = await claim(channel, pipeline_id, limit=4, worker=worker, lease_seconds=30)
    if not leases:
        return 0
    chunks: dict[str, list[document_pb2.Chunk]] = {}
    for response in await read_chunks(channel, pipeline_id, leases, worker=worker):
        if response.HasField("error"):
            continue
        chunks.setdefault(response.document_id, []).extend(response.chunks)
    for doc_id, read in chunks.items():
        try:
            await write_document(channel, pipeline_id, worker, leases[doc_id], doc_id, read)
        except aio.AioRpcError as error:
            if error.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                raise
    return len(leases)


def _index_rows(sink: FakeTurbopufferThread) -> list[tuple[str, str]]:
    """(document id, chunk id) of every row of every namespace of the shared sink."""
    return [
        (str(row["document_id"]), str(row["chunk_id"]))
        for namespace in list(sink.fake.namespaces.values())
        for row in list(namespace.documents.values())
    ]


async def test_a_second_gateway_on_one_milvus_lite_file_refuses_to_start(replicas: Replicas) -> None:
    path = replicas.tmp / f"owned-{uuid.uuid4().hex[:6]}.db"
    owner, _, _ = start_gateway(
        replicas.claimers[0],
        replicas.tmp,
        replicas.traces,
        GATEWAY_MILVUS_LITE_PATH=str(path),
        **replicas.s3_env,
    )
    try:
        owner.wait_ready(timeout=60)
        second, _, _ = start_gateway(
            replicas.claimers[1],
            replicas.tmp,
            replicas.traces,
            GATEWAY_MILVUS_LITE_PATH=str(path),
            **replicas.s3_env,
        )
        try:
            code = await asyncio.to_thread(second.wait, 60)
        finally:
            second.stop(grace=2)
        log = second.log_tail(40)
        assert code != 0, log
        assert "open in another process" in log, log
        assert "single owner" in log, log
        assert owner.running, owner.log_tail(40)
    finally:
        owner.stop(grace=5)


async def test_a_restage_through_one_gateway_is_read_fresh_through_the_other(
    channels: list[aio.Channel],
) -> None:
    first, second = channels
    pid = await create_pipeline(first)
    await stage(first, pid, [document("doc", chunks=2)])
    leases = await claim(second, pid, worker="w2", lease_seconds=30)
    read = [c.id for r in await read_chunks(second, pid, leases, worker="w2") for c in r.chunks]
    assert read == ["doc-0", "doc-1"]  # gateway 2 now holds the first version in its cache

    restaged = document_pb2.Document(id="doc")
    restaged.chunks.add(id="doc-new", text="the second version")
    await stage(first, pid, [restaged])
    leases = await claim(second, pid, worker="w2", lease_seconds=30)
    responses = await read_chunks(second, pid, leases, worker="w2")
    assert [c.id for r in responses for c in r.chunks] == ["doc-new"]
    results = await write_document(second, pid, "w2", leases["doc"], "doc", list(responses[0].chunks))
    assert [(r.vectors_written, r.HasField("error")) for r in results] == [(1, False)], results
    state = await get_document(first, pid, "doc")
    assert state.stage == "indexed"


async def test_two_gateways_and_two_claimers_index_every_document_exactly_once(
    replicas: Replicas, channels: list[aio.Channel]
) -> None:
    first, second = channels
    pid = await create_pipeline(first)
    ids = [f"d{i:02d}" for i in range(24)]
    # Staged half through each gateway.
    await stage(first, pid, [document(i, chunks=3) for i in ids[:12]])
    await stage(second, pid, [document(i, chunks=3) for i in ids[12:]])
    expected = {i: [f"{i}-{j}" for j in range(3)] for i in ids}
    deleted = set(ids[18:22])
    restaged = ids[:6]

    async def mutate() -> None:
        # Re-stages through the gateway that did not stage them, deletes through the other one,
        # while the workers claim, read and write.
        await asyncio.sleep(0)
        for doc_id in restaged:
            new = document_pb2.Document(id=doc_id)
            for j in range(2):
                new.chunks.add(id=f"{doc_id}-v2-{j}", text=f"version 2 of {doc_id} {j}")
            await stage(second, pid, [new])
            expected[doc_id] = [f"{doc_id}-v2-{j}" for j in range(2)]
        await staging_pb2_grpc.StagingServiceStub(first).DeleteDocuments(
            staging_pb2.DeleteDocumentsRequest(pipeline_id=pid, document_ids=sorted(deleted))
        )
        for doc_id in deleted:
            expected.pop(doc_id)

    async def settled() -> bool:
        for doc_id in ids:
            try:
                state = await get_document(first, pid, doc_id)
            except aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND and doc_id in deleted:
                    continue
                raise
            if state.stage != "indexed":
                return False
        return True

    async def worker(channel: aio.Channel, name: str, mutations: asyncio.Task[None]) -> None:
        # Bounded by a number of rounds, not by time: each round claims or sleeps briefly.
        for _ in range(600):
            if await _work_once(channel, pid, name) == 0:
                if mutations.done() and await settled():
                    return
                await asyncio.sleep(0.05)
        raise AssertionError(f"{name}: documents still unindexed after 600 rounds")

    mutations = asyncio.create_task(mutate())
    await asyncio.gather(worker(first, "w1", mutations), worker(second, "w2", mutations), mutations)

    # Every document indexed, no lease left, deleted ones gone.
    for doc_id in ids:
        if doc_id in deleted:
            with pytest.raises(aio.AioRpcError) as gone:
                await get_document(second, pid, doc_id)
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
            continue
        state = await get_document(second, pid, doc_id)
        assert state.stage == "indexed", (doc_id, state)
        assert not state.claimed_by, (doc_id, state)
        assert not state.HasField("lease_expires_at"), (doc_id, state)
    # The index holds exactly the current chunks: no stale, no duplicate, no missing.
    rows = [(d, c) for d, c in _index_rows(replicas.sink) if d in set(ids)]
    assert len(rows) == len(set(rows)), sorted(rows)
    assert sorted(rows) == sorted((d, c) for d, chunks in expected.items() for c in chunks)


async def _query(channel: aio.Channel, pipeline_id: str, text: str) -> list[tuple[str, str]]:
    """(document id, chunk id) of the hits of a vector query for ``text``."""
    response = await index_pb2_grpc.IndexServiceStub(channel).Query(
        index_pb2.QueryRequest(
            pipeline_id=pipeline_id, vector=index_pb2.QueryVector(values=embed(text)), top_k=10
        )
    )
    return sorted((hit.document_id, hit.chunk_id) for hit in response.hits)


async def _refused(call: Awaitable[object]) -> aio.AioRpcError:
    """The error of a call that must fail because the pipeline is bound to another database."""
    with pytest.raises(aio.AioRpcError) as refused:
        await call
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value
    assert reason(refused.value) == "SINK_INSTANCE_MISMATCH", refused.value
    assert violations(refused.value) == ["GATEWAY_MILVUS_LITE_PATH"], refused.value
    return refused.value


async def _rows(path: Path, namespace: str) -> list[tuple[str, str]] | None:
    """(document id, chunk id) of every row of ``namespace`` in the Milvus Lite database at ``path``
    (opened here: its gateway is stopped); None if the namespace does not exist."""
    sink = await MilvusSink.open_lite(str(path))
    try:
        if await sink.describe_namespace(namespace) is None:
            return None
        hits = await sink.query(namespace, embed("chunk text"), top_k=100)
        return sorted((hit.document_id, hit.chunk_id) for hit in hits)
    finally:
        await sink.close()


async def test_gateways_on_two_milvus_lite_databases_never_split_a_pipeline(replicas: Replicas) -> None:
    # Gateway A on database a.db, gateway B on b.db, each forwarding to its own claimer.
    paths = [replicas.tmp / f"split-{name}-{uuid.uuid4().hex[:6]}.db" for name in "ab"]

    def start(index: int) -> tuple[ServiceProcess, str, str]:
        return start_gateway(
            replicas.claimers[index],
            replicas.tmp,
            replicas.traces,
            GATEWAY_MILVUS_LITE_PATH=str(paths[index]),
            **replicas.s3_env,
        )

    milvus_lite = pipeline_pb2.SINK_MILVUS_LITE
    with Processes() as processes:
        (_, address_a, _), (_, address_b, _) = processes.add(start(0)), processes.add(start(1))
        for process in processes.started:
            process.wait_ready(timeout=60)
        async with aio.insecure_channel(address_a) as a, aio.insecure_channel(address_b) as b:
            # The first write through A binds the pipeline to a.db.
            pid = await create_pipeline(a, sink=milvus_lite)
            await stage(a, pid, [document("d1", chunks=2)])
            leases = await claim(a, pid, worker="wa", lease_seconds=120)
            chunks = [c for r in await read_chunks(a, pid, leases, worker="wa") for c in r.chunks]
            results = await write_document(a, pid, "wa", leases["d1"], "d1", chunks)
            assert [(r.vectors_written, r.HasField("error")) for r in results] == [(2, False)], results

            # B refuses the pipeline: queries, writes, deletions (of the pipeline, of a document),
            # naming its setting and a.db.
            error = await _refused(_query(b, pid, "chunk text d1 0"))
            assert str(paths[0]) in (error.details() or ""), error.details()
            assert str(paths[1]) in (error.details() or ""), error.details()
            await stage(b, pid, [document("d2", chunks=2)])
            leases = await claim(b, pid, worker="wb", lease_seconds=120)
            chunks = [c for r in await read_chunks(b, pid, leases, worker="wb") for c in r.chunks]
            await _refused(write_document(b, pid, "wb", leases["d2"], "d2", chunks))
            await _refused(
                pipeline_pb2_grpc.PipelineServiceStub(b).DeletePipeline(
                    pipeline_pb2.DeletePipelineRequest(pipeline_id=pid)
                )
            )
            await _refused(
                staging_pb2_grpc.StagingServiceStub(b).DeleteDocuments(
                    staging_pb2.DeleteDocumentsRequest(pipeline_id=pid, document_ids=["d1"])
                )
            )
            assert (await get_document(b, pid, "d1")).stage == "indexed"  # nothing deleted
            # Nothing was written or moved: d2 is still held by wb, and its write through A
            # (the same lease) indexes it in a.db.
            state = await get_document(a, pid, "d2")
            assert (state.stage, state.claimed_by) == ("embedding", "wb"), state
            results = await write_document(a, pid, "wb", leases["d2"], "d2", chunks)
            assert [(r.vectors_written, r.HasField("error")) for r in results] == [(2, False)], results
            expected = [("d1", "d1-0"), ("d1", "d1-1"), ("d2", "d2-0"), ("d2", "d2-1")]
            assert await _query(a, pid, "chunk text d1 0") == expected

            # A pipeline first used through B is bound to b.db, and A refuses it.
            other = await create_pipeline(b, sink=milvus_lite)
            assert await _query(b, other, "anything") == []
            await _refused(_query(a, other, "anything"))

    # A restarted on a.db is the same instance (the id lives in the database directory).
    with Processes() as processes:
        _, address_a, _ = processes.add(start(0))
        processes.started[0].wait_ready(timeout=60)
        async with aio.insecure_channel(address_a) as a:
            assert await _query(a, pid, "chunk text d2 1") == expected

    # From the stores: a.db holds exactly the pipeline's four rows, b.db nothing of it.
    namespace = effective_namespace(pid, "")
    assert await _rows(paths[0], namespace) == expected
    assert await _rows(paths[1], namespace) is None


async def test_orphan_sweeps_of_two_gateways_never_take_a_staged_documents_chunks(
    replicas: Replicas, s3: SeaweedS3
) -> None:
    """Two gateways stage concurrently while both sweep orphan packs every 0.05 s with no age
    limit, so that sweeps regularly find packs another gateway (or the same one) has written and
    not yet recorded. Afterwards every document's backing object exists in S3 and every chunk
    reads back (the gateways have no chunk cache: reads go to S3)."""
    sweeping = {
        "GATEWAY_PACK_SWEEP_SECONDS": "0.05",
        "GATEWAY_PACK_ORPHAN_AGE_SECONDS": "0",
        "GATEWAY_CACHE_BACKEND": "none",
        "GATEWAY_DEFAULT_SINK": "turbopuffer",
        "GATEWAY_TURBOPUFFER_API_KEY": replicas.sink.fake.api_key,
        "GATEWAY_TURBOPUFFER_BASE_URL": replicas.sink.fake.base_url,
    }
    bucket = replicas.s3_env["S3_BUCKET"]
    with Processes() as processes:
        gateways = [
            processes.add(
                start_gateway(claimer, replicas.tmp, replicas.traces, **sweeping, **replicas.s3_env)
            )
            for claimer in replicas.claimers
        ]
        for process in processes.started:
            process.wait_ready(timeout=60)
        async with aio.insecure_channel(gateways[0][1]) as a, aio.insecure_channel(gateways[1][1]) as b:
            pid = await create_pipeline(a)
            expected: dict[str, list[str]] = {}
            retried = 0

            async def stager(channel: aio.Channel, name: str) -> None:
                nonlocal retried
                for call in range(8):
                    batch = [document(f"{name}-{call}-{i}", chunks=2) for i in range(3)]
                    # A staging whose pack was swept 4 times in a row fails UNAVAILABLE, whole:
                    # staged again, as any client does.
                    for _ in range(20):
                        try:
                            results = await stage(channel, pid, batch)
                            break
                        except aio.AioRpcError as error:
                            if error.code() != grpc.StatusCode.UNAVAILABLE:
                                raise
                            retried += 1
                    else:
                        raise AssertionError(f"{name}: staging call {call} failed 20 times")
                    assert all(not r.HasField("error") for r in results), results
                    for doc in batch:
                        expected[doc.id] = [chunk.id for chunk in doc.chunks]

            await asyncio.gather(
                *(stager(channel, f"{side}{n}") for side, channel in (("a", a), ("b", b)) for n in range(3))
            )

            # From the stores: every document's backing object exists.
            claimer = ClaimerClient(open_channel(replicas.claimers[0], metadata=claimer_metadata()))
            try:
                checks = await claimer.probe(pid, sorted(expected))
            finally:
                await claimer.channel.close()
            assert all(check.found for check in checks), checks
            objects = set(pack_keys(s3, bucket, pid))
            missing = [c.document_id for c in checks if object_key_of(c.backing) not in objects]
            assert missing == [], missing
            # And every chunk reads back, through the gateway that did not stage it as often.
            leases = await claim(b, pid, limit=len(expected), worker="reader", lease_seconds=120)
            assert sorted(leases) == sorted(expected)
            read: dict[str, list[str]] = {}
            for response in await read_chunks(b, pid, leases, worker="reader"):
                assert not response.HasField("error"), response
                read.setdefault(response.document_id, []).extend(c.id for c in response.chunks)
            assert read == expected
            rewritten = [
                sum(
                    value
                    for labels, value in metric_samples(http, "hevlayer_gateway_pack_cleanup_total")
                    if labels.get("cause") == "rewritten"
                )
                for _, _, http in gateways
            ]
            print(
                f"documents {len(expected)}, packs rewritten after a sweep {rewritten}, "
                f"calls retried {retried}"
            )
