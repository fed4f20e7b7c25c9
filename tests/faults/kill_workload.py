"""The workload and the final audit of the kill faults (``tests/faults/test_kills.py``, ``bench/soak.py``).

:class:`Workload` drives a :class:`~faults.killstack.KillStack` as its users would, through
the gateway and the summarizer only, retrying whatever a dead process makes fail:

- **ingest waves**: fresh lightweight ids are enqueued into stage ``extract`` of two pipelines,
  one per queue backend (``segment``: S3 manifests, ``row``: PostgreSQL rows);
- **extractors** (the Object Lane's CPU workers): claim ids from ``extract`` into
  ``extracting`` and stage each with its chunks, sending the claim's lease;
- the suite's **embedder worker** embeds every staged document and indexes it;
- a **mutator** re-stages documents with new versions (other chunk ids and texts, other chunk
  counts) and deletes documents, while they are pending, embedding or indexed;
- a **summarizer job** summarizes a directory tree into one more document per directory.

It keeps the model of what each document must be at the end (:attr:`Workload.expected`):
a re-stage or a deletion is retried until the gateway confirms it, and the mutator only
touches ids whose extraction is settled (no queue entry of them can be claimed any more), so
the model is exact however many calls failed. :func:`audit` then reads the stores themselves
— PostgreSQL, the S3 bucket, the Milvus Lite file — and lists every difference.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import asyncpg
import grpc
from faults.killstack import KillStack
from grpc import aio
from support.s3 import claimer_object_store, gateway_s3_settings

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.lease.v1 import lease_pb2, lease_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.api.summary.v1 import summary_pb2, summary_pb2_grpc
from hevlayer.client.naming import object_key_of
from hevlayer.gateway.chunkstore import ChunkStore

T = TypeVar("T")

CHANNEL_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
CALL_TIMEOUT = 15.0
FINAL = "indexed"
BACKENDS = {"segment": pipeline_pb2.QUEUE_BACKEND_SEGMENT, "row": pipeline_pb2.QUEUE_BACKEND_ROW}
NOT_RETRIED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
}
WORDS = [
    *("river", "mountain", "forest", "desert", "ocean", "valley", "glacier", "canyon", "meadow"),
    *("island", "volcano", "prairie", "lagoon", "tundra", "savanna", "delta", "plateau", "marsh"),
    *("reef", "harbor"),
]


def chunk_text(document_id: str, index: int, version: int) -> str:
    body = " ".join(WORDS[(index * 7 + k * 3 + version) % len(WORDS)] for k in range(8))
    return f"{document_id} part {index} version {version}: {body}"


def make_document(document_id: str, version: int) -> document_pb2.Document:
    """Version 1 has chunks c0..c2; later versions have 1 to 4 chunks named after the version."""
    doc = document_pb2.Document(id=document_id)
    chunks = 3 if version == 1 else 1 + (hash((document_id, version)) % 4)
    for index in range(chunks):
        doc.chunks.add(id=f"v{version}-c{index}", text=chunk_text(document_id, index, version))
    return doc


@dataclass
class Errors:
    """Status codes clients saw while processes were down (the run retries them)."""

    codes: Counter[str] = field(default_factory=Counter)

    def record(self, where: str, error: BaseException) -> None:
        code = error.code().name if isinstance(error, aio.AioRpcError) else type(error).__name__
        self.codes[f"{where}: {code}"] += 1


async def retry(
    call: Callable[[], Awaitable[T]], errors: Errors, where: str, *, deadline: float = 600.0
) -> T:
    """``call`` until it answers; errors that a dead or restarting process explains are retried
    (with a short backoff), the others raised."""
    give_up = time.monotonic() + deadline
    delay = 0.1
    while True:
        try:
            return await call()
        except aio.AioRpcError as error:
            errors.record(where, error)
            if error.code() in NOT_RETRIED or time.monotonic() > give_up:
                raise
        except (ConnectionError, OSError, TimeoutError) as error:
            errors.record(where, error)
            if time.monotonic() > give_up:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


@dataclass
class PipelineModel:
    pipeline_id: str
    backend: str
    expected: dict[str, document_pb2.Document | None] = field(default_factory=dict)
    """Document id -> its current version, None once deleted (the truth the audit compares with)."""
    version: dict[str, int] = field(default_factory=dict)
    enqueued_waves: list[list[str]] = field(default_factory=list)
    waves_done: int = 0
    """Waves whose EnqueueDocuments call returned."""
    settled: set[str] = field(default_factory=set)
    """Ids no queue entry of which can be claimed any more (the mutator's candidates)."""
    restaged: int = 0
    deleted: int = 0


class Workload:
    """The client side of a fault run (see the module docstring)."""

    def __init__(
        self, stack: KillStack, rng: random.Random, *, wave_size: int, name: str, backlog: int = 0
    ) -> None:
        self.stack = stack
        self.backlog = backlog
        """With a backlog, a new wave waits until fewer ids than that are unindexed (soak)."""
        self.rng = rng
        self.wave_size = wave_size
        self.name = name
        self.errors = Errors()
        self.pipelines = {
            backend: PipelineModel(f"{name}-{backend}", backend) for backend in ("segment", "row")
        }
        self.job_ids: list[str] = []
        self.job_state = "not submitted"
        self.job_submissions = 0
        self.stopping = asyncio.Event()
        self.indexed_log: list[tuple[float, int]] = []
        self._exit = AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self._producers: list[asyncio.Task[None]] = []
        """Ingest and mutator tasks: they run until :meth:`finish` cancels them."""

    # -- channels ------------------------------------------------------------------

    async def __aenter__(self) -> Workload:
        self.channel = aio.insecure_channel(self.stack.gateway, options=CHANNEL_OPTIONS)
        self._exit.push_async_callback(self.channel.close)
        self.summary_channel = aio.insecure_channel(self.stack.summarizer, options=CHANNEL_OPTIONS)
        self._exit.push_async_callback(self.summary_channel.close)
        self.pipelines_stub = pipeline_pb2_grpc.PipelineServiceStub(self.channel)
        self.staging = staging_pb2_grpc.StagingServiceStub(self.channel)
        self.leases = lease_pb2_grpc.LeaseServiceStub(self.channel)
        self.summary = summary_pb2_grpc.SummaryServiceStub(self.summary_channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        await self._exit.aclose()

    # -- set-up --------------------------------------------------------------------

    async def create_pipelines(self) -> None:
        for model in self.pipelines.values():
            pipeline = pipeline_pb2.Pipeline(
                id=model.pipeline_id,
                queue_backend=BACKENDS[model.backend],
                max_attempts=1000,  # kills make lease expiries; none may poison a document
                default_lease_seconds=8,
            )
            request = pipeline_pb2.CreatePipelineRequest(pipeline=pipeline)
            try:
                await retry(
                    partial(self.pipelines_stub.CreatePipeline, request, timeout=CALL_TIMEOUT),
                    self.errors,
                    "CreatePipeline",
                )
            except aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.ALREADY_EXISTS:  # a retried create that had landed
                    raise

    def start(self, *, ingest: bool = True, mutate: bool = True, summarize: bool = True) -> None:
        """Start the client tasks; they run until :meth:`stop` (the extractors until drained)."""
        for model in self.pipelines.values():
            if ingest:
                self._producers.append(
                    asyncio.create_task(self._ingest(model), name=f"ingest {model.backend}")
                )
            self._tasks.append(asyncio.create_task(self._extract(model), name=f"extract {model.backend}"))
            if mutate:
                self._producers.append(
                    asyncio.create_task(self._mutate(model), name=f"mutate {model.backend}")
                )
        if summarize:
            self._tasks.append(
                asyncio.create_task(self._summarize(self.pipelines["segment"]), name="summarize")
            )
        self._tasks.extend(self._producers)

    async def stop(self) -> None:
        self.stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def check_tasks(self) -> None:
        """Raise the error of a client task that failed (an answer no fault explains)."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError(f"client task {task.get_name()} failed") from task.exception()

    # -- ingest: waves of lightweight ids into `extract` --------------------------------------

    async def enqueue_wave(self, model: PipelineModel) -> None:
        wave = len(model.enqueued_waves)
        ids = [f"doc-{wave:03d}-{i:03d}" for i in range(self.wave_size)]
        model.enqueued_waves.append(ids)
        for doc_id in ids:
            model.version[doc_id] = 1
            model.expected[doc_id] = make_document(doc_id, 1)

        async def enqueue() -> staging_pb2.EnqueueDocumentsResponse:
            async def requests() -> AsyncIterator[staging_pb2.EnqueueDocumentsRequest]:
                yield staging_pb2.EnqueueDocumentsRequest(
                    pipeline_id=model.pipeline_id,
                    stage="extract",
                    documents=[staging_pb2.EnqueuedDocument(document_id=d) for d in ids],
                )

            response: staging_pb2.EnqueueDocumentsResponse = await self.staging.EnqueueDocuments(
                requests(), timeout=CALL_TIMEOUT
            )
            return response

        await retry(enqueue, self.errors, "EnqueueDocuments")
        model.waves_done = wave + 1

    async def _ingest(self, model: PipelineModel) -> None:
        while not self.stopping.is_set():
            await self.enqueue_wave(model)
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            while self.backlog and not self.stopping.is_set() and await self.unindexed(model) >= self.backlog:  # noqa: ASYNC110 (a count to poll)
                await asyncio.sleep(0.5)

    # -- extractors ------------------------------------------------------------------

    async def counts(self, model: PipelineModel) -> dict[str, int]:
        """The pipeline's counts per stage (GetPipelineStatus: segments' ids included)."""
        request = pipeline_pb2.GetPipelineStatusRequest(pipeline_id=model.pipeline_id)
        response = await retry(
            partial(self.pipelines_stub.GetPipelineStatus, request, timeout=CALL_TIMEOUT),
            self.errors,
            "GetPipelineStatus",
        )
        return {stage: int(n) for stage, n in response.status.counts.items()}

    async def unindexed(self, model: PipelineModel) -> int:
        return sum(n for stage, n in (await self.counts(model)).items() if stage != FINAL)

    async def queued(self, model: PipelineModel) -> int:
        """Ids still in `extract` or `extracting` (GetPipelineStatus: segments' ids included)."""
        request = pipeline_pb2.GetPipelineStatusRequest(pipeline_id=model.pipeline_id)
        response = await retry(
            lambda: self.pipelines_stub.GetPipelineStatus(request, timeout=CALL_TIMEOUT),
            self.errors,
            "GetPipelineStatus",
        )
        counts = response.status.counts
        return int(counts.get("extract", 0) + counts.get("extracting", 0))

    async def _extract(self, model: PipelineModel) -> None:
        while True:
            waves_before = model.waves_done
            request = lease_pb2.ClaimDocumentsRequest(
                pipeline_id=model.pipeline_id,
                stage="extract",
                claim_stage="extracting",
                limit=25,
                worker_id=f"{self.name}-extractor",
                lease_seconds=8,
            )
            try:
                response = await retry(
                    partial(self.leases.ClaimDocuments, request, timeout=CALL_TIMEOUT),
                    self.errors,
                    "ClaimDocuments(extract)",
                )
            except aio.AioRpcError as error:
                self.errors.record("ClaimDocuments(extract) gave up", error)
                await asyncio.sleep(0.5)
                continue
            leases = [(lease.document_id, lease.fencing_token) for lease in response.leases]
            if leases:
                await self._stage_extracted(model, leases)
                continue
            if await self.queued(model) == 0:
                # Every entry of the waves enqueued before this claim is gone: their ids are
                # settled (nothing will extract them again over a mutation).
                for wave in model.enqueued_waves[:waves_before]:
                    model.settled.update(wave)
                if self.stopping.is_set() and waves_before == len(model.enqueued_waves):
                    return
            await asyncio.sleep(0.3)

    async def _stage_extracted(self, model: PipelineModel, leases: list[tuple[str, int]]) -> None:
        # An id claimed again after its extraction (a duplicate queue entry) is staged as the
        # model has it now; the mutator leaves unsettled ids alone, so that is version 1.
        documents = [model.expected[doc_id] for doc_id, _ in leases]
        assert all(doc is not None for doc in documents), leases
        request = staging_pb2.StageDocumentsRequest(
            pipeline_id=model.pipeline_id,
            documents=[doc for doc in documents if doc is not None],
            leases=[document_pb2.LeaseRef(document_id=d, fencing_token=t) for d, t in leases],
        )
        try:
            results = await self._stage(request, "StageDocuments(extract)")
        except aio.AioRpcError as error:
            # A lease that expired while a process was down: the claim comes back later.
            self.errors.record("StageDocuments(extract) refused", error)
            return
        for result in results:
            assert result.outcome != staging_pb2.STAGE_OUTCOME_REJECTED, result

    async def _stage(
        self, request: staging_pb2.StageDocumentsRequest, where: str
    ) -> list[staging_pb2.StageResult]:
        async def call() -> list[staging_pb2.StageResult]:
            async def requests() -> AsyncIterator[staging_pb2.StageDocumentsRequest]:
                yield request

            results: list[staging_pb2.StageResult] = []
            async for response in self.staging.StageDocuments(requests(), timeout=CALL_TIMEOUT):
                results.extend(response.results)
            return results

        return await retry(call, self.errors, where)

    # -- mutator: re-stages and deletes ---------------------------------------------------

    async def _mutate(self, model: PipelineModel) -> None:
        while not self.stopping.is_set():
            await asyncio.sleep(self.rng.uniform(0.05, 0.4))
            candidates = sorted(d for d in model.settled if model.expected.get(d) is not None)
            if len(candidates) < 10:
                continue
            doc_id = self.rng.choice(candidates)
            if self.rng.random() < 0.7:
                version = model.version[doc_id] + 1
                doc = make_document(doc_id, version)
                request = staging_pb2.StageDocumentsRequest(pipeline_id=model.pipeline_id, documents=[doc])
                # The new version is the truth from the moment it is sent: once a try may have
                # landed, only a later confirmed re-stage or deletion can replace it.
                model.version[doc_id] = version
                model.expected[doc_id] = doc
                [result] = await self._stage(request, "StageDocuments(re-stage)")
                assert result.outcome in (
                    staging_pb2.STAGE_OUTCOME_STAGED,
                    staging_pb2.STAGE_OUTCOME_UNCHANGED,
                )
                model.restaged += 1
            else:
                model.expected[doc_id] = None
                delete = staging_pb2.DeleteDocumentsRequest(
                    pipeline_id=model.pipeline_id, document_ids=[doc_id]
                )
                await retry(
                    partial(self.staging.DeleteDocuments, delete, timeout=CALL_TIMEOUT),
                    self.errors,
                    "DeleteDocuments",
                )
                model.deleted += 1

    # -- the summarizer job -------------------------------------------------------------

    def job_objects(self) -> list[summary_pb2.JobObject]:
        objects = []
        for top in ("alpha", "beta"):
            for sub in ("one", "two"):
                for index in range(3):
                    path = f"{top}/{sub}/file-{index}.txt"
                    objects.append(
                        summary_pb2.JobObject(
                            path=path,
                            document_id=f"src:{path}",
                            content_hash=f"h-{path}",
                            kind="file",
                            text=chunk_text(path, index, 1),
                        )
                    )
        return objects

    JOB_DIRECTORIES = ("", "alpha", "beta", "alpha/one", "alpha/two", "beta/one", "beta/two")

    async def _submit_job(self, model: PipelineModel, job_id: str) -> None:
        objects = self.job_objects()

        async def submit() -> None:
            async def requests() -> AsyncIterator[summary_pb2.SubmitJobRequest]:
                yield summary_pb2.SubmitJobRequest(
                    pipeline_id=model.pipeline_id, job_id=job_id, objects=objects, enumeration_complete=True
                )

            await self.summary.SubmitJob(requests(), timeout=CALL_TIMEOUT)

        self.job_submissions += 1
        try:
            await retry(submit, self.errors, "SubmitJob")
        except aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:  # a retried submit that had landed
                raise

    async def _summarize(self, model: PipelineModel) -> None:
        """One job after another until stopped: submit it, watch it, and submit it again when a
        restarted summarizer forgot it (jobs live in its memory)."""
        while not self.stopping.is_set():
            job_id = f"{self.name}-job-{len(self.job_ids)}"
            self.job_ids.append(job_id)
            await self._run_job(model, job_id)
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))

    async def _run_job(self, model: PipelineModel, job_id: str) -> None:
        await self._submit_job(model, job_id)
        while True:
            try:
                async for update in self.summary.WatchJob(summary_pb2.WatchJobRequest(job_id=job_id)):
                    self.job_state = summary_pb2.JobState.Name(update.job.state)
                    if update.job.state == summary_pb2.JOB_STATE_FAILED:
                        raise AssertionError(f"the summarizer job failed: {update.job}")
                    if update.job.state == summary_pb2.JOB_STATE_SUCCEEDED:
                        return
            except aio.AioRpcError as error:
                self.errors.record("WatchJob", error)
                if error.code() == grpc.StatusCode.NOT_FOUND:  # lost in a summarizer restart
                    await self._submit_job(model, job_id)
                    continue
            await asyncio.sleep(0.3)

    def summary_documents(self) -> set[str]:
        return {f"dir:{job}:/{path}" for job in self.job_ids for path in self.JOB_DIRECTORIES}

    # -- progress ---------------------------------------------------------------------

    async def indexed(self) -> int:
        """Documents in `indexed` over both pipelines (PostgreSQL; 0 while it is down)."""
        try:
            connection = await asyncpg.connect(self.stack.dsn, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return 0
        try:
            value = await connection.fetchval(
                "SELECT count(*) FROM documents WHERE pipeline_id = ANY($1) AND stage = 'indexed'",
                [m.pipeline_id for m in self.pipelines.values()],
            )
        except (OSError, asyncpg.PostgresError):
            return 0
        finally:
            await connection.close()
        return int(value)

    async def finish(self, timeout: float) -> None:
        """Stop producing, then wait until every queue is drained, every live document is
        indexed and the summarizer job has succeeded (a bound, not a timing assertion)."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        # Producers end at their next loop turn: one cancelled inside a call would leave the
        # model unsure whether that call landed.
        await asyncio.wait_for(asyncio.gather(*self._producers), timeout)
        self._tasks = [t for t in self._tasks if t not in self._producers]
        self._producers.clear()
        while True:
            self.check_tasks()
            extracting = [t for t in self._tasks if not t.done()]
            if not extracting and await self._all_final():
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the run did not finish within {timeout:.0f} s: job {self.job_state}, "
                    f"tasks left {[t.get_name() for t in extracting]}, "
                    f"stages {await self._stages()}, errors clients saw {dict(self.errors.codes)}"
                )
            await asyncio.sleep(0.5)

    async def _stages(self) -> dict[str, dict[str, int]]:
        connection = await asyncpg.connect(self.stack.dsn, timeout=10)
        try:
            rows = await connection.fetch(
                "SELECT pipeline_id, stage, count(*) AS n FROM documents "
                "WHERE pipeline_id = ANY($1) GROUP BY 1, 2",
                [m.pipeline_id for m in self.pipelines.values()],
            )
        finally:
            await connection.close()
        out: dict[str, dict[str, int]] = {}
        for row in rows:
            out.setdefault(row["pipeline_id"], {})[row["stage"]] = int(row["n"])
        return out

    async def _all_final(self) -> bool:
        try:
            stages = await self._stages()
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        for backend, model in self.pipelines.items():
            live = sum(1 for doc in model.expected.values() if doc is not None)
            if backend == "segment":
                live += len(self.summary_documents())
            if stages.get(model.pipeline_id, {}) != ({FINAL: live} if live else {}):
                return False
        return True


# -- the audit ------------------------------------------------------------------------------


def milvus_lite_rows(path: Path, collection: str) -> Counter[tuple[str, str, str]]:
    """Every row of a collection, read from the Milvus Lite file (its gateway stopped)."""
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus import MilvusClient

    client = MilvusClient(str(path))
    try:
        if not client.has_collection(collection):
            return Counter()
        client.load_collection(collection)
        rows: list[dict[str, object]] = []
        iterator = client.query_iterator(
            collection,
            batch_size=1000,
            filter='id != ""',
            output_fields=["document_id", "chunk_id", "attributes"],
        )
        while batch := iterator.next():
            rows.extend(batch)
        iterator.close()
    finally:
        client.close()
        server_manager_instance.release_server(str(path.absolute()))
    return Counter(
        (str(row["document_id"]), str(row["chunk_id"]), str(row["attributes"]["text"]))  # type: ignore[index]
        for row in rows
    )


@dataclass
class Audit:
    """What the stores hold against the model; every list empty means nothing lost, stale or doubled."""

    problems: list[str] = field(default_factory=list)
    lost: int = 0
    stale: int = 0
    duplicated: int = 0
    documents: int = 0
    chunks: int = 0

    def fail(self, text: str) -> None:
        self.problems.append(text)


async def audit_database(workload: Workload, result: Audit) -> dict[str, list[str]]:
    """Stages, leases, counters, segments and backing counts from PostgreSQL; returns each
    pipeline's live object keys."""
    connection = await asyncpg.connect(workload.stack.dsn, timeout=10)
    live_objects: dict[str, list[str]] = {}
    try:
        for backend, model in workload.pipelines.items():
            pid = model.pipeline_id
            rows = await connection.fetch(
                "SELECT document_id, stage, lease_expires_at > now() AS leased, chunk_count, backing "
                "FROM documents WHERE pipeline_id = $1",
                pid,
            )
            expected = {d: doc for d, doc in model.expected.items() if doc is not None}
            summaries = workload.summary_documents() if backend == "segment" else set()
            found = {row["document_id"]: row for row in rows}
            for doc_id, doc in expected.items():
                row = found.get(doc_id)
                if row is None:
                    result.lost += 1
                    result.fail(f"{pid}: {doc_id} has no document row")
                    continue
                if row["stage"] != FINAL:
                    result.fail(f"{pid}: {doc_id} is in stage {row['stage']!r}, not {FINAL!r}")
                if row["chunk_count"] != len(doc.chunks):
                    result.stale += 1
                    result.fail(
                        f"{pid}: {doc_id} has chunk_count {row['chunk_count']}, staged {len(doc.chunks)}"
                    )
            for doc_id in summaries:
                row = found.get(doc_id)
                if row is None or row["stage"] != FINAL:
                    result.lost += 1
                    result.fail(f"{pid}: summary {doc_id} is {row['stage'] if row else 'missing'}")
            for doc_id in sorted(set(found) - set(expected) - summaries):
                result.stale += 1
                result.fail(f"{pid}: {doc_id} is {found[doc_id]['stage']!r} but was deleted or never staged")
            leased = [row["document_id"] for row in rows if row["leased"]]
            if leased:
                result.fail(f"{pid}: leases left on {leased[:10]} ({len(leased)})")
            segments = await connection.fetch(
                "SELECT segment_id, stage, remaining FROM queue_segments WHERE pipeline_id = $1", pid
            )
            if segments:
                result.fail(f"{pid}: segments left: {[dict(s) for s in segments][:5]}")
            counts = {
                r["stage"]: int(r["count"])
                for r in await connection.fetch(
                    "SELECT stage, count FROM pipeline_stage_counts WHERE pipeline_id = $1 AND count <> 0",
                    pid,
                )
            }
            actual = Counter(row["stage"] for row in rows)
            for segment in segments:
                actual[segment["stage"]] += int(segment["remaining"])
            if counts != dict(actual):
                result.fail(f"{pid}: stage counters {counts} != rows and segments {dict(actual)}")
            backing_counts = {
                r["object_key"]: int(r["documents"])
                for r in await connection.fetch(
                    "SELECT object_key, documents FROM backing_objects "
                    "WHERE pipeline_id = $1 AND documents <> 0",
                    pid,
                )
            }
            by_object = Counter(object_key_of(row["backing"]) for row in rows if row["backing"])
            if backing_counts != dict(by_object):
                result.fail(
                    f"{pid}: backing_objects {backing_counts} != documents per object {dict(by_object)}"
                )
            live_objects[pid] = sorted(by_object)
            result.documents += len(expected) + len(summaries)
        garbage = await connection.fetchval("SELECT count(*) FROM segment_garbage")
        if garbage:
            result.fail(f"{garbage} manifests still in segment_garbage")
    finally:
        await connection.close()
    return live_objects


async def audit_bucket(workload: Workload, live_objects: dict[str, list[str]], result: Audit) -> None:
    """After the sweep: every pack object is one a live document points into, every such
    object exists, and no segment manifest is left."""
    async with chunk_store(workload.stack) as store:
        for model in workload.pipelines.values():
            pid = model.pipeline_id
            keys = await store.list_keys(f"pipelines/{pid}/")
            packs = sorted(k for k in keys if k.endswith(".pack"))
            manifests = sorted(k for k in keys if "/segments/" in k)
            orphans = sorted(set(packs) - set(live_objects[pid]))
            missing = sorted(set(live_objects[pid]) - set(packs))
            if orphans:
                result.fail(f"{pid}: orphaned pack objects after the sweep: {orphans[:5]} ({len(orphans)})")
            if missing:
                result.lost += len(missing)
                result.fail(f"{pid}: live documents point into missing objects: {missing[:5]}")
            if manifests:
                result.fail(f"{pid}: segment manifests left: {manifests[:5]} ({len(manifests)})")


def audit_index(workload: Workload, result: Audit) -> None:
    """The Milvus Lite file (the gateway stopped) holds exactly the current chunks of every document."""
    for backend, model in workload.pipelines.items():
        expected: Counter[tuple[str, str, str]] = Counter(
            (doc_id, chunk.id, chunk.text)
            for doc_id, doc in model.expected.items()
            if doc is not None
            for chunk in doc.chunks
        )
        rows = milvus_lite_rows(workload.stack.milvus_path, model.pipeline_id.replace("-", "_"))
        summaries = workload.summary_documents() if backend == "segment" else set()
        summary_rows = Counter((d, c) for d, c, _ in rows.elements() if d in summaries)
        for doc_id in summaries:
            if summary_rows[(doc_id, "summary")] != 1:
                result.fail(
                    f"{model.pipeline_id}: summary {doc_id} has {summary_rows[(doc_id, 'summary')]} rows"
                )
        rows = Counter({key: n for key, n in rows.items() if key[0] not in summaries})
        result.chunks += sum(rows.values())
        for key, n in rows.items():
            if n > 1:
                result.duplicated += n - 1
                result.fail(f"{model.pipeline_id}: row {key[:2]} is in the index {n} times")
        for key in sorted(set(rows) - set(expected)):
            result.stale += 1
            result.fail(f"{model.pipeline_id}: stale or unknown row {key[:2]} ({key[2][:40]!r})")
        for key in sorted(set(expected) - set(rows)):
            result.lost += 1
            result.fail(f"{model.pipeline_id}: missing row {key[:2]}")


async def sweep_orphan_manifests(workload: Workload) -> int:
    """The claimer's sweep of segment manifests no segment row references, run in this process
    with no age limit (the claimer's own sweep keeps manifests younger than
    CLAIMER_MANIFEST_ORPHAN_AGE_SECONDS, 15 minutes): what a claimer killed between writing a
    manifest and committing, or a COMMIT whose outcome could not be learned, left behind."""
    from hevlayer.claimer.database import Database
    from hevlayer.claimer.manifests import ManifestCache
    from hevlayer.claimer.segment_garbage import ManifestGarbage

    stack = workload.stack
    db = Database(stack.dsn, min_size=1, max_size=2, timeout=10)
    objects = claimer_object_store(stack.s3, stack.bucket)
    await db.open()
    await objects.open()
    try:
        garbage = ManifestGarbage(db, objects, ManifestCache(objects, 0))
        return await garbage.sweep_unreferenced(min_age_seconds=0)
    finally:
        await objects.close()
        await db.close()


@asynccontextmanager
async def chunk_store(stack: KillStack) -> AsyncIterator[ChunkStore]:
    """The gateway's S3 access to the stack's bucket, in this process."""
    from hevlayer.gateway.chunkstore import ChunkStore, open_s3_client

    settings = gateway_s3_settings(stack.s3, stack.bucket)
    async with AsyncExitStack() as exits:
        client = await open_s3_client(settings, exits)
        yield ChunkStore(client, stack.bucket)


async def sweep_orphans(workload: Workload) -> int:
    """The gateway's orphan-pack sweep, run in this process with no age limit (the gateway's
    own sweep keeps packs younger than GATEWAY_PACK_ORPHAN_AGE_SECONDS, an hour): every
    pipeline, once the run is quiet."""
    from hevlayer.client.channel import open_channel
    from hevlayer.common.auth import INTERNAL_TOKEN_KEY
    from hevlayer.common.config import load_settings
    from hevlayer.gateway.cache import NoCache, ResilientCache
    from hevlayer.gateway.claimer_client import ClaimerClient
    from hevlayer.gateway.settings import StagingSettings
    from hevlayer.gateway.staging import Stager

    stack = workload.stack
    deleted = 0
    async with chunk_store(stack) as store:
        channel = open_channel(
            stack.service("claimer").grpc_address,
            metadata=[(INTERNAL_TOKEN_KEY, stack.stack.tokens.internal)],
        )
        try:
            claimer = ClaimerClient(channel)
            stager = Stager(claimer, store, ResilientCache(NoCache()), load_settings(StagingSettings, {}))
            for model in workload.pipelines.values():
                info = await claimer.pipeline(model.pipeline_id)
                deleted += await stager.sweep_orphan_packs(info, min_age_seconds=0)
        finally:
            await channel.close()
    return deleted
