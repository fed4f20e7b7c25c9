"""A local fake of the Turbopuffer HTTP API, for tests only.

No Turbopuffer server can run here (it is SaaS only), so the gateway's
Turbopuffer sink is tested with the real ``turbopuffer`` client against this
aiohttp server. It implements exactly the part of the API the sink uses,
with Turbopuffer's documented semantics, and refuses everything else with a
400 naming what it does not implement (so a sink change that starts using a
new feature fails loudly instead of passing against a lenient fake):

* ``POST /v2/namespaces/{ns}`` (write): ``upsert_rows``, ``upsert_columns``,
  ``deletes``, ``delete_by_filter``, ``distance_metric``, ``schema``,
  ``create_namespace``, ``return_affected_ids``. One request is applied
  atomically on a copy of the namespace: ``delete_by_filter`` first, then the
  upserts, then ``deletes``; any error leaves the namespace unchanged.
  Attribute types are inferred on first use and enforced afterwards; vector
  dimensions are fixed by the schema or the first vector; ids are strings of
  at most 64 bytes or unsigned integers; vectors are stored as float32.
* ``POST /v2/namespaces/{ns}/query``: ``rank_by: ["vector", "ANN"|"kNN", v]``
  (exact search) with ``top_k``/``limit``, ``filters`` (Eq, NotEq, In, NotIn,
  Lt, Lte, Gt, Gte, Contains, NotContains, ContainsAny, NotContainsAny, And,
  Or, Not; only on filterable attributes), ``include_attributes``,
  ``exclude_attributes``, ``aggregate_by`` (``Count``), ``consistency``.
  Rows carry ``$dist`` (``cosine_distance`` = 1 - cosine similarity,
  ``euclidean_squared``).
* ``GET /v2/namespaces/{ns}/metadata``, ``GET /v1/namespaces/{ns}/schema``,
  ``DELETE /v2/namespaces/{ns}``.

Every request is recorded (:attr:`FakeTurbopuffer.requests`) so tests can
assert the exact JSON the real client emits, and :meth:`fail_next` queues
error responses (429, 5xx, ...) for failure tests. The ``prefer:
respond-async`` header the client sends is ignored: answering synchronously
is what a server that does not apply the preference does.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import math
import re
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_NAMESPACE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_VECTOR_TYPE = re.compile(r"\[(\d+)\]f(16|32)")
_SCALAR_TYPES = {"string", "int", "uint", "float", "bool", "uuid", "datetime"}
_ARRAY_TYPES = {f"[]{t}" for t in _SCALAR_TYPES}
_WRITE_KEYS = {
    "upsert_rows",
    "upsert_columns",
    "deletes",
    "delete_by_filter",
    "delete_by_filter_allow_partial",
    "distance_metric",
    "schema",
    "create_namespace",
    "return_affected_ids",
    "disable_backpressure",
}
_QUERY_KEYS = {
    "rank_by",
    "top_k",
    "limit",
    "filters",
    "include_attributes",
    "exclude_attributes",
    "aggregate_by",
    "consistency",
    "vector_encoding",
}
_METRICS = {"cosine_distance", "euclidean_squared"}
MAX_TOP_K = 1200


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeNamespace:
    """State of one namespace: its schema (attribute -> config) and documents (id -> row)."""

    schema: dict[str, dict[str, Any]] = field(default_factory=dict)
    documents: dict[Any, dict[str, Any]] = field(default_factory=dict)
    created_at: str = ""
    updated_at: str = ""

    @property
    def vector_config(self) -> dict[str, Any] | None:
        """The schema entry of the ``vector`` attribute, if declared."""
        return self.schema.get("vector")

    @property
    def distance_metric(self) -> str | None:
        """The ANN metric of the ``vector`` attribute."""
        config = self.vector_config
        ann = config.get("ann") if config else None
        return ann.get("distance_metric") if isinstance(ann, dict) else None

    @property
    def dimension(self) -> int | None:
        """The vector dimension, once known."""
        config = self.vector_config
        match = _VECTOR_TYPE.fullmatch(str(config.get("type", ""))) if config else None
        return int(match.group(1)) if match else None


@dataclass(frozen=True)
class _Fault:
    status: int
    headers: dict[str, str]
    message: str


class FakeTurbopuffer:
    """The fake server. ``await start()`` gives its base URL (loopback, free port)."""

    def __init__(self, api_key: str = "tpuf-test-key") -> None:
        self.api_key = api_key
        self.namespaces: dict[str, FakeNamespace] = {}
        self.requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # ---- lifecycle and test helpers ---------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application (routes of the API subset)."""
        app = web.Application(client_max_size=512 * 1024 * 1024, middlewares=[self._middleware])
        app.router.add_post("/v2/namespaces/{namespace}", self._write)
        app.router.add_delete("/v2/namespaces/{namespace}", self._delete_namespace)
        app.router.add_post("/v2/namespaces/{namespace}/query", self._query)
        app.router.add_get("/v2/namespaces/{namespace}/metadata", self._metadata)
        app.router.add_get("/v1/namespaces/{namespace}/schema", self._schema)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port); returns the base URL."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        bound_port = sockets[0].getsockname()[1]
        self.base_url = f"http://{host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def fail_next(
        self, status: int, *, times: int = 1, retry_after: float | None = None, message: str = "injected"
    ) -> None:
        """Answer the next ``times`` requests with ``status`` (and a Retry-After header)."""
        headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
        self._faults.extend(_Fault(status, headers, message) for _ in range(times))

    def clear(self) -> None:
        """Forget recorded requests and pending faults (state is kept)."""
        self.requests.clear()
        self._faults.clear()

    # ---- plumbing ---------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={key.lower(): value for key, value in request.headers.items()},
                body=body,
            )
        )
        if self._faults:
            fault = self._faults.pop(0)
            return _error(fault.status, fault.message, fault.headers)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "unauthorized: missing or invalid API key")
        namespace = request.match_info.get("namespace", "")
        if _NAMESPACE.fullmatch(namespace) is None:
            return _error(400, f"invalid namespace name {namespace!r}: must match [A-Za-z0-9-_.]{{1,128}}")
        if body is not None and not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        try:
            response: web.StreamResponse = await handler(request)
        except _ApiError as exc:
            return _error(exc.status, exc.message)
        return response

    async def _body(self, request: web.Request) -> dict[str, Any]:
        """The JSON body (aiohttp caches what the middleware read; it checked it is an object)."""
        raw = await request.read()
        return dict(json.loads(raw)) if raw else {}

    def _existing(self, name: str) -> FakeNamespace:
        namespace = self.namespaces.get(name)
        if namespace is None:
            raise _ApiError(404, f"namespace '{name}' was not found")
        return namespace

    # ---- write ------------------------------------------------------------

    async def _write(self, request: web.Request) -> web.Response:
        name = request.match_info["namespace"]
        body = await self._body(request)
        unknown = sorted(set(body) - _WRITE_KEYS)
        if unknown:
            raise _ApiError(400, f"write parameters not implemented by the fake: {unknown}")
        existing = self.namespaces.get(name)
        if existing is None and body.get("create_namespace") is False:
            raise _ApiError(404, f"namespace '{name}' was not found")
        state = copy.deepcopy(existing) if existing is not None else FakeNamespace(created_at=_now())
        if "schema" in body:
            _apply_schema(state, body["schema"])
        if "distance_metric" in body:
            _apply_metric(state, body["distance_metric"])
        if body.get("create_namespace") is True and existing is None and "id" not in state.schema:
            raise _ApiError(400, "creating an empty namespace requires the id type in schema")

        deleted_ids: list[Any] = []
        if "delete_by_filter" in body:
            predicate = _compile_filter(body["delete_by_filter"], state)
            for doc_id, document in list(state.documents.items()):
                if predicate(doc_id, document):
                    del state.documents[doc_id]
                    deleted_ids.append(doc_id)

        rows = list(body.get("upsert_rows") or [])
        if "upsert_columns" in body:
            rows.extend(_columns_to_rows(body["upsert_columns"]))
        upserted_ids: list[Any] = []
        for index, row in enumerate(rows):
            doc_id, document = _validate_row(state, row, f"upsert_rows[{index}]")
            state.documents[doc_id] = document
            upserted_ids.append(doc_id)

        for doc_id in body.get("deletes") or []:
            _check_id(state, doc_id, "deletes")
            if state.documents.pop(doc_id, None) is not None:
                deleted_ids.append(doc_id)

        if existing is None and not rows and body.get("create_namespace") is not True:
            raise _ApiError(404, f"namespace '{name}' was not found")
        state.updated_at = _now()
        self.namespaces[name] = state  # the atomic commit
        response: dict[str, Any] = {
            "status": "OK",
            "message": "write applied",
            "rows_affected": len(upserted_ids) + len(deleted_ids),
            "rows_upserted": len(upserted_ids),
            "rows_deleted": len(deleted_ids),
            "billing": {"billable_logical_bytes_written": len(json.dumps(body))},
        }
        if body.get("return_affected_ids"):
            response["upserted_ids"] = upserted_ids
            response["deleted_ids"] = deleted_ids
        return web.json_response(response)

    # ---- query ------------------------------------------------------------

    async def _query(self, request: web.Request) -> web.Response:
        name = request.match_info["namespace"]
        body = await self._body(request)
        unknown = sorted(set(body) - _QUERY_KEYS)
        if unknown:
            raise _ApiError(400, f"query parameters not implemented by the fake: {unknown}")
        state = self._existing(name)
        if body.get("vector_encoding") not in (None, "float"):
            raise _ApiError(400, "vector_encoding other than float is not implemented by the fake")
        consistency = body.get("consistency")
        if consistency is not None and consistency.get("level") not in ("strong", "eventual"):
            raise _ApiError(400, f"invalid consistency {consistency!r}")
        predicate = _compile_filter(body["filters"], state) if body.get("filters") is not None else None
        matches = [
            (doc_id, document)
            for doc_id, document in state.documents.items()
            if predicate is None or predicate(doc_id, document)
        ]
        response: dict[str, Any] = {
            "billing": {"billable_logical_bytes_queried": 0, "billable_logical_bytes_returned": 0},
            "performance": {
                "approx_namespace_size": len(state.documents),
                "cache_hit_ratio": 1.0,
                "cache_temperature": "hot",
                "exhaustive_search_count": len(matches),
                "query_execution_ms": 0,
                "server_total_ms": 0,
            },
        }
        aggregate_by = body.get("aggregate_by")
        rank_by = body.get("rank_by")
        if aggregate_by is None and rank_by is None:
            raise _ApiError(400, "a query needs rank_by or aggregate_by")
        if aggregate_by is not None:
            response["aggregations"] = _aggregate(aggregate_by, matches)
        if rank_by is not None:
            response["rows"] = self._ranked_rows(state, body, rank_by, matches)
        return web.json_response(response)

    def _ranked_rows(
        self,
        state: FakeNamespace,
        body: dict[str, Any],
        rank_by: Any,
        matches: list[tuple[Any, dict[str, Any]]],
    ) -> list[dict[str, Any]]:
        if not (isinstance(rank_by, list) and len(rank_by) == 3 and rank_by[1] in ("ANN", "kNN")):
            raise _ApiError(400, f"rank_by {rank_by!r} is not implemented by the fake (only vector ANN/kNN)")
        attribute, _, query_vector = rank_by
        if attribute != "vector" or state.vector_config is None:
            raise _ApiError(400, f"attribute {attribute!r} has no vector index")
        limit = body.get("top_k", body.get("limit"))
        if isinstance(limit, dict):
            limit = limit.get("total")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_TOP_K:
            raise _ApiError(400, f"top_k must be an integer from 1 to {MAX_TOP_K}")
        vector = _decode_vector(query_vector, "rank_by")
        if len(vector) != state.dimension:
            raise _ApiError(
                400, f"query vector has {len(vector)} dimensions, the namespace {state.dimension}"
            )
        metric = state.distance_metric or "cosine_distance"
        scored = sorted(
            (
                (_distance(metric, vector, document["vector"]), str(doc_id), doc_id)
                for doc_id, document in matches
            ),
        )[:limit]
        rows = []
        for distance, _, doc_id in scored:
            document = state.documents[doc_id]
            row: dict[str, Any] = {"id": doc_id, "$dist": distance}
            row.update(_projected(document, body.get("include_attributes"), body.get("exclude_attributes")))
            rows.append(row)
        return rows

    # ---- other routes -----------------------------------------------------

    async def _metadata(self, request: web.Request) -> web.Response:
        state = self._existing(request.match_info["namespace"])
        return web.json_response(
            {
                "approx_logical_bytes": len(json.dumps(list(state.documents.values()))),
                "approx_row_count": len(state.documents),
                "created_at": state.created_at,
                "updated_at": state.updated_at,
                "encryption": {"mode": "default"},
                "index": {"status": "up-to-date"},
                "schema": state.schema,
            }
        )

    async def _schema(self, request: web.Request) -> web.Response:
        return web.json_response(self._existing(request.match_info["namespace"]).schema)

    async def _delete_namespace(self, request: web.Request) -> web.Response:
        name = request.match_info["namespace"]
        self._existing(name)
        del self.namespaces[name]
        return web.json_response({"status": "ok"})


