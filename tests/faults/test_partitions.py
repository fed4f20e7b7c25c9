"""Delay and drop between the gateway and the claimer, cuts between them in the middle of a call,
and a cut between the gateway and S3, through the loopback proxy of ``tests/faults/proxy.py``
(the gateway's ``CLAIMER_ADDRESS``, or its ``S3_ENDPOINT_URL``, is the proxy's).

A cut in the middle of a call falls at a point chosen by the bytes of the call's request (a
document id, a content hash, a worker id) and by what the claimer's store shows, never by a timer:
the request reaches the claimer, the test waits until its effect is in the store (read from the
claimer directly, not through the proxy), and only then cuts the link, so that the answer is lost.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc
import pytest
from faults.proxy import FaultProxy
from faults.services import Processes, write_document
from grpc import aio
from support.fakes.turbopuffer import FakeTurbopufferThread
from support.leases import claim, read_chunks
from support.pipelines import create_pipeline
from support.polling import eventually
from support.processes import start_claimer, start_gateway
from support.s3 import pack_keys
from support.service_http import metric_samples
from support.staging import document, get_document, stage
from support.vectors import DIM

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2 as ix
from hevlayer.api.lease.v1 import lease_pb2
from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.client.channel import open_channel
from hevlayer.client.naming import effective_namespace
from hevlayer.common.errors import NotFound
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.testing import claimer_metadata
from hevlayer.gateway.claimer_client import ClaimerClient

WORKER = "partition-worker"


@dataclass
class Partitioned:
    """A claimer, and a gateway reaching it through ``proxy``, on the Turbopuffer fake."""

    proxy: FaultProxy
    gateway: str
    gateway_http: str
    claimer_address: str
    sink: FakeTurbopufferThread
    s3: SeaweedS3
    bucket: str


@pytest.fixture(scope="module")
def partitioned(
    database_url: str, s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Partitioned]:
    """A claimer, and a gateway whose ``CLAIMER_ADDRESS`` is the proxy's. The sink is the
    Turbopuffer fake, whose rows the test reads in process. The gateway's calls to the claimer
    have 30 s (a call must still be waiting when the test cuts it), and a pack whose RecordStaged
    answer was lost is checked 0.5 s later."""
    tmp = tmp_path_factory.mktemp("partitions")
    traces = tmp / "traces.jsonl"
    bucket = f"partitions-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(bucket)
    sink = FakeTurbopufferThread()
    base_url = sink.start()
    proxy: FaultProxy | None = None
    try:
        with Processes() as processes:
            claimer, claimer_address, _ = processes.add(
                start_claimer(
                    database_url, tmp, traces, PIPELINE_DEFAULT_SINK="turbopuffer", **s3.client_env(bucket)
                )
            )
            proxy = FaultProxy(claimer_address).start()
            claimer.wait_ready(timeout=60)
            gateway, gateway_address, gateway_http = processes.add(
                start_gateway(
                    proxy.address,
                    tmp,
                    traces,
                    GATEWAY_FORWARD_TIMEOUT_SECONDS="30",
                    GATEWAY_ORPHAN_RETRY_SECONDS="0.5",
                    GATEWAY_DEFAULT_SINK="turbopuffer",
                    GATEWAY_TURBOPUFFER_API_KEY=sink.fake.api_key,
                    GATEWAY_TURBOPUFFER_BASE_URL=base_url,
                    GATEWAY_TURBOPUFFER_MAX_RETRIES="0",
                    **s3.client_env(bucket),
                )
            )
            gateway.wait_ready(timeout=60)
            yield Partitioned(proxy, gateway_address, gateway_http, claimer_address, sink, s3, bucket)
    finally:
        if proxy is not None:
            proxy.stop()
        sink.stop()


@pytest.fixture
async def channel(partitioned: Partitioned) -> AsyncIterator[aio.Channel]:
    """A channel to the gateway (its calls to the claimer go through the proxy, left plain after
    the test whatever it armed)."""
    opened = aio.insecure_channel(partitioned.gateway)
    try:
        yield opened
    finally:
        partitioned.proxy.reset()
        await opened.close()


@pytest.fixture
async def store(partitioned: Partitioned) -> AsyncIterator[ClaimerClient]:
    """The claimer called directly (not through the proxy), as the gateway calls it: what its
    store holds while the gateway's link is held or cut."""
    channel = open_channel(partitioned.claimer_address, metadata=claimer_metadata())
    try:
        yield ClaimerClient(channel, timeout=30)
    finally:
        await channel.close()


