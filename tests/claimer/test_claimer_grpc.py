"""The claimer process over real gRPC: LeaseService, DocumentStateService,
error statuses with their BadRequest field names, StreamLeases credits,
EnqueueIds into segments, /metrics, and UNAVAILABLE without PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from support.claimer_grpc import Claimer, new_pipeline, start_bare_claimer
from support.rpc_errors import violations

from hevlayer.api.claimer.v1 import document_state_pb2 as dpb
from hevlayer.api.claimer.v1 import document_state_pb2_grpc
from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.lease.v1 import lease_pb2 as lpb
from hevlayer.api.lease.v1 import lease_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2 as ppb
from hevlayer.api.pipeline.v1 import pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.client.naming import incarnation, pack_prefix
from hevlayer.common.errors import status_from_rpc_error
from hevlayer.devstack.ports import free_port


def has_retry_info(error: aio.AioRpcError) -> bool:
    return any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status_from_rpc_error(error).details)


async def packs_of(channel: aio.Channel, pid: str) -> str:
    """The prefix of the pipeline's chunk packs (backings must name a pack under it)."""
    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
    got = await stub.GetPipeline(ppb.GetPipelineRequest(pipeline_id=pid))
    return pack_prefix(pid, incarnation(got.pipeline.create_time.ToMicroseconds()))


async def stage_docs(channel: aio.Channel, pid: str, ids: list[str]) -> str:
    """RecordStaged for ``ids`` (document ``d`` in pack ``d``: ``<packs>d#0:1``); the packs' prefix."""
    packs = await packs_of(channel, pid)
    stub = document_state_pb2_grpc.DocumentStateServiceStub(channel)
    await stub.RecordStaged(
        dpb.RecordStagedRequest(
            pipeline_id=pid,
            records=[
                dpb.StagedRecord(document_id=d, content_hash="h", backing=f"{packs}{d}#0:1") for d in ids
            ],
        )
    )
    return packs


async def status(channel: aio.Channel, pid: str) -> ppb.PipelineStatus:
    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
    response: ppb.GetPipelineStatusResponse = await stub.GetPipelineStatus(
        ppb.GetPipelineStatusRequest(pipeline_id=pid)
    )
    return response.status


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 10001}, "limit"),
        ({"worker_id": ""}, "worker_id"),
        ({"claim_stage": "pending"}, "claim_stage"),
        ({"claim_stage": "failed"}, "claim_stage"),
        ({"stage": "embedding"}, "claim_stage"),
        ({"stage": "Not A Stage"}, "stage"),
        ({"lease_seconds": 86401}, "lease_seconds"),
    ],
)
async def test_claim_invalid_argument_names_field(
    channel: aio.Channel, overrides: dict[str, object], field: str
) -> None:
    pid = await new_pipeline(channel)
    fields: dict[str, object] = {
        "pipeline_id": pid,
        "stage": "pending",
        "claim_stage": "embedding",
        "limit": 10,
        "worker_id": "w",
        **overrides,
    }
    with pytest.raises(aio.AioRpcError) as caught:
        await lease_pb2_grpc.LeaseServiceStub(channel).ClaimDocuments(lpb.ClaimDocumentsRequest(**fields))  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == [field]
    assert field in (caught.value.details() or "")