# ---- semantics --------------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"status": "error", "error": message}, status=status, headers=headers)


def _apply_schema(state: FakeNamespace, schema: Any) -> None:
    if not isinstance(schema, dict):
        raise _ApiError(400, "schema must be an object")
    for attribute, raw in schema.items():
        config = {"type": raw} if isinstance(raw, str) else dict(raw) if isinstance(raw, dict) else None
        if config is None or not isinstance(config.get("type"), str):
            raise _ApiError(400, f"schema of {attribute!r} needs a type")
        kind = config["type"]
        if attribute == "id":
            if kind not in ("string", "uint", "uuid"):
                raise _ApiError(400, f"invalid id type {kind!r}")
        elif _VECTOR_TYPE.fullmatch(kind):
            ann = config.get("ann")
            if isinstance(ann, dict) and ann.get("distance_metric") not in (None, *_METRICS):
                raise _ApiError(400, f"invalid distance_metric {ann.get('distance_metric')!r}")
            if attribute != "vector":
                raise _ApiError(400, "the fake implements only the 'vector' vector attribute")
        elif kind not in _SCALAR_TYPES | _ARRAY_TYPES:
            raise _ApiError(400, f"invalid type {kind!r} for attribute {attribute!r}")
        existing = state.schema.get(attribute)
        if existing is not None and existing.get("type") != kind:
            raise _ApiError(
                400, f"cannot change the type of attribute {attribute!r} from {existing['type']} to {kind}"
            )
        merged = dict(existing or {})
        merged.update(config)
        if attribute not in ("id", "vector"):
            merged.setdefault("filterable", True)
        state.schema[attribute] = merged


