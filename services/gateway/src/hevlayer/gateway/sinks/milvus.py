"""Milvus sinks: Milvus Lite (a local ``.db`` owned by the gateway) and Milvus / Zilliz (a URI).

One implementation, two constructors:

* :meth:`MilvusSink.open_lite` opens a Milvus Lite database: it starts Milvus
  Lite's engine and gRPC server inside this process
  (``milvus_lite.adapter.grpc.server.start_server_in_thread``, what pymilvus
  itself does for a ``.db`` URI) and talks to it with pymilvus, except for
  the write hot path: rows are upserted straight into the engine
  (``Collection.upsert``), skipping pymilvus's row-to-protobuf conversion, the
  gRPC round trip in one process and the server's protobuf-to-record
  conversion, which cost more than the engine's own work. One process owns a
  file, so the sink is the only writer: it keeps, per namespace, the vector
  ids of every document and replaces a document by deleting its stale ids
  (primary-key delete) and upserting the new rows. Milvus Lite evaluates a
  delete *by filter* by scanning every row (hundreds of milliseconds per call
  even on small collections), which would dominate the write path.
* :meth:`MilvusSink.open` connects to a Milvus or Zilliz endpoint shared with
  other writers: a document is replaced by ``delete(filter='document_id in
  [...] and fencing_token <= T')`` then an upsert, both evaluated by the server.

Collection layout (one collection per namespace, consistency ``Strong``):
``id`` VARCHAR(64) primary key (:func:`~.base.vector_id`), ``document_id``
and ``chunk_id`` VARCHAR(1024), ``vector`` FLOAT_VECTOR(dimension) with a
COSINE or L2 index, ``attributes`` JSON, ``filter_tags``
ARRAY<VARCHAR(32)> (see :func:`~.base.filter_tag`), ``fencing_token`` INT64
(the token of the write that stored the row; see :mod:`.base`).

pymilvus is synchronous: every call runs on a small dedicated thread pool
with the sink's timeout, and writes to one namespace are serialized (Milvus
Lite does not support concurrent writers to a collection).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from milvus_lite.adapter.grpc.server import start_server_in_thread
from milvus_lite.exceptions import (
    CollectionNotFoundError,
    DataDirLockedError,
    MilvusLiteError,
    SchemaValidationError,
)
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import (
    CollectionNotExistException,
    DataNotMatchException,
    DataTypeNotMatchException,
    MilvusException,
    ParamError,
)

from hevlayer.common.errors import FailedPrecondition, InvalidArgument, ServiceError, Unavailable, Violation

from .base import (
    MAX_FILTER_TAGS,
    MAX_ID_BYTES,
    DistanceMetric,
    Hit,
    NamespaceSpec,
    PreparedDocument,
    PreparedFilter,
    PreparedRow,
    Sink,
    SinkInstance,
    SinkKind,
    hit_attributes,
    score_from_distance,
)

T = TypeVar("T")

ID_FIELD = "id"
DOCUMENT_FIELD = "document_id"
CHUNK_FIELD = "chunk_id"
VECTOR_FIELD = "vector"
ATTRIBUTES_FIELD = "attributes"
TAGS_FIELD = "filter_tags"
TOKEN_FIELD = "fencing_token"
OUTPUT_FIELDS = [DOCUMENT_FIELD, CHUNK_FIELD, ATTRIBUTES_FIELD, TOKEN_FIELD]

_METRIC_TO_MILVUS = {DistanceMetric.COSINE_DISTANCE: "COSINE", DistanceMetric.EUCLIDEAN_SQUARED: "L2"}
_MILVUS_TO_METRIC = {value: key for key, value in _METRIC_TO_MILVUS.items()}
_COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_MAX_VALUES_PER_UPSERT = 4_000_000
_MAX_ROWS_PER_UPSERT = 2_000
_DOCUMENTS_PER_DELETE = 256


def milvus_string(value: str) -> str:
    """A Milvus filter-expression string literal (double-quoted, C escapes)."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def filter_expression(filter: PreparedFilter) -> str:
    """The Milvus boolean expression of a prepared filter ("" matches all)."""
    parts: list[str] = []
    if filter.document_id is not None:
        parts.append(f"{DOCUMENT_FIELD} == {milvus_string(filter.document_id)}")
    if filter.chunk_id is not None:
        parts.append(f"{CHUNK_FIELD} == {milvus_string(filter.chunk_id)}")
    if filter.tags:
        tags = ", ".join(f'"{tag}"' for tag in filter.tags)
        parts.append(f"array_contains_all({TAGS_FIELD}, [{tags}])")
    return " and ".join(parts)