async def test_a_cut_link_fails_calls_and_the_flow_completes_after(
    partitioned: Partitioned, channel: aio.Channel
) -> None:
    proxy = partitioned.proxy
    pid = await create_pipeline(channel)
    docs = [document(f"p-{i}", chunks=2) for i in range(4)]
    # Partitioned: every connection to the claimer is cut, new ones are refused.
    proxy.refuse = True
    proxy.cut()
    try:
        with pytest.raises(aio.AioRpcError) as cut:
            await stage(channel, pid, docs)
        assert cut.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), (
            cut.value.details()
        )
    finally:
        proxy.refuse = False
    # Slow but connected: the calls answer (once the gateway's channel has reconnected: until
    # then they fail UNAVAILABLE, and the caller retries).
    proxy.delay = 0.02
    try:
        results = await retried(lambda: stage(channel, pid, docs), "staging after the partition")
    finally:
        proxy.delay = 0.0
    assert [r.document_id for r in results] == [d.id for d in docs]
    # Each document once, with its chunks, and indexed once written.
    leases = await claim(channel, pid, worker=WORKER, lease_seconds=60)
    assert sorted(leases) == sorted(d.id for d in docs)
    responses = await read_chunks(channel, pid, leases, worker=WORKER)
    for doc in docs:
        chunks = [c for r in responses if r.document_id == doc.id for c in r.chunks]
        assert [c.id for c in chunks] == [c.id for c in doc.chunks]
        written = await write_document(channel, pid, WORKER, leases[doc.id], doc.id, chunks)
        assert [r.vectors_written for r in written] == [2], written
        state = await get_document(channel, pid, doc.id)
        assert state.stage == "indexed"
        assert state.chunk_count == 2


@dataclass
class S3Partitioned:
    proxy: FaultProxy
    gateway: str
    s3: SeaweedS3
    bucket: str


@pytest.fixture(scope="module")
def s3_partitioned(
    database_url: str, s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Partitioned]:
    """A claimer and a gateway whose S3 endpoint is the proxy (the claimer reaches S3 directly)."""
    tmp = tmp_path_factory.mktemp("s3-partition")
    traces = tmp / "traces.jsonl"
    bucket = f"s3-partition-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(bucket)
    proxy = FaultProxy(s3.endpoint_url.removeprefix("http://")).start()
    try:
        with Processes() as processes:
            claimer, claimer_address, _ = processes.add(
                start_claimer(database_url, tmp, traces, **s3.client_env(bucket))
            )
            claimer.wait_ready(timeout=60)
            through_proxy = {**s3.client_env(bucket), "S3_ENDPOINT_URL": f"http://{proxy.address}"}
            gateway, gateway_address, _ = processes.add(
                start_gateway(claimer_address, tmp, traces, **through_proxy)
            )
            gateway.wait_ready(timeout=60)
            yield S3Partitioned(proxy, gateway_address, s3, bucket)
    finally:
        proxy.stop()


def _large_document(doc_id: str) -> document_pb2.Document:
    """A document of 3 chunks of 40,000 characters that do not compress (the pack is far larger
    than the proxy's cut mark)."""
    doc = document_pb2.Document(id=doc_id)
    for j in range(3):
        doc.chunks.add(id=f"{doc_id}-{j}", text=base64.b64encode(os.urandom(30_000)).decode())
    return doc


async def test_a_cut_to_s3_in_the_middle_of_a_pack_write_stages_nothing_and_a_retry_stages_all(
    s3_partitioned: S3Partitioned,
) -> None:
    proxy = s3_partitioned.proxy
    async with aio.insecure_channel(s3_partitioned.gateway) as channel:
        pid = await create_pipeline(channel)
        docs = [_large_document(f"big-{i}") for i in range(8)]  # about 960 KB of chunk text
        # The link to S3 is cut once 128 KiB of the staging's upload have gone through, and stays
        # down: the pack PUT breaks in the middle of its body, and the client's retries are refused.
        proxy.cut_after_upload(128 * 1024)
        try:
            with pytest.raises(aio.AioRpcError) as cut:
                await stage(channel, pid, docs)
            assert proxy.tripped, "the cut mark was never reached"
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE, cut.value.details()
        finally:
            proxy.refuse = False
        # Nothing half-written is visible: no document known, no pack object.
        for doc in docs:
            with pytest.raises(aio.AioRpcError) as unknown:
                await get_document(channel, pid, doc.id)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND, doc.id
        assert pack_keys(s3_partitioned.s3, s3_partitioned.bucket, pid) == []
        # The link is back: the same call stages every document, whose chunks read back whole.
        results = await stage(channel, pid, docs)
        assert [(r.document_id, r.HasField("error")) for r in results] == [(d.id, False) for d in docs]
        leases = await claim(channel, pid, worker=WORKER, lease_seconds=60)
        assert sorted(leases) == sorted(d.id for d in docs)
        responses = await read_chunks(channel, pid, leases, worker=WORKER)
        for doc in docs:
            read = [(c.id, c.text) for r in responses if r.document_id == doc.id for c in r.chunks]
            assert read == [(c.id, c.text) for c in doc.chunks], doc.id