def _apply_metric(state: FakeNamespace, metric: Any) -> None:
    if metric not in _METRICS:
        raise _ApiError(400, f"invalid distance_metric {metric!r}")
    current = state.distance_metric
    if current is not None and current != metric:
        raise _ApiError(400, f"distance_metric {metric} does not match the namespace's {current}")
    config = state.schema.setdefault("vector", {})
    ann = config.get("ann")
    config["ann"] = {**(ann if isinstance(ann, dict) else {}), "distance_metric": metric}


def _check_id(state: FakeNamespace, doc_id: Any, where: str) -> None:
    id_type = state.schema.get("id", {}).get("type")
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int):
        raise _ApiError(400, f"{where}: ids are strings or unsigned integers, got {doc_id!r}")
    if isinstance(doc_id, int) and (doc_id < 0 or id_type == "string"):
        raise _ApiError(400, f"{where}: id {doc_id!r} does not match the namespace's id type")
    if isinstance(doc_id, str) and (len(doc_id.encode()) > 64 or id_type == "uint"):
        raise _ApiError(400, f"{where}: id {doc_id!r} is not a valid id for this namespace")


def _validate_row(state: FakeNamespace, row: Any, where: str) -> tuple[Any, dict[str, Any]]:
    if not isinstance(row, dict) or "id" not in row:
        raise _ApiError(400, f"{where}: a row is an object with an id")
    doc_id = row["id"]
    _check_id(state, doc_id, where)
    if "id" not in state.schema:
        state.schema["id"] = {"type": "string" if isinstance(doc_id, str) else "uint"}
    document: dict[str, Any] = {}
    for attribute, value in row.items():
        if attribute == "id":
            continue
        if attribute.startswith("$"):
            raise _ApiError(400, f"{where}: attribute names cannot start with '$'")
        if attribute == "vector":
            document["vector"] = _store_vector(state, value, where)
            continue
        if value is None:
            continue
        kind = _infer_type(value, f"{where}.{attribute}")
        declared = state.schema.get(attribute)
        if declared is None:
            if kind is None:
                continue  # an empty array fixes no type yet
            state.schema[attribute] = {"type": kind, "filterable": True}
        elif kind is not None and not _compatible(declared["type"], kind):
            raise _ApiError(
                400,
                f"{where}.{attribute}: type {kind} does not match the attribute's type {declared['type']}",
            )
        document[attribute] = value
    if state.vector_config is not None and "vector" not in document:
        raise _ApiError(400, f"{where}: the namespace has a vector index, the row needs a vector")
    return doc_id, document


