"""Vector writes and queries: the transport-free core of IndexService and of
the REST vectors route.

**Writing** (:class:`VectorWriter.write`), for a batch of complete documents:

1. ``CheckLeases``: a document whose lease (worker, stage, fencing token) is
   not current gets ``stale_lease`` (FAILED_PRECONDITION) and nothing is
   written for it;
   the vectors must then be exactly the document's chunks as staged under that
   token (the claimer's backing names them; :class:`StagedChunks` reads their ids,
   remembered from the worker's chunk read, else from the chunk cache or S3): an
   unknown or duplicated chunk id is ``rejected`` naming ``vectors[i].id``, a
   missing one naming ``vectors`` (``missing chunk d2-0``), and nothing is written
   for that document;
2. the dimension: the pipeline's, else the existing namespace's, else the
   first vector's (the first write fixes it; the gateway then records it on
   the pipeline if the claimer accepts that); every vector is validated
   with the sink's own rules, and a document with a bad vector gets
   ``rejected`` (INVALID_ARGUMENT naming ``vectors[i].values``);
3. one ``replace_documents`` call for the batch, each document's rows written
   under its fencing token (its rows of that token or older deleted, the new
   rows upserted; rows of a newer token stay and win); a sink failure raises
   UNAVAILABLE (reason SINK_UNAVAILABLE) and the documents stay in their claim
   stage;
4. ``TransitionDocuments`` to ``indexed``, pinned to the fencing tokens the
   check saw. A document whose lease was lost meanwhile (the check passed, then
   the lease expired and a newer holder claimed it) gets ``stale_lease``
   (FAILED_PRECONDITION) and the rows just written under its token are deleted
   again (``delete_documents`` up to that token: never a newer holder's rows;
   until then queries skip them, the newest token winning). docs/reliability.md,
   "Fenced sink writes", explains why this holds under any pause.

**Querying** (:class:`Searcher.query`): text through the embedding service
(optional) or a vector; ``top_k``; an equality filter.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from hevlayer.client import EmbeddingClient, TransitionOutcome
from hevlayer.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
    Violation,
)
from hevlayer.common.telemetry import DOCUMENT_INDEX_SPAN, context_of, traceparent
from hevlayer.gateway.claimer_client import ClaimerClient, PipelineInfo
from hevlayer.gateway.metrics import QUERIES, SINK_ERRORS, SINK_OPERATIONS, WRITTEN_DOCUMENTS, WRITTEN_VECTORS
from hevlayer.gateway.sinks import (
    Hit,
    JSONValue,
    NamespaceSpec,
    Row,
    Scalar,
    Sink,
    SinkInstance,
    SinkKind,
    SinkPool,
)
from hevlayer.gateway.sinks.base import DistanceMetric, prepare_documents

log = logging.getLogger("hevlayer.gateway.indexing")
_tracer = trace.get_tracer("hevlayer.gateway")

INDEXED = "indexed"
DEFAULT_TOP_K = 10
MAX_TOP_K = 1000
MAX_VECTORS_PER_DOCUMENT = 100_000


@dataclass
class DocumentVectors:
    """The vectors of one document, as a writer sends them."""

    document_id: str
    fencing_token: int
    worker_id: str
    from_stage: str
    rows: list[Row] = field(default_factory=list)
    problem: ServiceError | None = None
    """Set when the document is malformed as sent (it is rejected unwritten)."""
    trace_parent: str = ""
    """The document's trace context as the writer sent it ("": none); its write is
    recorded there as a ``document.index`` span (docs/operations.md)."""


@dataclass(frozen=True)
class WriteOutcome:
    """What happened to one document of a write."""

    document_id: str
    outcome: str
    """``indexed``, ``stale_lease`` or ``rejected``."""
    vectors_written: int = 0
    error: ServiceError | None = None


def sink_kind(pipeline: PipelineInfo) -> SinkKind | None:
    """The pipeline's sink kind (None: the gateway's default)."""
    return SinkKind(pipeline.sink) if pipeline.sink else None


_SINK_PATH = re.compile(r"^documents\[.*?\]\.rows\[(\d+)\]\.?(.*)$", re.S)


def _vector_path(path: str) -> str:
    """A sink validation path (``documents[d].rows[3].chunk_id``) as the API names it
    (``vectors[3].id``)."""
    match = _SINK_PATH.match(path)
    if match is None:
        return "vectors"
    index, rest = match.groups()
    rest = {"chunk_id": "id", "values": "values"}.get(rest, rest)
    return f"vectors[{index}].{rest}" if rest else f"vectors[{index}]"


def as_sink_failure(error: ServiceError) -> ServiceError:
    if isinstance(error, Unavailable) and error.reason != "SINK_UNAVAILABLE":
        return Unavailable(
            error.message,
            reason="SINK_UNAVAILABLE",
            retry_after=error.retry_after or 1.0,
            metadata=error.metadata,
        )
    return error


class StagedChunks(Protocol):
    """Where the writer learns a staged document's chunk ids
    (:class:`hevlayer.gateway.staging.ChunkReader`)."""

    async def staged_chunk_ids(
        self, namespace: str, backings: Sequence[str]
    ) -> dict[str, tuple[str, ...] | ServiceError]:
        """The chunk ids each backing holds, or why it cannot be read."""
        ...


def chunk_mismatch(
    document_id: str, fencing_token: int, rows: Sequence[Row], staged: Sequence[str]
) -> InvalidArgument | None:
    """Why ``rows`` are not exactly one vector per chunk of ``staged`` (the chunk ids of the
    document as staged under ``fencing_token``); None when they are."""
    expected = set(staged)
    seen: set[str] = set()
    for index, row in enumerate(rows):
        chunk_id = row.chunk_id
        if chunk_id not in expected:
            return InvalidArgument.field(
                f"vectors[{index}].id",
                f"unknown chunk {chunk_id!r}: document {document_id!r} as staged under fencing token "
                f"{fencing_token} has no such chunk",
            )
        if chunk_id in seen:
            return InvalidArgument.field(
                f"vectors[{index}].id", f"duplicate chunk id {chunk_id!r} in the document"
            )
        seen.add(chunk_id)
    if len(seen) == len(expected):
        return None
    missing = [chunk_id for chunk_id in staged if chunk_id not in seen]
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    return InvalidArgument.field(
        "vectors",
        f"missing chunk {missing[0]}{more}: document {document_id!r} as staged under fencing token "
        f"{fencing_token} has {len(expected)} chunks and needs one vector for each",
    )


class VectorWriter:
    """Writes documents' vectors into their pipeline's sink (module docstring).

    With ``staged`` every document's vectors are checked against its staged chunk ids
    (step 1); without it (tools and tests writing to a sink directly) they are not.
    """

    def __init__(self, claimer: ClaimerClient, sinks: SinkPool, staged: StagedChunks | None = None) -> None:
        self.claimer = claimer
        self.sinks = sinks
        self.staged = staged
        self._bound: set[tuple[str, str, str]] = set()
        """(pipeline id, incarnation, instance id) the claimer confirmed bound to this gateway's sink."""
        # The default sink's error series exist at 0 from the start, so that an alert on
        # increase() sees the first failure.
        for operation in SINK_OPERATIONS:
            SINK_ERRORS.labels(sinks.resolve().value, operation)

    def sink_failure(self, pipeline: PipelineInfo, operation: str, error: ServiceError) -> ServiceError:
        """The error to raise for a failed sink call (see :func:`as_sink_failure`), counted in
        ``hevlayer_gateway_sink_errors_total`` unless it refuses invalid input."""
        if not isinstance(error, InvalidArgument):
            SINK_ERRORS.labels(self.sinks.resolve(sink_kind(pipeline)).value, operation).inc()
        return as_sink_failure(error)

    async def sink_for(self, pipeline: PipelineInfo) -> Sink:
        """The pipeline's sink; UNAVAILABLE (SINK_UNAVAILABLE) if it cannot be opened.

        A sink this gateway owns (Milvus Lite) is checked against the instance the claimer
        bound the pipeline to (the first gateway to use the pipeline's sink binds it):
        FAILED_PRECONDITION (SINK_INSTANCE_MISMATCH, naming GATEWAY_MILVUS_LITE_PATH) when it is
        another, so that gateways on different databases never split a pipeline's index."""
        try:
            sink = await self.sinks.get(sink_kind(pipeline))
        except ServiceError as error:
            raise self.sink_failure(pipeline, "open", error) from None
        if sink.instance is not None:
            await self._check_binding(pipeline, sink.instance)
        return sink

    async def _check_binding(self, pipeline: PipelineInfo, instance: SinkInstance) -> None:
        key = (pipeline.id, pipeline.incarnation, instance.instance_id)
        if key in self._bound:
            return
        bound = await self.claimer.bind_sink_instance(
            pipeline.id, instance.kind.value, instance.instance_id, instance.location
        )
        if bound.kind == instance.kind.value and bound.instance_id == instance.instance_id:
            self._bound.add(key)
            return
        raise FailedPrecondition(
            f"pipeline {pipeline.id!r} keeps its vectors in {bound.kind} instance {bound.instance_id} "
            f"(first used at {bound.location}), not in this gateway's {instance.location} (instance "
            f"{instance.instance_id}): gateways on different Milvus Lite databases would split its "
            f"index; point {instance.setting} at that database, or give replicas the Milvus or "
            "Turbopuffer sink (docs/reliability.md, Replicas)",
            violations=[
                Violation(instance.setting, f"pipeline {pipeline.id!r} is bound to {bound.location}")
            ],
            reason="SINK_INSTANCE_MISMATCH",
            metadata={
                "pipeline_id": pipeline.id,
                "bound_instance": bound.instance_id,
                "bound_location": bound.location,
                "instance": instance.instance_id,
            },
        )

    async def expected_dimension(self, pipeline: PipelineInfo) -> int:
        """The dimension a write must have, as step 2 determines it: the pipeline's, else its
        existing namespace's; 0 when neither is fixed (the first vector written fixes it).
        UNAVAILABLE (SINK_UNAVAILABLE) when the sink cannot tell."""
        if pipeline.dimension:
            return pipeline.dimension
        sink = await self.sink_for(pipeline)
        try:
            existing = await sink.describe_namespace(pipeline.target_namespace)
        except ServiceError as error:
            raise self.sink_failure(pipeline, "describe", error) from None
        return existing.dimension if existing else 0

    async def write(self, pipeline: PipelineInfo, documents: Sequence[DocumentVectors]) -> list[WriteOutcome]:
        """Write a batch of complete documents; one outcome per document, in order.

        Raises UNAVAILABLE (reason SINK_UNAVAILABLE) when the sink fails; no
        document of the batch is then moved to indexed.

        A document sent with a trace context gets a ``document.index`` span in its
        trace (linked to the calling span), ended with its outcome; its move to
        indexed is recorded by the claimer as a child of that span.
        """
        spans = _start_document_spans(pipeline, documents)
        if not spans:
            return await self._write(pipeline, documents, {})
        try:
            result = await self._write(pipeline, documents, spans)
        except BaseException as exc:
            for span in spans.values():
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                span.end()
            raise
        for index, span in spans.items():
            outcome = result[index]
            span.set_attribute("hevlayer.outcome", outcome.outcome)
            span.set_attribute("hevlayer.vectors_written", outcome.vectors_written)
            if outcome.error is not None:
                span.set_status(Status(StatusCode.ERROR, outcome.error.message))
            span.end()
        return result

    async def _write(
        self, pipeline: PipelineInfo, documents: Sequence[DocumentVectors], spans: Mapping[int, trace.Span]
    ) -> list[WriteOutcome]:
        outcomes: dict[int, WriteOutcome] = {}
        pending: list[int] = []
        for index, document in enumerate(documents):
            if document.problem is not None:
                outcomes[index] = WriteOutcome(document.document_id, "rejected", error=document.problem)
            else:
                pending.append(index)

        # 1. leases, grouped by (worker, stage) (one group in practice).
        tokens: dict[int, int] = {}
        backings: dict[int, str] = {}
        groups: dict[tuple[str, str], list[int]] = {}
        for index in pending:
            document = documents[index]
            groups.setdefault((document.worker_id, document.from_stage), []).append(index)
        for (worker_id, stage), indexes in groups.items():
            checks = await self.claimer.check_leases(
                pipeline.id,
                worker_id,
                stage,
                [(documents[i].document_id, documents[i].fencing_token) for i in indexes],
            )
            for index, check in zip(indexes, checks, strict=True):
                document = documents[index]
                if not check.found:
                    outcomes[index] = WriteOutcome(
                        document.document_id,
                        "rejected",
                        error=NotFound(
                            f"document {document.document_id!r} not found in pipeline {pipeline.id!r}",
                            metadata={"document_id": document.document_id},
                        ),
                    )
                elif not check.held:
                    outcomes[index] = WriteOutcome(
                        document.document_id,
                        "stale_lease",
                        error=FailedPrecondition(
                            f"worker {worker_id!r} does not hold a current lease on document "
                            f"{document.document_id!r} in stage {stage!r} with fencing token "
                            f"{document.fencing_token} (current token {check.fencing_token}); "
                            "nothing written",
                            reason="STALE_LEASE",
                            metadata={
                                "document_id": document.document_id,
                                "fencing_token": str(check.fencing_token),
                            },
                        ),
                    )
                else:
                    tokens[index] = check.fencing_token
                    backings[index] = check.backing
        pending = [i for i in pending if i in tokens]
        if self.staged is not None and pending:
            pending = await self._check_chunks(pipeline, documents, pending, tokens, backings, outcomes)

        # 2. dimension and validation with the sink's rules.
        writable: list[int] = []
        if pending:
            sink = await self.sink_for(pipeline)
            namespace = pipeline.target_namespace
            metric = DistanceMetric(pipeline.distance_metric)
            try:
                existing = await sink.describe_namespace(namespace)
            except ServiceError as error:
                raise self.sink_failure(pipeline, "describe", error) from None
            dimension = pipeline.dimension or (existing.dimension if existing else 0)
            if not dimension:
                dimension = next((len(documents[i].rows[0].values) for i in pending if documents[i].rows), 0)
            spec = NamespaceSpec(dimension, metric) if dimension else None
            writable = list(pending)

            # 3. the sink: one call for the batch. The sink validates the whole call
            # before writing anything; when it refuses, the documents at fault are
            # found one by one, rejected, and the others written.
            while writable:
                rows = {documents[i].document_id: documents[i].rows for i in writable}
                try:
                    if spec is not None and (existing is None or existing.dimension != dimension):
                        existing = await sink.ensure_namespace(namespace, dimension, metric)
                    if spec is not None:
                        await sink.replace_documents(
                            namespace, rows, {documents[i].document_id: tokens[i] for i in writable}
                        )
                    break
                except InvalidArgument:
                    culprits = self._culprits(documents, writable, spec)
                    if not culprits:
                        raise
                    for index, problem in culprits.items():
                        outcomes[index] = WriteOutcome(
                            documents[index].document_id, "rejected", error=problem
                        )
                    writable = [i for i in writable if i not in culprits]
                except ServiceError as error:
                    raise self.sink_failure(pipeline, "write", error) from None
            if writable and spec is not None and pipeline.dimension == 0:
                await self._record_dimension(pipeline, dimension)

        # 4. indexed.
        by_holder: dict[tuple[str, str], list[int]] = {}
        for index in writable:
            document = documents[index]
            by_holder.setdefault((document.worker_id, document.from_stage), []).append(index)
        for (worker_id, stage), indexes in by_holder.items():
            moves = await self.claimer.transition(
                pipeline.id,
                [(documents[i].document_id, tokens[i]) for i in indexes],
                from_stage=stage,
                worker_id=worker_id,
                to_stage=INDEXED,
                trace_parents=[traceparent(spans[i]) if i in spans else "" for i in indexes] if spans else (),
            )
            gone: list[str] = []
            lost: dict[str, int] = {}
            for index, move in zip(indexes, moves, strict=True):
                document = documents[index]
                if move.moved:
                    outcomes[index] = WriteOutcome(document.document_id, INDEXED, len(document.rows))
                    WRITTEN_VECTORS.inc(len(document.rows))
                elif move.outcome is TransitionOutcome.NOT_FOUND:  # deleted meanwhile
                    gone.append(document.document_id)
                    outcomes[index] = WriteOutcome(
                        document.document_id,
                        "rejected",
                        error=NotFound(f"document {document.document_id!r} was deleted during the write"),
                    )
                else:
                    lost[document.document_id] = tokens[index]
                    outcomes[index] = WriteOutcome(
                        document.document_id,
                        "stale_lease",
                        error=FailedPrecondition(
                            f"the lease on document {document.document_id!r} (fencing token {tokens[index]}) "
                            "was lost during the write; its rows are removed and the newer holder's win",
                            reason="STALE_LEASE",
                            metadata={
                                "document_id": document.document_id,
                                "fencing_token": str(tokens[index]),
                            },
                        ),
                    )
            if gone or lost:
                await self._remove_rows(pipeline, [*gone, *lost], lost)

        result = [outcomes[i] for i in range(len(documents))]
        for outcome in result:
            WRITTEN_DOCUMENTS.labels(outcome.outcome).inc()
        return result

    async def _check_chunks(
        self,
        pipeline: PipelineInfo,
        documents: Sequence[DocumentVectors],
        pending: list[int],
        tokens: Mapping[int, int],
        backings: Mapping[int, str],
        outcomes: dict[int, WriteOutcome],
    ) -> list[int]:
        """Step 1's chunk check: rejects (in ``outcomes``) each document whose vectors are not
        exactly its staged chunks; the documents left. A backing that cannot be read is that
        document's error (UNAVAILABLE for the whole batch: nothing is written)."""
        assert self.staged is not None
        staged = await self.staged.staged_chunk_ids(
            pipeline.target_namespace, [backings[i] for i in pending if backings[i]]
        )
        left: list[int] = []
        for index in pending:
            document = documents[index]
            backing = backings[index]
            ids = staged[backing] if backing else ()
            if isinstance(ids, Unavailable):
                raise ids
            if isinstance(ids, ServiceError):
                outcomes[index] = WriteOutcome(document.document_id, "rejected", error=ids)
                continue
            problem = chunk_mismatch(document.document_id, tokens[index], document.rows, ids)
            if problem is None:
                left.append(index)
            else:
                outcomes[index] = WriteOutcome(document.document_id, "rejected", error=problem)
        return left

    async def _remove_rows(
        self, pipeline: PipelineInfo, document_ids: list[str], up_to: dict[str, int]
    ) -> None:
        """Delete the rows of deleted documents (all) and of lost leases (up to the lost token).
        A failure is logged: queries already skip rows of a superseded token, and the
        document's next write replaces them."""
        try:
            sink = await self.sink_for(pipeline)
            await sink.delete_documents(pipeline.target_namespace, document_ids, up_to)
        except ServiceError as error:
            self.sink_failure(pipeline, "delete", error)
            log.warning("could not delete the rows of documents %s: %s", document_ids[:5], error.message)

    @staticmethod
    def _culprits(
        documents: Sequence[DocumentVectors], indexes: list[int], spec: NamespaceSpec | None
    ) -> dict[int, InvalidArgument]:
        """The documents among ``indexes`` the sink's validation refuses, with why."""
        if spec is None:
            return {}
        found: dict[int, InvalidArgument] = {}
        for index in indexes:
            document = documents[index]
            try:
                prepare_documents({document.document_id: document.rows}, spec)
            except InvalidArgument as error:
                found[index] = _rename(error)
        return found

    async def _record_dimension(self, pipeline: PipelineInfo, dimension: int) -> None:
        try:
            recorded = await self.claimer.set_dimension(pipeline.id, dimension)
        except ServiceError as error:
            log.info(
                "could not record dimension %d of pipeline %s: %s", dimension, pipeline.id, error.message
            )
            return
        if not recorded:
            log.debug("the claimer does not record dimensions; the sink namespace holds it")