# ---- cuts in the middle of a call --------------------------------------------------------


T = TypeVar("T")


async def cut_in_the_middle(
    partitioned: Partitioned, call: Awaitable[T], effect: Callable[[], Awaitable[bool]], what: str
) -> aio.AioRpcError:
    """Run ``call`` (the proxy armed with ``drop_answers_after``): once its request has reached
    the claimer and ``effect`` shows it committed there, cut the link, so that the answer is lost;
    the error the caller got."""
    task = asyncio.ensure_future(call)
    try:
        await eventually(
            _is_set(partitioned.proxy), timeout=30, what=f"the request of {what} to pass the proxy"
        )
        await eventually(effect, timeout=30, what=f"{what} to commit in the claimer")
        assert not task.done(), f"{what} answered although its answer was held back"
    finally:
        partitioned.proxy.cut()
    with pytest.raises(aio.AioRpcError) as cut:
        await task
    return cut.value


def _is_set(proxy: FaultProxy) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return proxy.marked.is_set()

    return check


def sink_rows(partitioned: Partitioned, pid: str, document_ids: set[str]) -> list[tuple[str, str, int]]:
    """Every row the sink holds (physically, hidden or not) of ``document_ids`` in the pipeline's
    namespace: (document id, chunk id, fencing token), sorted; a row held twice appears twice."""
    namespace = partitioned.sink.fake.namespaces.get(effective_namespace(pid, ""))
    rows = list(namespace.documents.values()) if namespace is not None else []
    return sorted(
        (str(row["document_id"]), str(row["chunk_id"]), int(row["fencing_token"]))
        for row in rows
        if row["document_id"] in document_ids
    )


def cleanup_count(partitioned: Partitioned, cause: str) -> float:
    """The gateway's ``hevlayer_gateway_pack_cleanup_total`` for ``cause``."""
    samples = metric_samples(partitioned.gateway_http, "hevlayer_gateway_pack_cleanup_total")
    return sum(value for labels, value in samples if labels.get("cause") == cause)


async def retried(call: Callable[[], Awaitable[T]], what: str) -> T:
    """``call()``, retried while it fails UNAVAILABLE (the gateway's channel to the claimer
    reconnecting after a cut or a refusal), as a client retries; at most 20 times, each printed."""
    for attempt in range(20):
        try:
            return await call()
        except aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == 19:
                raise
            print(f"{what}: attempt {attempt + 1} failed UNAVAILABLE ({error.details()}); retrying")
            await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: unreachable")


async def index_and_audit(
    channel: aio.Channel, partitioned: Partitioned, pid: str, docs: list[document_pb2.Document], worker: str
) -> None:
    """Claim every document of ``docs`` (each exactly once), read its chunks whole, write them,
    and check the end state from the stores: each document ``indexed`` with its chunk count and
    no lease, nothing left to claim, and the sink holding exactly its chunks under the token
    written, each once."""
    leases = await claim(channel, pid, worker=worker, lease_seconds=60)
    assert sorted(leases) == sorted(d.id for d in docs)
    responses = await read_chunks(channel, pid, leases, worker=worker)
    for doc in docs:
        chunks = [c for r in responses if r.document_id == doc.id for c in r.chunks]
        assert [(c.id, c.text) for c in chunks] == [(c.id, c.text) for c in doc.chunks], doc.id
        written = await write_document(channel, pid, worker, leases[doc.id], doc.id, chunks)
        assert [(r.outcome, r.vectors_written) for r in written] == [(ix.WRITE_OUTCOME_INDEXED, len(chunks))]
    assert await claim(channel, pid, worker=worker) == {}
    await audit(channel, partitioned, pid, docs, leases)