def _store_vector(state: FakeNamespace, value: Any, where: str) -> list[float]:
    vector = _decode_vector(value, f"{where}.vector")
    dimension = state.dimension
    if dimension is None:
        config = state.schema.setdefault("vector", {})
        config["type"] = f"[{len(vector)}]f32"
    elif len(vector) != dimension:
        raise _ApiError(400, f"{where}.vector: expected {dimension} dimensions, got {len(vector)}")
    if state.distance_metric is None:
        raise _ApiError(400, f"{where}: distance_metric is required when writing vectors")
    return vector


def _decode_vector(value: Any, where: str) -> list[float]:
    if isinstance(value, str):
        try:
            packed = base64.b64decode(value, validate=True)
        except ValueError:
            raise _ApiError(400, f"{where}: invalid base64 vector") from None
        if len(packed) % 4:
            raise _ApiError(400, f"{where}: base64 vector is not float32")
        return list(struct.unpack(f"<{len(packed) // 4}f", packed))
    if not isinstance(value, list) or not value:
        raise _ApiError(400, f"{where}: a vector is a non-empty array of numbers")
    if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in value):
        raise _ApiError(400, f"{where}: vector values must be finite numbers")
    # Stored as float32, like Turbopuffer.
    return list(struct.unpack(f"<{len(value)}f", struct.pack(f"<{len(value)}f", *value)))


