"""Turbopuffer sink (the ``turbopuffer`` client, async).

A namespace is a Turbopuffer namespace of the same name, created empty by
``ensure_namespace`` (``create_namespace: true`` with a declared schema;
the vector attribute's ANN config carries the distance metric). Each row is
a document whose ``id`` is :func:`~.base.vector_id`, with attributes
``document_id`` and ``chunk_id`` (filterable strings), ``attributes`` (the
row's attributes as JSON text, not filterable: Turbopuffer has no object
type), ``filter_tags`` (``[]string``, see :func:`~.base.filter_tag`) and
``fencing_token`` (``int``, filterable: the token of the write that stored the
row, see :mod:`.base`).

``replace_documents`` sends ONE write request per group of whole documents:
``delete_by_filter: ["And", [["document_id", "In", [...]], ["fencing_token",
"Lte", T]]]`` (one such term per token of the group, OR-ed) plus ``upsert_rows``.
Turbopuffer applies a write atomically, the filtered delete before the
upserts, so a document's old and new rows are never visible together, and
a retried request converges to the same rows.

No Turbopuffer server can run in this repository's tests; they run this sink
against ``tests/support/fakes/turbopuffer.py`` (see ``docs/sinks.md``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, cast

import turbopuffer
from turbopuffer import AsyncTurbopuffer, omit
from turbopuffer.types import AttributeSchemaParam, RowParam
from turbopuffer.types.custom import Filter

from hevlayer.common.errors import FailedPrecondition, ServiceError, Unavailable, Violation

from .base import (
    DistanceMetric,
    Hit,
    JSONValue,
    NamespaceSpec,
    PreparedDocument,
    PreparedFilter,
    PreparedRow,
    Sink,
    SinkKind,
    hit_attributes,
    score_from_distance,
)

DOCUMENT_ATTRIBUTE = "document_id"
CHUNK_ATTRIBUTE = "chunk_id"
ATTRIBUTES_ATTRIBUTE = "attributes"
TAGS_ATTRIBUTE = "filter_tags"
TOKEN_ATTRIBUTE = "fencing_token"
INCLUDED_ATTRIBUTES = [DOCUMENT_ATTRIBUTE, CHUNK_ATTRIBUTE, ATTRIBUTES_ATTRIBUTE, TOKEN_ATTRIBUTE]

_NAMESPACE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_VECTOR_TYPE = re.compile(r"\[(\d+)\]f(?:16|32)")
_MAX_ROWS_PER_WRITE = 10_000
_MAX_VALUES_PER_WRITE = 8_000_000
_COUNT_LABEL = "count"


def namespace_schema(spec: NamespaceSpec) -> dict[str, AttributeSchemaParam]:
    """The schema a hevlayer namespace declares (on creation and on every write)."""
    return {
        "id": "string",
        "vector": {"type": f"[{spec.dimension}]f32", "ann": {"distance_metric": spec.metric.value}},
        DOCUMENT_ATTRIBUTE: {"type": "string", "filterable": True},
        CHUNK_ATTRIBUTE: {"type": "string", "filterable": True},
        ATTRIBUTES_ATTRIBUTE: {"type": "string", "filterable": False},
        TAGS_ATTRIBUTE: {"type": "[]string", "filterable": True},
        TOKEN_ATTRIBUTE: {"type": "int", "filterable": True},
    }


def turbopuffer_row(row: PreparedRow) -> RowParam:
    """The ``upsert_rows`` entry of a row."""
    values = row.values if isinstance(row.values, list) else list(row.values)
    return cast(
        RowParam,
        {
            "id": row.id,
            "vector": values,
            DOCUMENT_ATTRIBUTE: row.document_id,
            CHUNK_ATTRIBUTE: row.chunk_id,
            ATTRIBUTES_ATTRIBUTE: row.attributes_json,
            TAGS_ATTRIBUTE: row.filter_tags,
            TOKEN_ATTRIBUTE: row.fencing_token,
        },
    )


def documents_filter(document_ids: list[str], up_to_tokens: Mapping[str, int]) -> Filter:
    """The rows of these documents, of a fencing token <= the document's bound where it has one."""
    by_bound: dict[int | None, list[str]] = {}
    for document_id in document_ids:
        by_bound.setdefault(up_to_tokens.get(document_id), []).append(document_id)
    terms: list[Filter] = []
    for bound, ids in by_bound.items():
        term: Filter = (DOCUMENT_ATTRIBUTE, "In", ids)
        terms.append(
            term if bound is None else cast(Filter, ("And", [term, (TOKEN_ATTRIBUTE, "Lte", bound)]))
        )
    return terms[0] if len(terms) == 1 else cast(Filter, ("Or", terms))


def turbopuffer_filter(filter: PreparedFilter) -> Filter | None:
    """The Turbopuffer filter of a prepared filter (None matches everything)."""
    conditions: list[Filter] = []
    if filter.document_id is not None:
        conditions.append((DOCUMENT_ATTRIBUTE, "Eq", filter.document_id))
    if filter.chunk_id is not None:
        conditions.append((CHUNK_ATTRIBUTE, "Eq", filter.chunk_id))
    conditions.extend((TAGS_ATTRIBUTE, "Contains", tag) for tag in filter.tags)
    if not conditions:
        return None
    if len(conditions) == 1:
        return conditions[0]
    return ("And", conditions)