def _start_document_spans(
    pipeline: PipelineInfo, documents: Sequence[DocumentVectors]
) -> dict[int, trace.Span]:
    """A ``document.index`` span per document sent with a trace context (by index), a
    child of that context, linked to the current span (the WriteVectors call)."""
    call = trace.get_current_span().get_span_context()
    links = [trace.Link(call)] if call.is_valid else None
    return {
        index: _tracer.start_span(
            DOCUMENT_INDEX_SPAN,
            context=context_of(document.trace_parent),
            links=links,
            attributes={
                "hevlayer.pipeline_id": pipeline.id,
                "hevlayer.document_id": document.document_id,
                "hevlayer.fencing_token": document.fencing_token,
                "hevlayer.worker_id": document.worker_id,
                "hevlayer.vectors": len(document.rows),
            },
        )
        for index, document in enumerate(documents)
        if document.trace_parent
    }


def _rename(error: InvalidArgument) -> InvalidArgument:
    violations = [Violation(_vector_path(v.field), v.description) for v in error.violations]
    if not violations:
        return error
    first = violations[0]
    return InvalidArgument(f"{first.field}: {first.description}", violations=violations)


# -- queries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A search request."""

    text: str | None = None
    vector: Sequence[float] | None = None
    top_k: int = 0
    filter: Mapping[str, JSONValue] = field(default_factory=dict)


