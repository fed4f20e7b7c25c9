"""Pipelines that cannot touch each other, through a real claimer and gateway: a target
namespace already owned in the sink is refused (nothing written), DeletePipeline drops the
pipeline's namespace so that the pipeline created again serves nothing old (Milvus Lite), a
sink that fails the drop fails the call before anything is deleted and the retry finishes it
(Turbopuffer fake), and the claimer refuses a backing in another pipeline's packs.

Every call goes through ``hevlayer.client`` except RecordStaged, the claimer's internal RPC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence

import grpc
import pytest
from grpc import aio
from support.fakes.turbopuffer import FakeTurbopufferThread
from support.leases import CLAIM_STAGE, WORKER
from support.pipelines import unique
from support.stacks import GatewayStack, start_stack

from hevlayer.api.claimer.v1 import document_state_pb2 as dpb
from hevlayer.api.claimer.v1 import document_state_pb2_grpc
from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.client import (
    AlreadyExists,
    Claim,
    Client,
    DocumentVectors,
    NotFound,
    Pipeline,
    Unavailable,
    WriteOutcome,
)
from hevlayer.client.channel import open_channel
from hevlayer.client.naming import default_namespace, incarnation, pack_prefix
from hevlayer.common.errors import status_from_rpc_error
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.testing import claimer_metadata


@pytest.fixture
async def client(gateway_stack: GatewayStack) -> AsyncIterator[Client]:
    async with Client.connect(gateway_stack.gateway_address) as connected:
        yield connected


async def index_document(
    client: Client, pipeline_id: str, document_id: str, vectors: Sequence[Sequence[float]]
) -> None:
    """Stage ``document_id`` with one chunk per vector, claim it and write its vectors."""
    document = document_pb2.Document(id=document_id)
    for j in range(len(vectors)):
        document.chunks.add(id=f"{document_id}-{j}", text=f"text {document_id} {j}")
    await client.staging.stage(pipeline_id, [document])
    leases = await client.leases.claim(Claim(pipeline_id, WORKER, "pending", CLAIM_STAGE), 10)
    assert [lease.document_id for lease in leases] == [document_id]
    results = await client.index.write_vectors(
        pipeline_id,
        [
            DocumentVectors(
                leases[0],
                [document_pb2.Vector(id=f"{document_id}-{j}", values=list(v)) for j, v in enumerate(vectors)],
            )
        ],
        worker_id=WORKER,
        from_stage=CLAIM_STAGE,
    )
    assert [r.outcome for r in results] == [WriteOutcome.INDEXED], results


async def hits(client: Client, pipeline_id: str, vector: Sequence[float]) -> list[str]:
    return [hit.document_id for hit in await client.index.query(pipeline_id, vector=vector, top_k=10)]


def namespace_field(error: AlreadyExists) -> str:
    assert [v.field for v in error.violations] == ["pipeline.target_namespace"]
    return error.violations[0].description


# -- Milvus Lite, the default sink ------------------------------------------------------------


async def test_a_recreated_pipeline_serves_nothing_old(client: Client) -> None:
    pid = unique("again")
    await client.pipelines.create(Pipeline(id=pid))
    await index_document(client, pid, "old", [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    assert await hits(client, pid, [1.0, 0.0, 0.0, 0.0]) == ["old", "old"]

    deleted = await client.pipelines.delete(pid)
    assert deleted.deleted_documents == 1

    await client.pipelines.create(Pipeline(id=pid))
    assert await hits(client, pid, [1.0, 0.0, 0.0, 0.0]) == []
    # the namespace is gone, not emptied: the new pipeline may take another dimension
    await index_document(client, pid, "new", [[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    assert await hits(client, pid, [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]) == ["new"]
    assert (await client.pipelines.get(pid)).dimension == 8


async def test_a_namespace_owned_by_another_pipeline_is_refused(client: Client) -> None:
    owner = unique("owner")
    await client.pipelines.create(Pipeline(id=owner))
    await index_document(client, owner, "mine", [[1.0, 0.0, 0.0, 0.0]])
    before = sorted(p.id for p in await client.pipelines.list())

    intruder = unique("intruder")
    with pytest.raises(AlreadyExists) as caught:
        await client.pipelines.create(Pipeline(id=intruder, target_namespace=default_namespace(owner)))
    assert repr(owner) in namespace_field(caught.value)

    assert sorted(p.id for p in await client.pipelines.list()) == before
    with pytest.raises(NotFound):
        await client.pipelines.get(intruder)
    assert await hits(client, owner, [1.0, 0.0, 0.0, 0.0]) == ["mine"]


async def test_the_claimer_refuses_a_backing_of_another_pipeline(
    client: Client, gateway_stack: GatewayStack
) -> None:
    victim = unique("victim")
    await client.pipelines.create(Pipeline(id=victim))
    await index_document(client, victim, "precious", [[1.0, 0.0, 0.0, 0.0]])
    attacker = unique("attacker")
    await client.pipelines.create(Pipeline(id=attacker))
    created = (await client.pipelines.get(victim)).create_time.ToMicroseconds()
    foreign = f"{pack_prefix(victim, incarnation(created))}0000000000000001-000000000000.pack#8:10"

    # Straight at the claimer, with the internal token: even the gateway cannot point a backing
    # outside the pipeline's own packs.
    channel = open_channel(gateway_stack.claimer_address, metadata=claimer_metadata())
    try:
        documents = document_state_pb2_grpc.DocumentStateServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as caught:
            await documents.RecordStaged(
                dpb.RecordStagedRequest(
                    pipeline_id=attacker,
                    records=[dpb.StagedRecord(document_id="x", content_hash="h", backing=foreign)],
                )
            )
    finally:
        await channel.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_from_rpc_error(caught.value)
    assert status.message.startswith("records[0].backing: ")
    assert dict((await client.pipelines.status(attacker)).counts) == {}
    assert dict((await client.pipelines.status(victim)).counts) == {"indexed": 1}
    assert await hits(client, victim, [1.0, 0.0, 0.0, 0.0]) == ["precious"]


async def test_a_pipeline_of_a_sink_this_gateway_has_no_settings_for_is_deleted(client: Client) -> None:
    """This gateway has no Turbopuffer settings: no write through it can have reached
    Turbopuffer, so there is no namespace to drop and the deletion goes on."""
    pid = unique("unconfigured")
    await client.pipelines.create(Pipeline(id=pid, sink=pipeline_pb2.SINK_TURBOPUFFER))
    await client.pipelines.delete(pid)
    with pytest.raises(NotFound):
        await client.pipelines.get(pid)


# -- Turbopuffer (the fake): a drop that fails --------------------------------------------------


@pytest.fixture(scope="module")
def turbopuffer() -> Iterator[FakeTurbopufferThread]:
    server = FakeTurbopufferThread()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def puffer_stack(
    database_url: str,
    s3: SeaweedS3,
    tmp_path_factory: pytest.TempPathFactory,
    turbopuffer: FakeTurbopufferThread,
) -> Iterator[GatewayStack]:
    stack = start_stack(
        database_url,
        s3,
        tmp_path_factory.mktemp("isolation-turbopuffer"),
        {
            "GATEWAY_TURBOPUFFER_API_KEY": "tpuf-test-key",
            "GATEWAY_TURBOPUFFER_BASE_URL": turbopuffer.fake.base_url,
            "GATEWAY_TURBOPUFFER_MAX_RETRIES": "0",
            "GATEWAY_SINK_TIMEOUT_SECONDS": "5",
        },
    )
    try:
        yield stack
    finally:
        stack.stop()


async def test_a_failed_drop_deletes_nothing_and_the_retry_finishes(
    puffer_stack: GatewayStack, turbopuffer: FakeTurbopufferThread
) -> None:
    async with Client.connect(puffer_stack.gateway_address) as client:
        pid = unique("puffer")
        await client.pipelines.create(Pipeline(id=pid, sink=pipeline_pb2.SINK_TURBOPUFFER))
        await index_document(client, pid, "doc", [[1.0, 0.0, 0.0, 0.0]])
        namespace = default_namespace(pid)
        assert namespace in turbopuffer.fake.namespaces

        turbopuffer.fake.fail_next(503, message="turbopuffer is down")
        # DeletePipeline is not idempotent: the client library never repeats it by itself.
        with pytest.raises(Unavailable) as caught:
            await client.pipelines.delete(pid)
        assert caught.value.reason == "SINK_UNAVAILABLE"
        assert namespace in turbopuffer.fake.namespaces
        assert dict((await client.pipelines.status(pid)).counts) == {"indexed": 1}
        assert await hits(client, pid, [1.0, 0.0, 0.0, 0.0]) == ["doc"]

        deleted = await client.pipelines.delete(pid)
        assert deleted.deleted_documents == 1
        assert namespace not in turbopuffer.fake.namespaces
        with pytest.raises(NotFound):
            await client.pipelines.get(pid)
        deletes = [r for r in turbopuffer.fake.requests if r.method == "DELETE"]
        assert {r.path for r in deletes} == {f"/v2/namespaces/{namespace}"}