PROBE_NAMESPACE = "hevlayer-readiness-probe"
"""The namespace the readiness probe asks the metadata of (never created)."""


class TurbopufferSink(Sink):
    """A sink on Turbopuffer (see the module docstring)."""

    def __init__(self, client: AsyncTurbopuffer) -> None:
        super().__init__(SinkKind.TURBOPUFFER)
        self._client = client

    @classmethod
    def create(
        cls,
        *,
        api_key: str,
        region: str | None = None,
        base_url: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
    ) -> TurbopufferSink:
        """A sink on the region's API (or on ``base_url``); opens no connection yet.

        The client retries connection errors, 408, 409, 429 and 5xx
        ``max_retries`` times before the sink reports Unavailable.
        """
        client = AsyncTurbopuffer(
            api_key=api_key,
            region=region or None,
            base_url=base_url or None,
            timeout=timeout,
            max_retries=max_retries,
            telemetry=False,
        )
        return cls(client)

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.close()

    async def ping(self, timeout: float) -> None:
        """One metadata request (no retry) for :data:`PROBE_NAMESPACE`: an answer, 404 included,
        means Turbopuffer is reachable and accepts the API key."""
        client = self._client.with_options(timeout=timeout, max_retries=0)
        try:
            await client.namespace(PROBE_NAMESPACE).metadata()
        except turbopuffer.NotFoundError:
            return
        except turbopuffer.APIError as exc:
            raise _translate(exc, PROBE_NAMESPACE, "readiness probe") from exc

    # ---- backend hooks ----------------------------------------------------

    def _namespace_problem(self, namespace: str) -> str | None:
        if _NAMESPACE_NAME.fullmatch(namespace) is None:
            return "Turbopuffer namespace names are 1-128 of A-Z a-z 0-9 - _ ."
        return None

    async def _ensure(self, namespace: str, spec: NamespaceSpec) -> NamespaceSpec:
        existing = await self._describe(namespace)
        if existing is not None:
            return existing
        try:
            await self._client.namespace(namespace).write(
                create_namespace=True,
                schema=namespace_schema(spec),
            )
        except turbopuffer.APIError as exc:
            raise _translate(exc, namespace, "create namespace") from exc
        created = await self._describe(namespace)
        if created is None:
            raise Unavailable(f"Turbopuffer namespace {namespace!r} is missing right after its creation")
        return created

    async def _describe(self, namespace: str) -> NamespaceSpec | None:
        try:
            metadata = await self._client.namespace(namespace).metadata()
        except turbopuffer.NotFoundError:
            return None
        except turbopuffer.APIError as exc:
            raise _translate(exc, namespace, "read metadata") from exc
        vector = metadata.schema_.get("vector")
        match = _VECTOR_TYPE.fullmatch(str(vector.type)) if vector is not None else None
        if vector is None or match is None:
            raise FailedPrecondition(
                f"Turbopuffer namespace {namespace!r} exists but has no fixed-size vector attribute",
                violations=[Violation("namespace", "holds a namespace with another schema")],
                reason="FOREIGN_NAMESPACE",
            )
        ann = vector.ann
        metric_name = getattr(ann, "distance_metric", None)
        try:
            metric = DistanceMetric(metric_name)
        except ValueError:
            raise FailedPrecondition(
                f"Turbopuffer namespace {namespace!r} has no ANN distance metric ({ann!r})",
                violations=[Violation("distance_metric", "the namespace declares none")],
                reason="METRIC_MISMATCH",
            ) from None
        return NamespaceSpec(int(match.group(1)), metric)

    async def _replace(self, namespace: str, spec: NamespaceSpec, documents: list[PreparedDocument]) -> None:
        handle = self._client.namespace(namespace)
        schema = namespace_schema(spec)
        for group in _groups(documents):
            rows = [turbopuffer_row(row) for document in group for row in document.rows]
            delete_filter = documents_filter(
                [document.document_id for document in group],
                {document.document_id: document.fencing_token for document in group},
            )
            try:
                await handle.write(
                    create_namespace=False,  # only ensure_namespace creates namespaces
                    delete_by_filter=delete_filter,
                    upsert_rows=rows if rows else omit,
                    distance_metric=spec.metric.value if rows else omit,
                    schema=schema if rows else omit,
                )
            except turbopuffer.NotFoundError as exc:
                self._forget(namespace)
                raise FailedPrecondition(
                    f"Turbopuffer namespace {namespace!r} does not exist (deleted meanwhile?)",
                    violations=[Violation("namespace", "does not exist")],
                    reason="NAMESPACE_NOT_FOUND",
                ) from exc
            except turbopuffer.APIError as exc:
                raise _translate(exc, namespace, "write") from exc

    async def _delete(self, namespace: str, document_ids: list[str], up_to_tokens: Mapping[str, int]) -> None:
        delete_filter = documents_filter(document_ids, up_to_tokens)
        try:
            await self._client.namespace(namespace).write(delete_by_filter=delete_filter)
        except turbopuffer.NotFoundError:
            self._forget(namespace)
        except turbopuffer.APIError as exc:
            raise _translate(exc, namespace, "delete") from exc

    async def _query(
        self, namespace: str, spec: NamespaceSpec, vector: list[float], top_k: int, filter: PreparedFilter
    ) -> list[Hit]:
        filters = turbopuffer_filter(filter)
        try:
            response = await self._client.namespace(namespace).query(
                rank_by=("vector", "ANN", vector),
                top_k=top_k,
                filters=filters if filters is not None else omit,
                include_attributes=INCLUDED_ATTRIBUTES,
            )
        except turbopuffer.NotFoundError:
            self._forget(namespace)
            return []
        except turbopuffer.APIError as exc:
            raise _translate(exc, namespace, "query") from exc
        hits: list[Hit] = []
        for row in response.rows or []:
            extra: dict[str, Any] = row.model_extra or {}
            document_id = str(extra.get(DOCUMENT_ATTRIBUTE, ""))
            chunk_id = str(extra.get(CHUNK_ATTRIBUTE, ""))
            stored = extra.get(ATTRIBUTES_ATTRIBUTE)
            attributes: dict[str, JSONValue] = (
                json.loads(stored) if isinstance(stored, str) and stored else {}
            )
            distance = float(extra.get("$dist", 0.0))
            hits.append(
                Hit(
                    document_id,
                    chunk_id,
                    score_from_distance(spec.metric, distance),
                    hit_attributes(document_id, chunk_id, attributes),
                    int(extra.get(TOKEN_ATTRIBUTE) or 0),
                )
            )
        return hits

    async def _count_newer(self, namespace: str, pairs: list[tuple[str, int]]) -> int:
        terms = [
            cast(Filter, ("And", [(DOCUMENT_ATTRIBUTE, "Eq", document_id), (TOKEN_ATTRIBUTE, "Gt", token)]))
            for document_id, token in pairs
        ]
        return await self._aggregate_count(
            namespace, terms[0] if len(terms) == 1 else cast(Filter, ("Or", terms))
        )

    async def _count(self, namespace: str, document_id: str | None) -> int:
        return await self._aggregate_count(
            namespace, turbopuffer_filter(PreparedFilter(document_id=document_id))
        )

    async def _aggregate_count(self, namespace: str, filters: Filter | None) -> int:
        try:
            response = await self._client.namespace(namespace).query(
                aggregate_by={_COUNT_LABEL: ("Count",)},
                filters=filters if filters is not None else omit,
            )
        except turbopuffer.NotFoundError:
            self._forget(namespace)
            return 0
        except turbopuffer.APIError as exc:
            raise _translate(exc, namespace, "count") from exc
        value = (response.aggregations or {}).get(_COUNT_LABEL, 0)
        return int(cast(int, value))

    async def _drop(self, namespace: str) -> None:
        try:
            await self._client.namespace(namespace).delete_all()
        except turbopuffer.NotFoundError:
            return
        except turbopuffer.APIError as exc:
            raise _translate(exc, namespace, "delete namespace") from exc