class Searcher:
    """Answers queries against a pipeline's sink."""

    def __init__(
        self,
        claimer: ClaimerClient,
        writer: VectorWriter,
        embedder: EmbeddingClient | None,
        *,
        timeout: float = 30.0,
    ) -> None:
        self.claimer = claimer
        self.writer = writer
        self.embedder = embedder
        self.timeout = timeout

    async def query(self, pipeline_id: str, query: Query) -> list[Hit]:
        """Hits, best first (see :meth:`hevlayer.gateway.sinks.Sink.query`)."""
        if not pipeline_id:
            raise InvalidArgument.field("pipeline_id", "is required")
        top_k = query.top_k or DEFAULT_TOP_K
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidArgument.field(
                "top_k", f"must be between 1 and {MAX_TOP_K} (0 means {DEFAULT_TOP_K})"
            )
        if (query.text is None) == (query.vector is None):
            raise InvalidArgument.field("query", "set exactly one of text and vector")
        filter_values: dict[str, Scalar] = {}
        for key, value in query.filter.items():
            if isinstance(value, (str, int, float, bool)):
                filter_values[key] = value
            else:
                raise InvalidArgument.field(
                    f"filter.{key}", "must be a string, a number or a boolean (equality only)"
                )
        pipeline = await self.claimer.pipeline(pipeline_id)
        if query.text is not None:
            if not query.text:
                raise InvalidArgument.field("text", "must not be empty")
            if self.embedder is None:
                raise FailedPrecondition(
                    "text: text queries need the embedding service (EMBEDDER_ADDRESS is not set); "
                    "query by vector instead",
                    violations=[Violation("text", "no embedding service is configured")],
                    reason="EMBEDDER_NOT_CONFIGURED",
                )
            try:
                vector: Sequence[float] = await self.embedder.embed_query(query.text, timeout=self.timeout)
            except Unavailable as error:
                raise Unavailable(
                    f"embedding service: {error.message}", reason="EMBEDDER_UNAVAILABLE", retry_after=1.0
                ) from None
            QUERIES.labels("text").inc()
        else:
            assert query.vector is not None
            vector = query.vector
            QUERIES.labels("vector").inc()
        sink = await self.writer.sink_for(pipeline)
        try:
            return await sink.query(pipeline.target_namespace, vector, top_k, filter_values or None)
        except ServiceError as error:
            raise self.writer.sink_failure(pipeline, "query", error) from None