async def audit(
    channel: aio.Channel,
    partitioned: Partitioned,
    pid: str,
    docs: list[document_pb2.Document],
    tokens: dict[str, int],
) -> None:
    """Each document ``indexed`` with its chunk count and no lease; the sink holds exactly its
    chunks under the fencing token they were written with (``tokens``), each once."""
    for doc in docs:
        state = await get_document(channel, pid, doc.id)
        assert (state.stage, state.chunk_count, state.claimed_by) == ("indexed", len(doc.chunks), ""), state
    assert sink_rows(partitioned, pid, {d.id for d in docs}) == sorted(
        (doc.id, chunk.id, tokens[doc.id]) for doc in docs for chunk in doc.chunks
    )


@pytest.mark.parametrize("skip_unchanged", [True, False], ids=["skip-unchanged", "restage"])
async def test_a_staging_whose_answer_is_cut_after_the_claimer_recorded_it_is_staged_once(
    partitioned: Partitioned, channel: aio.Channel, store: ClaimerClient, skip_unchanged: bool
) -> None:
    pid = await create_pipeline(channel, dimension=DIM)
    tag = uuid.uuid4().hex
    docs = [document(f"rec-{i}", chunks=2) for i in range(4)]
    for i, doc in enumerate(docs):
        # The hash rides on RecordStaged only (GetContentHashes asks by id): it marks that call.
        doc.content_hash = f"test:{tag}:{i}"
    kept = cleanup_count(partitioned, "kept")

    async def recorded() -> bool:
        try:
            states = [await store.describe(pid, doc.id) for doc in docs]
        except NotFound:
            return False
        return all(state.stage == "pending" for state in states)

    # RecordStaged reaches the claimer and commits; its answer is lost.
    partitioned.proxy.drop_answers_after(docs[-1].content_hash.encode())
    error = await cut_in_the_middle(
        partitioned, stage(channel, pid, docs, skip_unchanged=skip_unchanged), recorded, "RecordStaged"
    )
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    first = {doc.id: (await get_document(channel, pid, doc.id)).fencing_token for doc in docs}
    [pack] = pack_keys(partitioned.s3, partitioned.bucket, pid)

    # The gateway checks the pack whose RecordStaged outcome it did not learn: documents point
    # into it, so it is kept.
    async def checked() -> bool:
        return cleanup_count(partitioned, "kept") > kept

    await eventually(checked, timeout=30, what="the check of the pack whose staging answer was lost")
    assert pack_keys(partitioned.s3, partitioned.bucket, pid) == [pack]

    # The link is back: the caller retries the same call.
    results = await retried(lambda: stage(channel, pid, docs, skip_unchanged=skip_unchanged), "the retry")
    if skip_unchanged:
        # Found unchanged: nothing written, the same fencing tokens, the same pack.
        assert [(r.document_id, r.outcome) for r in results] == [
            (d.id, staging_pb2.STAGE_OUTCOME_UNCHANGED) for d in docs
        ]
        assert {doc.id: (await get_document(channel, pid, doc.id)).fencing_token for doc in docs} == first
        assert pack_keys(partitioned.s3, partitioned.bucket, pid) == [pack]
    else:
        # Staged again as a new version: newer tokens, and the first pack, which no document
        # points into any more, deleted.
        assert [(r.document_id, r.outcome) for r in results] == [
            (d.id, staging_pb2.STAGE_OUTCOME_STAGED) for d in docs
        ]
        assert all(r.fencing_token > first[r.document_id] for r in results)
        [newer] = pack_keys(partitioned.s3, partitioned.bucket, pid)
        assert newer != pack
    for doc in docs:
        assert (await get_document(channel, pid, doc.id)).stage == "pending"

    # Claimed once, read whole, indexed once; the sink holds exactly their chunks.
    await index_and_audit(channel, partitioned, pid, docs, worker=f"rec-worker-{tag[:6]}")