def collection_schema(dimension: int) -> Any:
    """The pymilvus schema of a namespace's collection."""
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field(DOCUMENT_FIELD, DataType.VARCHAR, max_length=MAX_ID_BYTES)
    schema.add_field(CHUNK_FIELD, DataType.VARCHAR, max_length=MAX_ID_BYTES)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dimension)
    schema.add_field(ATTRIBUTES_FIELD, DataType.JSON)
    schema.add_field(TOKEN_FIELD, DataType.INT64)
    schema.add_field(
        TAGS_FIELD, DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_FILTER_TAGS, max_length=32
    )
    return schema


def index_params(metric: DistanceMetric, *, lite: bool) -> Any:
    """Indexes of a collection: the vector field's (FLAT on Milvus Lite, AUTOINDEX elsewhere) first."""
    params = MilvusClient.prepare_index_params()
    params.add_index(
        field_name=VECTOR_FIELD,
        index_name=VECTOR_FIELD,
        index_type="FLAT" if lite else "AUTOINDEX",
        metric_type=_METRIC_TO_MILVUS[metric],
    )
    if not lite:
        # Speeds up the delete-by-document filter of shared Milvus. (No index on
        # filter_tags: Milvus Lite's server mode refuses scalar indexes on arrays.)
        params.add_index(field_name=DOCUMENT_FIELD, index_name=DOCUMENT_FIELD, index_type="INVERTED")
    return params


def milvus_row(row: PreparedRow) -> dict[str, Any]:
    """The entity pymilvus upserts for a row.

    The attributes go as the JSON text the sink already encoded: pymilvus
    checks a string with orjson and sends it as is, instead of walking and
    re-encoding a dict (a third of its per-row cost).
    """
    return _fields(row, row.attributes_json)


def engine_record(row: PreparedRow) -> dict[str, Any]:
    """The record Milvus Lite's engine stores for a row: what its gRPC adapter decodes
    from pymilvus's upsert (the JSON field as the parsed value)."""
    return _fields(row, row.attributes)


def _fields(row: PreparedRow, attributes: Any) -> dict[str, Any]:
    values = row.values if isinstance(row.values, list) else list(row.values)
    return {
        ID_FIELD: row.id,
        DOCUMENT_FIELD: row.document_id,
        CHUNK_FIELD: row.chunk_id,
        VECTOR_FIELD: values,
        ATTRIBUTES_FIELD: attributes,
        TAGS_FIELD: row.filter_tags,
        TOKEN_FIELD: row.fencing_token,
    }