async def test_unknown_pipeline_is_not_found(channel: aio.Channel) -> None:
    stub = lease_pb2_grpc.LeaseServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.ClaimDocuments(
            lpb.ClaimDocumentsRequest(
                pipeline_id="no-such-pipe", stage="pending", claim_stage="embedding", limit=1, worker_id="w"
            )
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    docs = document_state_pb2_grpc.DocumentStateServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as caught:
        await docs.DescribeDocument(dpb.DescribeDocumentRequest(pipeline_id="no-such-pipe", document_id="a"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_transition_and_heartbeat_validation(channel: aio.Channel) -> None:
    pid = await new_pipeline(channel)
    stub = lease_pb2_grpc.LeaseServiceStub(channel)
    ref = [document_pb2.LeaseRef(document_id="a", fencing_token=1)]
    cases = [
        ({"from_stage": "embedding", "worker_id": "w", "to_stage": "embedding"}, "to_stage"),
        ({"from_stage": "pending", "worker_id": "w", "to_stage": "indexed"}, "from_stage"),
        ({"from_stage": "embedding", "worker_id": "", "to_stage": "indexed"}, "worker_id"),
    ]
    for fields, field in cases:
        with pytest.raises(aio.AioRpcError) as caught:
            await stub.TransitionDocuments(
                lpb.TransitionDocumentsRequest(
                    pipeline_id=pid,
                    documents=ref,
                    from_stage=fields["from_stage"],
                    worker_id=fields["worker_id"],
                    to_stage=fields["to_stage"],
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(caught.value) == [field]
    bad_ref = [document_pb2.LeaseRef(document_id="")]
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.HeartbeatLeases(
            lpb.HeartbeatLeasesRequest(pipeline_id=pid, stage="embedding", worker_id="w", leases=bad_ref)
        )
    assert violations(caught.value) == ["leases[0].document_id"]
    docs = document_state_pb2_grpc.DocumentStateServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as caught:
        await docs.RecordStaged(
            dpb.RecordStagedRequest(
                pipeline_id=pid,
                records=[dpb.StagedRecord(document_id="a"), dpb.StagedRecord(document_id="a")],
            )
        )
    assert violations(caught.value) == ["records[1].document_id"]


async def test_claim_heartbeat_transition_round_trip(channel: aio.Channel) -> None:
    pid = await new_pipeline(channel)
    ids = [f"doc-{i}" for i in range(30)]
    packs = await stage_docs(channel, pid, ids)
    stub = lease_pb2_grpc.LeaseServiceStub(channel)
    claimed = await stub.ClaimDocuments(
        lpb.ClaimDocumentsRequest(
            pipeline_id=pid,
            stage="pending",
            claim_stage="embedding",
            limit=20,
            worker_id="gpu-0",
            lease_seconds=60,
        )
    )
    assert len(claimed.leases) == 20
    lease = claimed.leases[0]
    assert (lease.stage, lease.worker_id, lease.attempts, lease.content_hash) == (
        "embedding",
        "gpu-0",
        1,
        "h",
    )
    assert lease.expires_at.seconds > 0
    refs = [
        document_pb2.LeaseRef(document_id=x.document_id, fencing_token=x.fencing_token)
        for x in claimed.leases
    ]
    beat = await stub.HeartbeatLeases(
        lpb.HeartbeatLeasesRequest(pipeline_id=pid, stage="embedding", worker_id="gpu-0", leases=refs[:3])
    )
    assert [r.extended for r in beat.results] == [True] * 3
    docs = document_state_pb2_grpc.DocumentStateServiceStub(channel)
    check = await docs.CheckLeases(
        dpb.CheckLeasesRequest(pipeline_id=pid, worker_id="gpu-0", stage="embedding", leases=refs[:2])
    )
    assert [(r.held, r.found, r.backing) for r in check.results] == [
        (True, True, f"{packs}{x.document_id}#0:1") for x in claimed.leases[:2]
    ]
    moved = await stub.TransitionDocuments(
        lpb.TransitionDocumentsRequest(
            pipeline_id=pid,
            documents=[*refs, document_pb2.LeaseRef(document_id="ghost", fencing_token=1)],
            from_stage="embedding",
            worker_id="gpu-0",
            to_stage="indexed",
        )
    )
    outcomes = [r.outcome for r in moved.results]
    assert outcomes == [lpb.TRANSITION_OUTCOME_MOVED] * 20 + [lpb.TRANSITION_OUTCOME_NOT_FOUND]
    assert [r.document_id for r in moved.results[:20]] == [x.document_id for x in claimed.leases]
    assert all(r.fencing_token > x.fencing_token for r, x in zip(moved.results, claimed.leases, strict=False))
    again = await stub.TransitionDocuments(
        lpb.TransitionDocumentsRequest(
            pipeline_id=pid, documents=refs[:1], from_stage="embedding", worker_id="gpu-0", to_stage="indexed"
        )
    )
    assert again.results[0].outcome == lpb.TRANSITION_OUTCOME_NOT_HELD
    current = await status(channel, pid)
    assert dict(current.counts) == {"pending": 10, "indexed": 20}
    assert current.pending_count == 10
    described = await docs.DescribeDocument(dpb.DescribeDocumentRequest(pipeline_id=pid, document_id=ids[0]))
    assert described.document.stage in ("pending", "indexed")
    scanned = [
        d.document_id
        async for batch in docs.ScanDocuments(dpb.ScanDocumentsRequest(pipeline_id=pid))
        for d in batch.documents
    ]
    assert scanned == sorted(ids)
    hashes = await docs.GetContentHashes(dpb.GetContentHashesRequest(pipeline_id=pid, document_ids=ids[:2]))
    assert dict(hashes.content_hashes) == {ids[0]: "h", ids[1]: "h"}
    forgot = await docs.ForgetDocuments(dpb.ForgetDocumentsRequest(pipeline_id=pid, document_ids=ids[:2]))
    assert forgot.deleted == 2
    assert sorted(forgot.backings) == [f"{packs}{d}#0:1" for d in sorted(ids[:2])]


async def test_stream_leases_respects_credits(channel: aio.Channel) -> None:
    pid = await new_pipeline(channel)
    await stage_docs(channel, pid, [f"s{i}" for i in range(5)])
    requests: asyncio.Queue[lpb.StreamLeasesRequest | None] = asyncio.Queue()
    await requests.put(
        lpb.StreamLeasesRequest(
            open=lpb.StreamLeasesOpen(
                pipeline_id=pid, stage="pending", claim_stage="embedding", worker_id="s", initial_credits=3
            )
        )
    )

    async def outgoing() -> AsyncIterator[lpb.StreamLeasesRequest]:
        while (item := await requests.get()) is not None:
            yield item

    call = lease_pb2_grpc.LeaseServiceStub(channel).StreamLeases(outgoing())
    received: list[str] = []
    first = await asyncio.wait_for(call.read(), 10)
    received.extend(x.document_id for x in first.leases)
    assert len(received) == 3
    await requests.put(lpb.StreamLeasesRequest(credit=lpb.StreamLeasesCredit(documents=4)))
    second = await asyncio.wait_for(call.read(), 10)
    received.extend(x.document_id for x in second.leases)
    assert len(received) == 5
    # two credits left and nothing to claim: a newly staged document arrives without polling by the worker
    await stage_docs(channel, pid, ["late"])
    third = await asyncio.wait_for(call.read(), 10)
    assert [x.document_id for x in third.leases] == ["late"]
    await requests.put(None)
    call.cancel()


def claim_request(
    pid: str, limit: int, worker: str, layout: int = lpb.LEASE_LAYOUT_COLUMNS
) -> lpb.ClaimDocumentsRequest:
    return lpb.ClaimDocumentsRequest(
        pipeline_id=pid,
        stage="pending",
        claim_stage="embedding",
        limit=limit,
        worker_id=worker,
        lease_seconds=60,
        layout=layout,  # type: ignore[arg-type]
    )


def open_stream(pid: str, credits: int, layout: int = lpb.LEASE_LAYOUT_COLUMNS) -> lpb.StreamLeasesRequest:
    return lpb.StreamLeasesRequest(
        open=lpb.StreamLeasesOpen(
            pipeline_id=pid,
            stage="pending",
            claim_stage="embedding",
            worker_id="s",
            initial_credits=credits,
            layout=layout,  # type: ignore[arg-type]
        )
    )


async def test_columnar_layout_round_trip(channel: aio.Channel) -> None:
    pid = await new_pipeline(channel)
    ids = [f"col-{i}" for i in range(30)]
    await stage_docs(channel, pid, ids)
    stub = lease_pb2_grpc.LeaseServiceStub(channel)
    as_messages = await stub.ClaimDocuments(claim_request(pid, 10, "gpu-0", lpb.LEASE_LAYOUT_UNSPECIFIED))
    claimed = await stub.ClaimDocuments(claim_request(pid, 10, "gpu-0"))
    # one layout per answer, and the columns say what the messages say
    assert len(as_messages.leases) == 10
    assert not as_messages.HasField("lease_columns")
    assert not claimed.leases
    columns = claimed.lease_columns
    assert (columns.stage, columns.worker_id) == ("embedding", "gpu-0")
    assert columns.expires_at.seconds >= as_messages.leases[0].expires_at.seconds
    assert len(columns.document_ids) == 10
    assert not set(columns.document_ids) & {x.document_id for x in as_messages.leases}
    assert list(columns.attempts) == [1] * 10
    assert list(columns.content_hashes) == ["h"] * 10
    assert list(columns.chunk_counts) == [x.chunk_count for x in as_messages.leases]
    assert min(columns.fencing_tokens) > max(x.fencing_token for x in as_messages.leases)

    held = lpb.LeaseRefColumns(
        document_ids=[*columns.document_ids, as_messages.leases[0].document_id],
        fencing_tokens=[*columns.fencing_tokens, 1],  # a stale token on the last one
    )
    beat = await stub.HeartbeatLeases(
        lpb.HeartbeatLeasesRequest(pipeline_id=pid, stage="embedding", worker_id="gpu-0", lease_columns=held)
    )
    assert not beat.results
    assert list(beat.result_columns.extended) == [True] * 10 + [False]
    assert beat.result_columns.expires_at.seconds >= columns.expires_at.seconds

    held.document_ids.append("ghost")
    held.fencing_tokens.append(7)
    moved = await stub.TransitionDocuments(
        lpb.TransitionDocumentsRequest(
            pipeline_id=pid,
            document_columns=held,
            from_stage="embedding",
            worker_id="gpu-0",
            to_stage="indexed",
        )
    )
    assert not moved.results
    assert list(moved.result_columns.outcomes) == [lpb.TRANSITION_OUTCOME_MOVED] * 10 + [
        lpb.TRANSITION_OUTCOME_NOT_HELD,
        lpb.TRANSITION_OUTCOME_NOT_FOUND,
    ]
    tokens = list(moved.result_columns.fencing_tokens)
    assert all(new > old for new, old in zip(tokens[:10], columns.fencing_tokens, strict=True))
    assert tokens[10] == as_messages.leases[0].fencing_token  # NOT_HELD reports the current token
    assert tokens[11] == 0
    again = await stub.TransitionDocuments(
        lpb.TransitionDocumentsRequest(
            pipeline_id=pid,
            document_columns=lpb.LeaseRefColumns(
                document_ids=columns.document_ids[:1], fencing_tokens=columns.fencing_tokens[:1]
            ),
            from_stage="embedding",
            worker_id="gpu-0",
            to_stage="indexed",
        )
    )
    assert list(again.result_columns.outcomes) == [lpb.TRANSITION_OUTCOME_NOT_HELD]
    assert dict((await status(channel, pid)).counts) == {"pending": 10, "embedding": 10, "indexed": 10}
    # an empty batch still answers in columns; a claim of nothing has no columns
    empty = await stub.TransitionDocuments(
        lpb.TransitionDocumentsRequest(
            pipeline_id=pid,
            document_columns=lpb.LeaseRefColumns(),
            from_stage="embedding",
            worker_id="gpu-0",
            to_stage="indexed",
        )
    )
    assert empty.HasField("result_columns")
    assert not empty.result_columns.outcomes
    await stub.ClaimDocuments(claim_request(pid, 10, "gpu-1"))
    nothing = await stub.ClaimDocuments(claim_request(pid, 10, "gpu-1"))
    assert not nothing.HasField("lease_columns")
    assert not nothing.leases


async def test_columnar_stream_leases(channel: aio.Channel) -> None:
    pid = await new_pipeline(channel)
    await stage_docs(channel, pid, [f"cs{i}" for i in range(5)])
    call = lease_pb2_grpc.LeaseServiceStub(channel).StreamLeases(iter([open_stream(pid, 3)]))
    first = await asyncio.wait_for(call.read(), 10)
    assert not first.leases
    assert len(first.lease_columns.document_ids) == 3
    assert first.lease_columns.worker_id == "s"
    call.cancel()


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        (
            {"document_columns": {"document_ids": ["a", "b"], "fencing_tokens": [1]}},
            "document_columns.fencing_tokens",
        ),
        (
            {"document_columns": {"document_ids": ["a", ""], "fencing_tokens": [1, 2]}},
            "document_columns.document_ids[1]",
        ),
        (
            {
                "document_columns": {"document_ids": ["a"], "fencing_tokens": [1]},
                "documents": [{"document_id": "a"}],
            },
            "document_columns",
        ),
        (
            {"document_columns": {"document_ids": ["a"], "fencing_tokens": [1]}, "segment_leases": [5]},
            "segment_leases",
        ),
    ],
)
async def test_columnar_transition_validation_loses_nothing(
    channel: aio.Channel, request_fields: dict[str, object], field: str
) -> None:
    pid = await new_pipeline(channel)
    await stage_docs(channel, pid, ["a", "b"])
    stub = lease_pb2_grpc.LeaseServiceStub(channel)
    claimed = (await stub.ClaimDocuments(claim_request(pid, 2, "w"))).lease_columns
    tokens = dict(zip(claimed.document_ids, claimed.fencing_tokens, strict=True))
    request = lpb.TransitionDocumentsRequest(
        pipeline_id=pid,
        from_stage="embedding",
        worker_id="w",
        to_stage="indexed",
        **request_fields,  # type: ignore[arg-type]
    )
    # the real tokens, so that only the named field is wrong
    request.document_columns.fencing_tokens[:] = [
        tokens.get(d, 1) for d in request.document_columns.document_ids
    ][: len(request.document_columns.fencing_tokens)]
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.TransitionDocuments(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == [field]
    assert field in (caught.value.details() or "")
    assert dict((await status(channel, pid)).counts) == {"embedding": 2}


async def test_columnar_heartbeat_and_layout_validation(channel: aio.Channel) -> None:
    pid = await new_pipeline(channel)
    stub = lease_pb2_grpc.LeaseServiceStub(channel)
    cases = [
        (
            lpb.HeartbeatLeasesRequest(
                lease_columns=lpb.LeaseRefColumns(document_ids=["a"], fencing_tokens=[1]),
                leases=[document_pb2.LeaseRef(document_id="a")],
            ),
            "lease_columns",
        ),
        (
            lpb.HeartbeatLeasesRequest(
                lease_columns=lpb.LeaseRefColumns(document_ids=["ok", ""], fencing_tokens=[1, 1])
            ),
            "lease_columns.document_ids[1]",
        ),
        (
            lpb.HeartbeatLeasesRequest(lease_columns=lpb.LeaseRefColumns(document_ids=["a"])),
            "lease_columns.fencing_tokens",
        ),
    ]
    for request, field in cases:
        request.MergeFrom(lpb.HeartbeatLeasesRequest(pipeline_id=pid, stage="embedding", worker_id="w"))
        with pytest.raises(aio.AioRpcError) as caught:
            await stub.HeartbeatLeases(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(caught.value) == [field]
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.ClaimDocuments(claim_request(pid, 1, "w", 7))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["layout"]
    call = stub.StreamLeases(iter([open_stream(pid, 1, 7)]))
    with pytest.raises(aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["open.layout"]


async def test_columnar_claim_from_segments(channel: aio.Channel) -> None:
    pid = await new_pipeline(channel, ppb.QUEUE_BACKEND_SEGMENT)
    ids = [f"seg-col-{i}" for i in range(12)]

    async def messages() -> AsyncIterator[dpb.EnqueueIdsRequest]:
        yield dpb.EnqueueIdsRequest(
            batch=staging_pb2.EnqueueDocumentsRequest(
                pipeline_id=pid, documents=[staging_pb2.EnqueuedDocument(document_id=d) for d in ids]
            )
        )

    await document_state_pb2_grpc.DocumentStateServiceStub(channel).EnqueueIds(messages())
    stub = lease_pb2_grpc.LeaseServiceStub(channel)
    columns = (await stub.ClaimDocuments(claim_request(pid, 12, "w"))).lease_columns
    assert sorted(columns.document_ids) == sorted(ids)
    assert len(columns.fencing_tokens) == len(columns.attempts) == len(columns.chunk_counts) == 12
    assert len(columns.content_hashes) == 12
    moved = await stub.TransitionDocuments(
        lpb.TransitionDocumentsRequest(
            pipeline_id=pid,
            document_columns=lpb.LeaseRefColumns(
                document_ids=columns.document_ids, fencing_tokens=columns.fencing_tokens
            ),
            from_stage="embedding",
            worker_id="w",
            to_stage="indexed",
        )
    )
    assert set(moved.result_columns.outcomes) == {lpb.TRANSITION_OUTCOME_MOVED}
    assert dict((await status(channel, pid)).counts) == {"indexed": 12}


async def test_enqueue_ids_into_segments(channel: aio.Channel) -> None:
    pid = await new_pipeline(channel, ppb.QUEUE_BACKEND_SEGMENT)
    ids = [f"light-{i}" for i in range(25)]

    async def messages() -> AsyncIterator[dpb.EnqueueIdsRequest]:
        for start in range(0, 25, 8):
            yield dpb.EnqueueIdsRequest(
                batch=staging_pb2.EnqueueDocumentsRequest(
                    pipeline_id=pid,
                    documents=[staging_pb2.EnqueuedDocument(document_id=d) for d in ids[start : start + 8]],
                )
            )

    docs = document_state_pb2_grpc.DocumentStateServiceStub(channel)
    result = (await docs.EnqueueIds(messages())).result
    assert (result.enqueued, result.segments_created) == (25, 3)
    assert (await status(channel, pid)).pending_count == 25
    stub = lease_pb2_grpc.LeaseServiceStub(channel)
    claimed = await stub.ClaimDocuments(
        lpb.ClaimDocumentsRequest(
            pipeline_id=pid, stage="pending", claim_stage="embedding", limit=25, worker_id="w"
        )
    )
    assert sorted(x.document_id for x in claimed.leases) == sorted(ids)
    tokens = list(dict.fromkeys(x.fencing_token for x in claimed.leases))
    assert len(tokens) == 3  # one lease per segment
    refs = [
        document_pb2.LeaseRef(document_id=x.document_id, fencing_token=x.fencing_token)
        for x in claimed.leases
        if x.fencing_token == tokens[0]
    ]
    moved = await stub.TransitionDocuments(
        lpb.TransitionDocumentsRequest(
            pipeline_id=pid, documents=refs, from_stage="embedding", worker_id="w", to_stage="indexed"
        )
    )
    assert {r.outcome for r in moved.results} == {lpb.TRANSITION_OUTCOME_MOVED}

    # the other two leases whole, by token
    for bad, field in (
        (lpb.TransitionDocumentsRequest(documents=refs[:1], segment_leases=tokens[1:]), "segment_leases"),
        (lpb.TransitionDocumentsRequest(segment_leases=[tokens[1], 0]), "segment_leases[1]"),
    ):
        bad.MergeFrom(
            lpb.TransitionDocumentsRequest(
                pipeline_id=pid, from_stage="embedding", worker_id="w", to_stage="indexed"
            )
        )
        with pytest.raises(aio.AioRpcError) as caught:
            await stub.TransitionDocuments(bad)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violations(caught.value) == [field]
    whole = await stub.TransitionDocuments(
        lpb.TransitionDocumentsRequest(
            pipeline_id=pid,
            segment_leases=[*tokens[1:], tokens[0]],
            from_stage="embedding",
            worker_id="w",
            to_stage="indexed",
        )
    )
    assert not whole.results
    assert [(r.fencing_token, r.outcome) for r in whole.segment_lease_results] == [
        (tokens[1], lpb.TRANSITION_OUTCOME_MOVED),
        (tokens[2], lpb.TRANSITION_OUTCOME_MOVED),
        (tokens[0], lpb.TRANSITION_OUTCOME_NOT_HELD),
    ]
    assert sum(r.moved for r in whole.segment_lease_results) == 25 - len(refs)
    assert (
        whole.segment_lease_results[0].new_fencing_token == whole.segment_lease_results[1].new_fencing_token
    )
    assert whole.segment_lease_results[2].new_fencing_token == 0
    assert dict((await status(channel, pid)).counts) == {"indexed": 25}
    deleted = await pipeline_pb2_grpc.PipelineServiceStub(channel).DeletePipeline(
        ppb.DeletePipelineRequest(pipeline_id=pid)
    )
    assert (deleted.deleted_documents, deleted.deleted_segments) == (0, 0)


async def test_metrics_export_stage_counts(channel: aio.Channel, claimer: Claimer) -> None:
    pid = await new_pipeline(channel)
    await stage_docs(channel, pid, ["m1", "m2"])
    await lease_pb2_grpc.LeaseServiceStub(channel).ClaimDocuments(
        lpb.ClaimDocumentsRequest(
            pipeline_id=pid, stage="pending", claim_stage="embedding", limit=1, worker_id="w"
        )
    )
    wanted = f'layer_pipeline_stage_count{{pipeline_id="{pid}",stage="pending"}} 1.0'
    text = ""
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(f"http://{claimer.http}/metrics") as response:
                text = await response.text()
            if wanted in text:
                break
            await asyncio.sleep(0.1)
    assert wanted in text
    assert f'layer_pipeline_stage_count{{pipeline_id="{pid}",stage="embedding"}} 1.0' in text
    assert "layer_claim_latency_seconds_bucket" in text
    assert f'layer_claimed_documents_total{{pipeline_id="{pid}"}} 1.0' in text
    # present at 0 from the first claim, so that alerts on increase() see the first expiry
    assert f'layer_lease_expiries_total{{pipeline_id="{pid}"}} 0.0' in text
    assert f'layer_poisoned_documents_total{{pipeline_id="{pid}"}} 0.0' in text


async def test_unreachable_postgres_is_unavailable_with_retry_info(tmp_path: Path) -> None:
    dead = f"postgresql://hevlayer:hevlayer@127.0.0.1:{free_port()}/nothing"
    process, address, _ = start_bare_claimer(
        {"DATABASE_URL": dead, "PIPELINE_QUEUE_BACKEND": "row", "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "1"},
        tmp_path,
    )
    try:
        async with aio.insecure_channel(address) as ch:
            stub = lease_pb2_grpc.LeaseServiceStub(ch)
            request = lpb.ClaimDocumentsRequest(
                pipeline_id="p-a", stage="pending", claim_stage="embedding", limit=1, worker_id="w"
            )
            error: aio.AioRpcError | None = None
            for _ in range(100):
                try:
                    await stub.ClaimDocuments(request, timeout=5)
                except aio.AioRpcError as exc:
                    error = exc
                    if exc.code() == grpc.StatusCode.UNAVAILABLE and has_retry_info(exc):
                        break
                await asyncio.sleep(0.1)
            assert error is not None
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert has_retry_info(error)
    finally:
        process.stop()


async def test_watch_status_follows_claims(channel: aio.Channel) -> None:
    pid = await new_pipeline(channel)
    await stage_docs(channel, pid, ["w1", "w2", "w3"])
    pipelines = pipeline_pb2_grpc.PipelineServiceStub(channel)
    call = pipelines.WatchPipelineStatus(ppb.WatchPipelineStatusRequest(pipeline_id=pid, min_interval_ms=10))
    first = await asyncio.wait_for(call.read(), 10)
    assert dict(first.status.counts) == {"pending": 3}
    await lease_pb2_grpc.LeaseServiceStub(channel).ClaimDocuments(
        lpb.ClaimDocumentsRequest(
            pipeline_id=pid, stage="pending", claim_stage="embedding", limit=2, worker_id="w"
        )
    )
    update = await asyncio.wait_for(call.read(), 10)
    assert dict(update.status.counts) == {"pending": 1, "embedding": 2}
    assert update.status.pending_count == 1
    assert update.status.version > first.status.version
    call.cancel()


TRACE_A = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_B = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_leases_carry_the_staging_trace_parent(channel: aio.Channel) -> None:
    """RecordStaged stores each record's trace context; every lease of the document hands it
    back (both layouts) until the document is staged again or re-enqueued without one."""
    pid = await new_pipeline(channel)
    docs = document_state_pb2_grpc.DocumentStateServiceStub(channel)
    packs = await packs_of(channel, pid)
    await docs.RecordStaged(
        dpb.RecordStagedRequest(
            pipeline_id=pid,
            records=[
                dpb.StagedRecord(document_id="a", backing=f"{packs}a#0:1", trace_parent=TRACE_A),
                dpb.StagedRecord(document_id="b", backing=f"{packs}b#0:1", trace_parent=TRACE_B),
                dpb.StagedRecord(document_id="c", backing=f"{packs}c#0:1"),
            ],
        )
    )
    stub = lease_pb2_grpc.LeaseServiceStub(channel)
    columns = (await stub.ClaimDocuments(claim_request(pid, 10, "w"))).lease_columns
    by_id = dict(zip(columns.document_ids, columns.trace_parents, strict=True))
    assert by_id == {"a": TRACE_A, "b": TRACE_B, "c": ""}

    # released and claimed again: still the staging trace (one journey), in the message layout
    await stub.TransitionDocuments(
        lpb.TransitionDocumentsRequest(
            pipeline_id=pid,
            document_columns=lpb.LeaseRefColumns(
                document_ids=columns.document_ids, fencing_tokens=columns.fencing_tokens
            ),
            from_stage="embedding",
            worker_id="w",
            to_stage="pending",
        )
    )
    leases = (await stub.ClaimDocuments(claim_request(pid, 10, "w", lpb.LEASE_LAYOUT_UNSPECIFIED))).leases
    assert {x.document_id: x.trace_parent for x in leases} == {"a": TRACE_A, "b": TRACE_B, "c": ""}

    # re-staged with another context, or re-enqueued as a lightweight id: the old one is gone
    await docs.RecordStaged(
        dpb.RecordStagedRequest(
            pipeline_id=pid,
            records=[dpb.StagedRecord(document_id="a", backing=f"{packs}a2#0:1", trace_parent=TRACE_B)],
        )
    )

    async def enqueue() -> AsyncIterator[dpb.EnqueueIdsRequest]:
        yield dpb.EnqueueIdsRequest(
            batch=staging_pb2.EnqueueDocumentsRequest(
                pipeline_id=pid, documents=[staging_pb2.EnqueuedDocument(document_id="b")]
            )
        )

    await docs.EnqueueIds(enqueue())
    columns = (await stub.ClaimDocuments(claim_request(pid, 10, "w"))).lease_columns
    assert dict(zip(columns.document_ids, columns.trace_parents, strict=True)) == {"a": TRACE_B, "b": ""}

    # no document with a trace context: no column at all
    pid = await new_pipeline(channel)
    await stage_docs(channel, pid, ["x", "y"])
    columns = (await stub.ClaimDocuments(claim_request(pid, 10, "w"))).lease_columns
    assert len(columns.document_ids) == 2
    assert not columns.trace_parents


async def test_trace_parents_are_validated(channel: aio.Channel) -> None:
    pid = await new_pipeline(channel)
    docs = document_state_pb2_grpc.DocumentStateServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as caught:
        await docs.RecordStaged(
            dpb.RecordStagedRequest(
                pipeline_id=pid,
                records=[
                    dpb.StagedRecord(document_id="a"),
                    dpb.StagedRecord(document_id="b", trace_parent="0" * 600),
                ],
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["records[1].trace_parent"]
    stub = lease_pb2_grpc.LeaseServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.TransitionDocuments(
            lpb.TransitionDocumentsRequest(
                pipeline_id=pid,
                document_columns=lpb.LeaseRefColumns(
                    document_ids=["a", "b"], fencing_tokens=[1, 2], trace_parents=[TRACE_A]
                ),
                from_stage="embedding",
                worker_id="w",
                to_stage="indexed",
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["document_columns.trace_parents"]


async def test_token_zero_is_no_wildcard(channel: aio.Channel) -> None:
    """A lease named with fencing token 0 is refused, naming the field, and nothing changes."""
    pid = await new_pipeline(channel)
    await stage_docs(channel, pid, ["a", "b"])
    stub = lease_pb2_grpc.LeaseServiceStub(channel)
    claimed = (await stub.ClaimDocuments(claim_request(pid, 2, "w"))).lease_columns
    tokens = dict(zip(claimed.document_ids, claimed.fencing_tokens, strict=True))

    def move(**refs: object) -> lpb.TransitionDocumentsRequest:
        request = lpb.TransitionDocumentsRequest(
            pipeline_id=pid, worker_id="w", from_stage="embedding", to_stage="indexed"
        )
        request.MergeFrom(lpb.TransitionDocumentsRequest(**refs))  # type: ignore[arg-type]
        return request

    def beat(**refs: object) -> lpb.HeartbeatLeasesRequest:
        request = lpb.HeartbeatLeasesRequest(
            pipeline_id=pid, worker_id="w", stage="embedding", lease_seconds=5
        )
        request.MergeFrom(lpb.HeartbeatLeasesRequest(**refs))  # type: ignore[arg-type]
        return request

    a = document_pb2.LeaseRef(document_id="a", fencing_token=tokens["a"])
    zero = document_pb2.LeaseRef(document_id="b")
    checks = document_state_pb2_grpc.DocumentStateServiceStub(channel)
    calls: list[tuple[Callable[[], Awaitable[object]], str]] = [
        (lambda: stub.TransitionDocuments(move(documents=[a, zero])), "documents[1].fencing_token"),
        (
            lambda: stub.TransitionDocuments(
                move(
                    document_columns=lpb.LeaseRefColumns(
                        document_ids=["a", "b"], fencing_tokens=[tokens["a"], 0]
                    )
                )
            ),
            "document_columns.fencing_tokens[1]",
        ),
        (lambda: stub.HeartbeatLeases(beat(leases=[zero])), "leases[0].fencing_token"),
        (
            lambda: stub.HeartbeatLeases(
                beat(lease_columns=lpb.LeaseRefColumns(document_ids=["b"], fencing_tokens=[0]))
            ),
            "lease_columns.fencing_tokens[0]",
        ),
        (
            lambda: checks.CheckLeases(
                dpb.CheckLeasesRequest(pipeline_id=pid, worker_id="w", stage="embedding", leases=[zero])
            ),
            "leases[0].fencing_token",
        ),
    ]
    for call, field in calls:
        with pytest.raises(aio.AioRpcError) as caught:
            await call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(caught.value) == [field]
        assert "0 is no wildcard" in (caught.value.details() or "")
    assert dict((await status(channel, pid)).counts) == {"embedding": 2}
    refs = [document_pb2.LeaseRef(document_id=d, fencing_token=t) for d, t in tokens.items()]
    moved = await stub.TransitionDocuments(move(documents=refs))
    assert [r.outcome for r in moved.results] == [lpb.TRANSITION_OUTCOME_MOVED] * 2