def _infer_type(value: Any, where: str) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        kinds = {_infer_type(item, where) for item in value if item is not None}
        if not kinds:
            return None
        if len(kinds) == 1 and next(iter(kinds)) in _SCALAR_TYPES:
            return "[]" + str(next(iter(kinds)))
        if kinds == {"int", "float"}:
            return "[]float"
        raise _ApiError(400, f"{where}: arrays must hold values of one scalar type")
    raise _ApiError(400, f"{where}: unsupported attribute value {type(value).__name__}")


def _compatible(declared: str, inferred: str) -> bool:
    if declared == inferred:
        return True
    numeric = {"int", "uint", "float"}
    if declared in numeric and inferred in numeric:
        return declared == "float" or inferred != "float"
    if declared.startswith("[]") and inferred.startswith("[]"):
        return _compatible(declared[2:], inferred[2:])
    return declared in ("uuid", "datetime") and inferred == "string"


def _columns_to_rows(columns: Any) -> list[dict[str, Any]]:
    if not isinstance(columns, dict) or "id" not in columns:
        raise _ApiError(400, "upsert_columns needs an id column")
    lengths = {len(values) for values in columns.values() if isinstance(values, list)}
    if len(lengths) != 1 or len(columns) != sum(isinstance(values, list) for values in columns.values()):
        raise _ApiError(400, "upsert_columns: every column must be an array of the same length")
    size = lengths.pop()
    return [{name: values[i] for name, values in columns.items()} for i in range(size)]


Predicate = Callable[[Any, dict[str, Any]], bool]