class MilvusSink(Sink):
    """A sink on Milvus Lite, Milvus or Zilliz (see the module docstring)."""

    def __init__(
        self,
        client: MilvusClient,
        *,
        kind: SinkKind,
        timeout: float,
        executor: ThreadPoolExecutor,
        lite_path: str | None = None,
        lite_engine: Any = None,
        lite_server: Any = None,
    ) -> None:
        super().__init__(kind)
        self._client = client
        self._engine = lite_engine
        """Milvus Lite's engine (``milvus_lite.db.MilvusLite``) for direct upserts; None on Milvus."""
        self._server = lite_server
        self._timeout = timeout
        self._executor = executor
        self._lite_path = lite_path
        self._exclusive = lite_path is not None
        self._locks: dict[str, asyncio.Lock] = {}
        # Exclusive (Milvus Lite) mode: namespace -> document id -> vector id -> fencing token.
        self._documents: dict[str, dict[str, dict[str, int]]] = {}
        self._closed = False

    # ---- constructors -----------------------------------------------------

    @classmethod
    async def open_lite(cls, path: str, *, timeout: float = 30.0) -> MilvusSink:
        """Open (creating if needed) the Milvus Lite database ``path`` (must end in ``.db``)."""
        if not path.endswith(".db"):
            raise InvalidArgument.field("path", "a Milvus Lite database path must end in .db")
        executor = _executor()
        try:
            opened, absolute = await asyncio.get_running_loop().run_in_executor(
                executor, functools.partial(_open_lite_client, path, timeout)
            )
        except DataDirLockedError:
            executor.shutdown(wait=False)
            raise FailedPrecondition(
                f"Milvus Lite database {path} is open in another process (another "
                "gateway?): Milvus Lite has a single owner; gateway replicas need the Milvus server "
                "or Turbopuffer sink (docs/reliability.md, Replicas)",
                violations=[Violation("GATEWAY_MILVUS_LITE_PATH", "owned by another process")],
                reason="OWNED_ELSEWHERE",
            ) from None
        except (MilvusException, MilvusLiteError) as exc:
            executor.shutdown(wait=False)
            raise Unavailable(f"cannot open Milvus Lite database {path}: {exc}") from exc
        except BaseException:
            executor.shutdown(wait=False)
            raise
        if opened is None:
            executor.shutdown(wait=False)
            raise FailedPrecondition(
                f"Milvus Lite database {absolute} is already open in this process: share its sink",
                violations=[Violation("path", "already open")],
                reason="ALREADY_OPEN",
            )
        client, server, engine = opened
        sink = cls(
            client,
            kind=SinkKind.MILVUS_LITE,
            timeout=timeout,
            executor=executor,
            lite_path=absolute,
            lite_engine=engine,
            lite_server=server,
        )
        try:
            instance_id = await asyncio.get_running_loop().run_in_executor(
                executor, functools.partial(lite_instance_id, absolute)
            )
        except BaseException:
            await sink.close()
            raise
        sink.instance = SinkInstance(
            SinkKind.MILVUS_LITE,
            instance_id,
            f"{socket.gethostname()}:{absolute}",
            "GATEWAY_MILVUS_LITE_PATH",
        )
        return sink

    @classmethod
    async def open(cls, uri: str, *, token: str = "", db_name: str = "", timeout: float = 30.0) -> MilvusSink:
        """Connect to a Milvus or Zilliz endpoint (``http(s)://host:port``); Unavailable if unreachable."""
        executor = _executor()
        try:
            client = await asyncio.get_running_loop().run_in_executor(
                executor,
                functools.partial(MilvusClient, uri=uri, token=token, db_name=db_name, timeout=timeout),
            )
        except MilvusException as exc:
            executor.shutdown(wait=False)
            raise Unavailable(f"cannot connect to Milvus at {uri}: {exc.message}") from exc
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(client, kind=SinkKind.MILVUS, timeout=timeout, executor=executor)

    async def close(self) -> None:
        """Close the client; for Milvus Lite also stop its server and release the file."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._client.close)
            if self._server is not None:
                await loop.run_in_executor(self._executor, functools.partial(self._server.stop, grace=2))
            if self._engine is not None:
                await loop.run_in_executor(self._executor, self._engine.close)
        finally:
            if self._lite_path is not None:
                with _open_lite_lock:
                    _open_lite_paths.discard(self._lite_path)
            self._executor.shutdown(wait=False)

    async def ping(self, timeout: float) -> None:
        """Milvus Lite runs in this process: usable while open. Milvus: ``list_collections``
        answers within ``timeout`` (on its own thread, not behind the sink's writes)."""
        if self._closed:
            raise Unavailable(f"the {self.kind.value} sink is closed", reason="SINK_UNAVAILABLE")
        if self._exclusive:
            return
        call = functools.partial(self._client.list_collections, timeout=timeout)
        try:
            await asyncio.get_running_loop().run_in_executor(None, call)
        except (MilvusException, grpc.RpcError) as exc:
            message = exc.message if isinstance(exc, MilvusException) else str(exc)
            raise Unavailable(
                f"Milvus does not answer list_collections: {message}",
                reason="SINK_UNAVAILABLE",
                metadata={"sink": self.kind.value},
            ) from exc

    # ---- backend hooks ----------------------------------------------------

    def _namespace_problem(self, namespace: str) -> str | None:
        if _COLLECTION_NAME.fullmatch(namespace) is None:
            return "Milvus collection names are 1-255 letters, digits or '_' and start with a letter or '_'"
        return None

    async def _ensure(self, namespace: str, spec: NamespaceSpec) -> NamespaceSpec:
        async with self._lock(namespace):
            state = await self._inspect(namespace)
            if state is None:
                try:
                    await self._call(
                        namespace,
                        "create collection",
                        self._client.create_collection,
                        namespace,
                        schema=collection_schema(spec.dimension),
                        consistency_level="Strong",
                    )
                except Unavailable:
                    # Another writer may have created it meanwhile (shared Milvus).
                    if await self._inspect(namespace) is None:
                        raise
                if self._exclusive:
                    self._documents[namespace] = {}
                state = await self._inspect(namespace)
                if state is None:
                    raise Unavailable(f"Milvus collection {namespace!r} vanished right after its creation")
            dimension, metric = state
            if metric is None:
                # A new collection, or one whose creation stopped before its index.
                # sync=False: pymilvus would poll the (empty) index build every
                # 0.5 s; load_collection waits for what matters.
                await self._call(
                    namespace,
                    "create index",
                    self._client.create_index,
                    namespace,
                    index_params(spec.metric, lite=self._exclusive),
                    sync=False,
                )
                metric = spec.metric
            await self._call(namespace, "load collection", self._client.load_collection, namespace)
            return NamespaceSpec(dimension, metric)

    async def _describe(self, namespace: str) -> NamespaceSpec | None:
        state = await self._inspect(namespace)
        if state is None or state[1] is None:
            return None  # absent, or half-created: ensure_namespace completes it
        await self._call(namespace, "load collection", self._client.load_collection, namespace)
        return NamespaceSpec(state[0], state[1])

    async def _inspect(self, namespace: str) -> tuple[int, DistanceMetric | None] | None:
        """None if there is no collection; else its dimension and metric (None: no vector index yet)."""
        if not await self._call(namespace, "has_collection", self._client.has_collection, namespace):
            return None
        description = await self._call(
            namespace, "describe collection", self._client.describe_collection, namespace
        )
        fields = {field["name"]: field for field in description.get("fields", [])}
        vector = fields.get(VECTOR_FIELD)
        expected = {ID_FIELD, DOCUMENT_FIELD, CHUNK_FIELD, VECTOR_FIELD, ATTRIBUTES_FIELD, TAGS_FIELD}
        if vector is None or not expected <= fields.keys():
            raise FailedPrecondition(
                f"Milvus collection {namespace!r} exists but was not created by a hevlayer sink",
                violations=[Violation("namespace", "holds a collection with another schema")],
                reason="FOREIGN_COLLECTION",
            )
        if TOKEN_FIELD not in fields:
            raise FailedPrecondition(
                f"Milvus collection {namespace!r} was created by an older hevlayer sink (no "
                f"{TOKEN_FIELD!r} field): drop it and re-index its pipeline",
                violations=[Violation("namespace", f"holds a collection without {TOKEN_FIELD!r}")],
                reason="FOREIGN_COLLECTION",
            )
        dimension = int(vector.get("params", {}).get("dim", 0))
        indexes = await self._call(
            namespace, "list indexes", self._client.list_indexes, namespace, VECTOR_FIELD
        )
        if VECTOR_FIELD not in (indexes or []):
            return dimension, None
        index = await self._call(
            namespace, "describe index", self._client.describe_index, namespace, VECTOR_FIELD
        )
        metric = _MILVUS_TO_METRIC.get(str((index or {}).get("metric_type", "")).upper())
        if metric is None:
            raise FailedPrecondition(
                f"Milvus collection {namespace!r} has no COSINE or L2 index on {VECTOR_FIELD!r}",
                violations=[Violation("distance_metric", "the collection's index uses another metric")],
                reason="METRIC_MISMATCH",
            )
        return dimension, metric

    async def _replace(self, namespace: str, spec: NamespaceSpec, documents: list[PreparedDocument]) -> None:
        async with self._lock(namespace):
            if self._exclusive:
                await self._replace_exclusive(namespace, spec, documents)
            else:
                await self._delete_by_filter(
                    namespace,
                    [document.document_id for document in documents],
                    {document.document_id: document.fencing_token for document in documents},
                )
                await self._upsert(namespace, spec, documents)

    async def _replace_exclusive(
        self, namespace: str, spec: NamespaceSpec, documents: list[PreparedDocument]
    ) -> None:
        known = await self._known_documents(namespace)
        stale: list[str] = []
        for document in documents:
            old = known.get(document.document_id)
            if old:
                new = {row.id for row in document.rows}
                stale.extend(
                    vector_id
                    for vector_id, token in old.items()
                    if token <= document.fencing_token and vector_id not in new
                )
        try:
            # Stale rows go first; rows whose id survives are overwritten
            # atomically by the upsert, so old and new never coexist.
            if stale:
                await self._call(namespace, "delete", self._client.delete, namespace, ids=stale)
            await self._upsert(namespace, spec, documents)
        except BaseException:
            # The index may hold part of the write: forget what we know and
            # re-read it from Milvus Lite before the next write.
            self._documents.pop(namespace, None)
            raise
        for document in documents:
            token = document.fencing_token
            kept = {
                vector_id: old_token
                for vector_id, old_token in known.get(document.document_id, {}).items()
                if old_token > token
            }
            kept.update((row.id, token) for row in document.rows)
            if kept:
                known[document.document_id] = kept
            else:
                known.pop(document.document_id, None)

    async def _delete(self, namespace: str, document_ids: list[str], up_to_tokens: Mapping[str, int]) -> None:
        async with self._lock(namespace):
            if not self._exclusive:
                await self._delete_by_filter(namespace, document_ids, up_to_tokens)
                return
            known = await self._known_documents(namespace)
            doomed: dict[str, list[str]] = {}
            for document_id in document_ids:
                bound = up_to_tokens.get(document_id)
                doomed[document_id] = [
                    vector_id
                    for vector_id, token in known.get(document_id, {}).items()
                    if bound is None or token <= bound
                ]
            ids = [vector_id for vector_ids in doomed.values() for vector_id in vector_ids]
            if ids:
                try:
                    await self._call(namespace, "delete", self._client.delete, namespace, ids=ids)
                except BaseException:
                    self._documents.pop(namespace, None)
                    raise
            for document_id, vector_ids in doomed.items():
                rows = known.get(document_id)
                if rows is None:
                    continue
                for vector_id in vector_ids:
                    rows.pop(vector_id, None)
                if not rows:
                    known.pop(document_id, None)

    async def _count_newer(self, namespace: str, pairs: list[tuple[str, int]]) -> int:
        if self._exclusive:
            known = await self._known_documents(namespace)
            return sum(
                1
                for document_id, floor in pairs
                for token in known.get(document_id, {}).values()
                if token > floor
            )
        newer = 0
        for start in range(0, len(pairs), _DOCUMENTS_PER_DELETE):
            expression = " or ".join(
                f"({DOCUMENT_FIELD} == {milvus_string(document_id)} and {TOKEN_FIELD} > {int(token)})"
                for document_id, token in pairs[start : start + _DOCUMENTS_PER_DELETE]
            )
            rows = await self._call(
                namespace,
                "count",
                self._client.query,
                namespace,
                filter=expression,
                output_fields=["count(*)"],
            )
            newer += int(rows[0]["count(*)"]) if rows else 0
        return newer

    async def _query(
        self, namespace: str, spec: NamespaceSpec, vector: list[float], top_k: int, filter: PreparedFilter
    ) -> list[Hit]:
        results = await self._call(
            namespace,
            "search",
            self._client.search,
            namespace,
            data=[vector],
            limit=top_k,
            filter=filter_expression(filter),
            output_fields=OUTPUT_FIELDS,
            anns_field=VECTOR_FIELD,
            search_params={"metric_type": _METRIC_TO_MILVUS[spec.metric]},
        )
        hits: list[Hit] = []
        for result in results[0] if results else []:
            entity = result.get("entity", {})
            document_id = str(entity.get(DOCUMENT_FIELD, ""))
            chunk_id = str(entity.get(CHUNK_FIELD, ""))
            hits.append(
                Hit(
                    document_id,
                    chunk_id,
                    _score(spec.metric, float(result.get("distance", 0.0))),
                    hit_attributes(document_id, chunk_id, entity.get(ATTRIBUTES_FIELD)),
                    int(entity.get(TOKEN_FIELD) or 0),
                )
            )
        return hits

    async def _count(self, namespace: str, document_id: str | None) -> int:
        expression = filter_expression(PreparedFilter(document_id=document_id))
        rows = await self._call(
            namespace, "count", self._client.query, namespace, filter=expression, output_fields=["count(*)"]
        )
        return int(rows[0]["count(*)"]) if rows else 0

    async def _drop(self, namespace: str) -> None:
        async with self._lock(namespace):
            self._documents.pop(namespace, None)
            if await self._call(namespace, "has_collection", self._client.has_collection, namespace):
                await self._call(namespace, "drop collection", self._client.drop_collection, namespace)

    # ---- helpers ----------------------------------------------------------

    def _lock(self, namespace: str) -> asyncio.Lock:
        lock = self._locks.get(namespace)
        if lock is None:
            lock = self._locks[namespace] = asyncio.Lock()
        return lock

    async def _known_documents(self, namespace: str) -> dict[str, dict[str, int]]:
        """Exclusive mode: the vector ids of every document with their fencing tokens (read once
        from Milvus Lite)."""
        known = self._documents.get(namespace)
        if known is not None:
            return known
        rows = await self._call(
            namespace,
            "list rows",
            self._client.query,
            namespace,
            filter=f'{ID_FIELD} != ""',
            output_fields=[DOCUMENT_FIELD, TOKEN_FIELD],
        )
        loaded: dict[str, dict[str, int]] = {}
        for row in rows:
            loaded.setdefault(str(row[DOCUMENT_FIELD]), {})[str(row[ID_FIELD])] = int(row[TOKEN_FIELD] or 0)
        self._documents[namespace] = loaded
        return loaded

    async def _delete_by_filter(
        self, namespace: str, document_ids: list[str], up_to_tokens: Mapping[str, int]
    ) -> None:
        """Delete the documents' rows (with a bound: those of a fencing token <= it), one
        filtered delete per bound and group of documents."""
        by_bound: dict[int | None, list[str]] = {}
        for document_id in document_ids:
            by_bound.setdefault(up_to_tokens.get(document_id), []).append(document_id)
        for bound, ids in by_bound.items():
            condition = "" if bound is None else f" and {TOKEN_FIELD} <= {int(bound)}"
            for start in range(0, len(ids), _DOCUMENTS_PER_DELETE):
                chunk = ids[start : start + _DOCUMENTS_PER_DELETE]
                expression = f"{DOCUMENT_FIELD} in [{', '.join(milvus_string(d) for d in chunk)}]{condition}"
                await self._call(namespace, "delete", self._client.delete, namespace, filter=expression)

    async def _upsert(self, namespace: str, spec: NamespaceSpec, documents: list[PreparedDocument]) -> None:
        if self._engine is not None:
            for batch in _batches(documents, spec.dimension, engine=True):
                await self._call(namespace, "upsert", self._engine_upsert, namespace, batch)
            return
        for batch in _batches(documents, spec.dimension):
            await self._call(namespace, "upsert", self._client.upsert, namespace, batch)

    def _engine_upsert(
        self, namespace: str, rows: list[dict[str, Any]], timeout: float | None = None
    ) -> None:
        """Milvus Lite: upsert records straight into the engine (the rows' fields as the
        engine's gRPC adapter would have decoded them)."""
        self._engine.get_collection(namespace).upsert(rows)

    async def _call(
        self, namespace: str, what: str, function: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """Run a pymilvus call on the sink's threads; translate its errors."""
        if self._closed:
            raise Unavailable(f"the {self.kind.value} sink is closed")
        call = functools.partial(function, *args, timeout=self._timeout, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except (MilvusException, MilvusLiteError, grpc.RpcError) as exc:
            raise self._translate(exc, namespace, what) from exc

    def _translate(self, exc: BaseException, namespace: str, what: str) -> ServiceError:
        message = exc.message if isinstance(exc, MilvusException) else str(exc)
        if isinstance(exc, SchemaValidationError):
            return InvalidArgument(f"Milvus Lite rejected the {what} of namespace {namespace!r}: {message}")
        if isinstance(exc, CollectionNotExistException | CollectionNotFoundError) or (
            isinstance(exc, MilvusException) and exc.code == 100
        ):
            self._forget(namespace)
            self._documents.pop(namespace, None)
            return FailedPrecondition(
                f"namespace {namespace!r} does not exist in Milvus ({what}: {message})",
                violations=[Violation("namespace", "does not exist")],
                reason="NAMESPACE_NOT_FOUND",
            )
        if isinstance(exc, ParamError | DataNotMatchException | DataTypeNotMatchException):
            return InvalidArgument(f"Milvus rejected the {what} of namespace {namespace!r}: {message}")
        return Unavailable(
            f"{self.kind.value} {what} on namespace {namespace!r} failed: {message}",
            reason="SINK_UNAVAILABLE",
            metadata={"sink": self.kind.value},
        )


def _score(metric: DistanceMetric, reported: float) -> float:
    """Milvus reports COSINE as the similarity itself and L2 as the squared distance."""
    if metric is DistanceMetric.COSINE_DISTANCE:
        return reported
    return score_from_distance(metric, reported)


_open_lite_lock = threading.Lock()
_open_lite_paths: set[str] = set()
"""Milvus Lite databases this process has open: two sinks on one file would
disagree on which rows each document has (and closing one would stop the
other's server), so a second open is refused."""


def _open_lite_client(path: str, timeout: float) -> tuple[tuple[MilvusClient, Any, Any] | None, str]:
    """Create the database's directory and open it: Milvus Lite's engine and its gRPC
    server on a loopback port in this process, and a pymilvus client of that server.

    ``None`` when this process already has the database open.
    """
    absolute = os.path.abspath(path)
    with _open_lite_lock:
        if absolute in _open_lite_paths:
            return None, absolute
        _open_lite_paths.add(absolute)
    server: Any = None
    engine: Any = None
    try:
        os.makedirs(os.path.dirname(absolute), exist_ok=True)
        server, engine, port = start_server_in_thread(data_dir=absolute, host="127.0.0.1", port=0)
        client = MilvusClient(uri=f"http://127.0.0.1:{port}", timeout=timeout)
        return (client, server, engine), absolute
    except BaseException:
        if server is not None:
            server.stop(grace=0)
        if engine is not None:
            engine.close()
        with _open_lite_lock:
            _open_lite_paths.discard(absolute)
        raise


INSTANCE_FILE = "hevlayer-sink-instance"
"""File inside a Milvus Lite database directory that holds the database's instance id."""


def lite_instance_id(directory: str) -> str:
    """The instance id of the Milvus Lite database ``directory`` (which this process has open,
    so no other process writes it), created on first open: a random id written atomically into
    :data:`INSTANCE_FILE`. It travels with the directory (a copy or a move keeps it) and differs
    between two databases. FAILED_PRECONDITION naming GATEWAY_MILVUS_LITE_PATH if the file is
    damaged (removing it binds the database afresh; docs/reliability.md, "Replicas")."""
    path = os.path.join(directory, INSTANCE_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        instance_id = uuid.uuid4().hex
        scratch = f"{path}.{os.getpid()}.tmp"
        with open(scratch, "w", encoding="utf-8") as file:
            json.dump({"instance_id": instance_id}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(scratch, path)
        return instance_id
    try:
        value = json.loads(text)["instance_id"]
    except (ValueError, KeyError, TypeError):
        value = None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{32}", value):
        raise FailedPrecondition(
            f"Milvus Lite database {directory}: {INSTANCE_FILE} is damaged (expected "
            '{"instance_id": "<32 hex digits>"})',
            violations=[Violation("GATEWAY_MILVUS_LITE_PATH", f"{INSTANCE_FILE} is damaged")],
            reason="SINK_INSTANCE_DAMAGED",
        )
    return value


def _executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="milvus-sink")


def _batches(
    documents: list[PreparedDocument], dimension: int, *, engine: bool = False
) -> Iterator[list[dict[str, Any]]]:
    """Upsert batches that keep a document whole unless it alone exceeds a batch
    (rows for pymilvus, or ``engine`` records for Milvus Lite's engine)."""
    limit = max(1, min(_MAX_ROWS_PER_UPSERT, _MAX_VALUES_PER_UPSERT // dimension))
    convert = engine_record if engine else milvus_row
    batch: list[dict[str, Any]] = []
    for document in documents:
        if batch and len(batch) + len(document.rows) > limit:
            yield batch
            batch = []
        for row in document.rows:
            batch.append(convert(row))
            if len(batch) >= limit:
                yield batch
                batch = []
    if batch:
        yield batch