def _groups(documents: list[PreparedDocument]) -> Iterator[list[PreparedDocument]]:
    """Write requests of whole documents (a document is never split: its write is atomic)."""
    group: list[PreparedDocument] = []
    rows = 0
    values = 0
    for document in documents:
        size = sum(len(row.values) for row in document.rows)
        if group and (
            rows + len(document.rows) > _MAX_ROWS_PER_WRITE or values + size > _MAX_VALUES_PER_WRITE
        ):
            yield group
            group, rows, values = [], 0, 0
        group.append(document)
        rows += len(document.rows)
        values += size
    if group:
        yield group


def _translate(exc: turbopuffer.APIError, namespace: str, what: str) -> ServiceError:
    """Unavailable for anything worth retrying; FailedPrecondition when Turbopuffer refuses the request."""
    if isinstance(exc, turbopuffer.APIStatusError):
        status = exc.status_code
        detail = _error_text(exc)
        if status in (400, 422):
            return FailedPrecondition(
                f"Turbopuffer refused the {what} of namespace {namespace!r}: {detail}",
                violations=[Violation("namespace", detail)],
                reason="SINK_REJECTED",
                metadata={"sink": "turbopuffer", "http_status": str(status)},
            )
        return Unavailable(
            f"Turbopuffer {what} on namespace {namespace!r} failed with HTTP {status}: {detail}",
            retry_after=_retry_after(exc),
            reason="SINK_UNAVAILABLE",
            metadata={"sink": "turbopuffer", "http_status": str(status)},
        )
    return Unavailable(
        f"Turbopuffer {what} on namespace {namespace!r} failed: {exc}",
        reason="SINK_UNAVAILABLE",
        metadata={"sink": "turbopuffer"},
    )


def _error_text(exc: turbopuffer.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return exc.message


def _retry_after(exc: turbopuffer.APIStatusError) -> float:
    header = exc.response.headers.get("retry-after")
    try:
        return max(0.0, float(header)) if header is not None else 1.0
    except ValueError:
        return 1.0