def _compile_filter(spec: Any, state: FakeNamespace) -> Predicate:
    if not isinstance(spec, list) or not spec:
        raise _ApiError(400, f"invalid filter {spec!r}")
    head = spec[0]
    if head in ("And", "Or") and len(spec) == 2 and isinstance(spec[1], list):
        parts = [_compile_filter(part, state) for part in spec[1]]
        if head == "And":
            return lambda doc_id, document: all(part(doc_id, document) for part in parts)
        return lambda doc_id, document: any(part(doc_id, document) for part in parts)
    if head == "Not" and len(spec) == 2:
        inner = _compile_filter(spec[1], state)
        return lambda doc_id, document: not inner(doc_id, document)
    if len(spec) != 3 or not isinstance(head, str):
        raise _ApiError(400, f"invalid filter {spec!r}")
    attribute, operator, operand = spec
    if attribute != "id":
        config = state.schema.get(attribute)
        if config is not None and not config.get("filterable", True):
            raise _ApiError(400, f"attribute {attribute!r} is not filterable")
    test = _OPERATORS.get(operator)
    if test is None:
        raise _ApiError(400, f"filter operator {operator!r} is not implemented by the fake")
    if operator in ("In", "NotIn", "ContainsAny", "NotContainsAny") and not isinstance(operand, list):
        raise _ApiError(400, f"{operator} takes an array")

    def predicate(doc_id: Any, document: dict[str, Any]) -> bool:
        value = doc_id if attribute == "id" else document.get(attribute)
        return test(value, operand)

    return predicate


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def test(value: Any, operand: Any) -> bool:
        if value is None or operand is None:
            return False
        try:
            return compare(value, operand)
        except TypeError:
            return False

    return test


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _same(value: Any, operand: Any) -> bool:
    """JSON equality: booleans equal only booleans, numbers compare by value."""
    if isinstance(value, bool) or isinstance(operand, bool):
        return type(value) is type(operand) and value == operand
    return bool(value == operand)


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "Eq": _same,
    "NotEq": lambda value, operand: not _same(value, operand),
    "In": lambda value, operand: any(_same(value, item) for item in operand),
    "NotIn": lambda value, operand: not any(_same(value, item) for item in operand),
    "Lt": _ordered(lambda value, operand: value < operand),
    "Lte": _ordered(lambda value, operand: value <= operand),
    "Gt": _ordered(lambda value, operand: value > operand),
    "Gte": _ordered(lambda value, operand: value >= operand),
    "Contains": lambda value, operand: any(_same(item, operand) for item in _as_list(value)),
    "NotContains": lambda value, operand: not any(_same(item, operand) for item in _as_list(value)),
    "ContainsAny": lambda value, operand: any(
        _same(item, wanted) for item in _as_list(value) for wanted in operand
    ),
    "NotContainsAny": lambda value, operand: (
        not any(_same(item, wanted) for item in _as_list(value) for wanted in operand)
    ),
}


def _aggregate(aggregate_by: Any, matches: list[tuple[Any, dict[str, Any]]]) -> dict[str, Any]:
    if not isinstance(aggregate_by, dict) or not aggregate_by:
        raise _ApiError(400, "aggregate_by must be a non-empty object")
    out: dict[str, Any] = {}
    for label, spec in aggregate_by.items():
        if isinstance(spec, list) and spec == ["Count"]:
            out[label] = len(matches)
        elif isinstance(spec, list) and len(spec) == 2 and spec[0] == "Count":
            attribute = spec[1]
            out[label] = sum(
                1 for doc_id, document in matches if attribute == "id" or document.get(attribute) is not None
            )
        else:
            raise _ApiError(400, f"aggregate {spec!r} is not implemented by the fake (only Count)")
    return out


def _distance(metric: str, a: list[float], b: list[float]) -> float:
    if metric == "euclidean_squared":
        return math.fsum((x - y) * (x - y) for x, y in zip(a, b, strict=True))
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return 1.0 - dot / norms if norms else 1.0


def _projected(document: dict[str, Any], include: Any, exclude: Any) -> dict[str, Any]:
    if include is not None and exclude is not None:
        raise _ApiError(400, "include_attributes and exclude_attributes are exclusive")
    if exclude is not None:
        if not isinstance(exclude, list):
            raise _ApiError(400, "exclude_attributes must be an array")
        return {key: value for key, value in document.items() if key not in exclude and key != "vector"}
    if include is True:
        return {key: value for key, value in document.items() if key != "vector"}
    if include is None or include is False:
        return {}
    if not isinstance(include, list):
        raise _ApiError(400, "include_attributes must be a boolean or an array")
    return {key: document[key] for key in include if key in document}


class FakeTurbopufferThread:
    """Runs a :class:`FakeTurbopuffer` on its own event loop in a thread, like a remote server.

    Usable from synchronous fixtures; ``fake`` is shared with the test
    (recorded requests, injected faults, namespace state).
    """

    def __init__(self, fake: FakeTurbopuffer | None = None) -> None:
        self.fake = fake or FakeTurbopuffer()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-turbopuffer", daemon=True)

    def start(self) -> str:
        """Start serving on a free loopback port; returns the base URL."""
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.fake.start(), self._loop).result(timeout=30)

    def stop(self) -> None:
        """Stop serving and end the thread."""
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