async def test_a_claim_whose_answer_is_cut_comes_back_after_its_lease_and_is_indexed_once(
    partitioned: Partitioned, channel: aio.Channel, store: ClaimerClient
) -> None:
    pid = await create_pipeline(channel, dimension=DIM)
    docs = [document(f"lost-claim-{i}", chunks=2) for i in range(3)]
    await stage(channel, pid, docs)
    lost = f"lost-worker-{uuid.uuid4().hex[:8]}"

    async def leased() -> bool:
        states = [await store.describe(pid, doc.id) for doc in docs]
        return all(state.stage == "embedding" and state.claimed_by == lost for state in states)

    # ClaimDocuments reaches the claimer, which leases the documents to the lost worker (for 2 s);
    # its answer is lost.
    partitioned.proxy.drop_answers_after(lost.encode())
    error = await cut_in_the_middle(
        partitioned, claim(channel, pid, worker=lost, lease_seconds=2), leased, "ClaimDocuments"
    )
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    lost_tokens = {doc.id: (await store.describe(pid, doc.id)).fencing_token for doc in docs}

    # Once the lost lease has run out, they come back: each is claimed exactly once by the next
    # worker (accumulated over the polls: a document returned twice fails).
    worker = f"next-worker-{uuid.uuid4().hex[:8]}"
    claimed: dict[str, int] = {}

    async def reclaimed() -> bool:
        for doc_id, token in (await claim(channel, pid, worker=worker, lease_seconds=60)).items():
            assert doc_id not in claimed, f"{doc_id} claimed twice"
            claimed[doc_id] = token
        return len(claimed) == len(docs)

    await eventually(reclaimed, timeout=60, what="the lost claim's lease to run out")
    assert sorted(claimed) == sorted(d.id for d in docs)
    assert all(claimed[d] > lost_tokens[d] for d in claimed)
    for doc in docs:
        state = await get_document(channel, pid, doc.id)
        # Two attempts: the lost claim and this one.
        assert (state.claimed_by, state.attempts) == (worker, 2), state

    responses = await read_chunks(channel, pid, claimed, worker=worker)
    for doc in docs:
        chunks = [c for r in responses if r.document_id == doc.id for c in r.chunks]
        assert [c.id for c in chunks] == [c.id for c in doc.chunks]
        written = await write_document(channel, pid, worker, claimed[doc.id], doc.id, chunks)
        assert [(r.outcome, r.vectors_written) for r in written] == [(ix.WRITE_OUTCOME_INDEXED, 2)]
    assert await claim(channel, pid, worker=worker) == {}
    await audit(channel, partitioned, pid, docs, claimed)


@pytest.mark.parametrize("answer", ["request-lost", "answer-lost"])
async def test_a_write_whose_move_to_indexed_is_cut_ends_indexed_with_exactly_its_chunks(
    partitioned: Partitioned, channel: aio.Channel, store: ClaimerClient, answer: str
) -> None:
    pid = await create_pipeline(channel, dimension=DIM)
    doc = document(f"move-{answer}", chunks=3)
    await stage(channel, pid, [doc])
    worker = f"move-worker-{uuid.uuid4().hex[:8]}"
    leases = await claim(channel, pid, worker=worker, lease_seconds=60)
    token = leases[doc.id]
    chunks = [c for r in await read_chunks(channel, pid, leases, worker=worker) for c in r.chunks]
    # The one request that carries to_stage "indexed": TransitionDocuments, after the sink write.
    move = lease_pb2.TransitionDocumentsRequest(to_stage="indexed").SerializeToString()
    write = write_document(channel, pid, worker, token, doc.id, chunks)
    expected = [(doc.id, c.id, token) for c in doc.chunks]

    if answer == "request-lost":
        # The move never reaches the claimer: the sink holds the rows, the document is still the
        # worker's.
        partitioned.proxy.cut_before(move)
        try:
            with pytest.raises(aio.AioRpcError) as cut:
                await write
            assert partitioned.proxy.marked.is_set(), "the move to indexed never passed the proxy"
        finally:
            partitioned.proxy.refuse = False
        error = cut.value
        state = await store.describe(pid, doc.id)
        assert (state.stage, state.claimed_by, state.fencing_token) == ("embedding", worker, token)
    else:

        async def moved() -> bool:
            return (await store.describe(pid, doc.id)).stage == "indexed"

        # The move commits in the claimer; its answer is lost.
        partitioned.proxy.drop_answers_after(move)
        error = await cut_in_the_middle(partitioned, write, moved, "the move to indexed")
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    assert sink_rows(partitioned, pid, {doc.id}) == sorted(expected)

    # The worker retries the same write with the same lease.
    results = await retried(lambda: write_document(channel, pid, worker, token, doc.id, chunks), "the retry")
    [result] = results
    if answer == "request-lost":
        # Still held: the write is done again (the same rows, overwritten) and the move lands.
        assert (result.outcome, result.vectors_written) == (ix.WRITE_OUTCOME_INDEXED, 3), result
    else:
        # Already indexed by the lost answer's move: refused, nothing written or removed.
        assert result.outcome == ix.WRITE_OUTCOME_STALE_LEASE, result
        assert result.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0], result
    assert await claim(channel, pid, worker=worker) == {}
    await audit(channel, partitioned, pid, [doc], {doc.id: token})
