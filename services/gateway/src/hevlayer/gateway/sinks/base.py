"""The sink interface: what the gateway needs from a vector index.

A *sink* stores the vectors of a pipeline in one *namespace* (a Milvus
collection, a Turbopuffer namespace) and answers nearest-neighbour queries.
Every sink implements the same contract, checked by
``tests/gateway/test_sink_contract.py``:

* ``ensure_namespace`` creates the namespace with a dimension and a distance
  metric, or checks that the existing one has the same; a different
  dimension or metric is FAILED_PRECONDITION naming the field.
* ``replace_documents`` writes whole documents: for each document its old
  rows are deleted and the new ones upserted, so that after the call the
  index never holds rows of the old and the new version of one document
  together. Re-running the same call gives the same rows (idempotent).
* ``delete_documents``, ``query``, ``count``, ``drop_namespace``, ``close``.

**Fencing tokens** (docs/reliability.md, "Fenced sink writes"): every row
carries the fencing token of the write that stored it (0 for writers that
hold no lease: tools, tests). ``replace_documents(..., fencing_tokens)``
replaces only a document's rows whose token is <= the write's token; rows of
a newer token are left alone, and ``query`` never returns a row while its
document has rows of a newer token (the newest token wins). So a writer whose
lease expired mid-write can add rows, but they stay invisible next to the
newer holder's, and ``delete_documents(..., up_to_tokens)`` (the writer's own
clean-up once its lease turns out lost) removes them without touching newer
rows.

Rows are addressed by a deterministic vector id derived from the document
id and the chunk id (:func:`vector_id`), so a retried write overwrites
instead of duplicating. Attributes are stored as JSON and returned by
queries; equality filters on scalar attributes are evaluated through
*filter tags* (see :func:`filter_tag`), which behave the same on every
backend whatever the attribute's type or name.

Validation happens here, once, before any backend call: a rejected call
writes nothing. Backend failures surface as
:class:`hevlayer.common.errors.Unavailable` (retry later) or, when the
backend refuses the namespace itself, :class:`FailedPrecondition`.
"""

from __future__ import annotations

import abc
import enum
import functools
import hashlib
import json
import math
import struct
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

from hevlayer.common.errors import FailedPrecondition, InvalidArgument, Violation

JSONValue: TypeAlias = "str | int | float | bool | list[JSONValue] | dict[str, JSONValue] | None"
"""A value that JSON can carry (what ``google.protobuf.Struct`` holds)."""

Scalar: TypeAlias = str | int | float | bool
"""A filterable attribute value."""

RESERVED_ATTRIBUTES = ("document_id", "chunk_id")
"""Attribute keys set by the sink from the row's ids (returned by queries)."""

MAX_DIMENSION = 16_000
"""Largest vector dimension accepted (Milvus allows 32,768; Turbopuffer about 10k-16k)."""

MAX_ID_BYTES = 1024
"""Largest document or chunk id, in UTF-8 bytes."""

MAX_ATTRIBUTES_BYTES = 65_536
"""Largest JSON encoding of one row's attributes (Milvus' JSON field limit)."""

MAX_FILTER_TAGS = 128
"""Most scalar attributes one row may carry (each becomes a filter tag)."""

MAX_TOP_K = 1000
"""Largest ``top_k`` of a query."""

_MAX_SEARCH_LIMIT = 16_384
"""Most rows one backend search asks for while skipping superseded rows (Milvus' limit)."""


_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
"""Encoder of stored attributes (compact, UTF-8 kept, NaN refused)."""


class SinkKind(enum.Enum):
    """The vector index behind a sink (REST/env spelling as values)."""

    MILVUS_LITE = "milvus_lite"
    MILVUS = "milvus"
    TURBOPUFFER = "turbopuffer"


class DistanceMetric(enum.Enum):
    """How vectors are compared; values are the seed's REST spellings."""

    COSINE_DISTANCE = "cosine_distance"
    """1 - cosine similarity; a hit's score is the cosine similarity."""
    EUCLIDEAN_SQUARED = "euclidean_squared"
    """Squared Euclidean distance; a hit's score is its negation."""


@dataclass(frozen=True)
class NamespaceSpec:
    """The fixed shape of a namespace."""

    dimension: int
    metric: DistanceMetric


@dataclass(frozen=True)
class Row:
    """One vector of a document, as the gateway hands it to a sink."""

    chunk_id: str
    values: Sequence[float]
    attributes: Mapping[str, JSONValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One query result. ``score``: higher is better.

    ``attributes`` holds the stored attributes plus the reserved keys
    ``document_id`` and ``chunk_id``.
    """

    document_id: str
    chunk_id: str
    score: float
    attributes: dict[str, JSONValue]
    fencing_token: int = 0
    """The fencing token of the write that stored the row."""


class PreparedRow(NamedTuple):
    """A validated row with everything a backend stores for it (a tuple: built per row, so cheap)."""

    id: str
    document_id: str
    chunk_id: str
    values: Sequence[float]
    attributes: dict[str, JSONValue]
    attributes_json: str
    filter_tags: list[str]
    fencing_token: int = 0


@dataclass(frozen=True)
class PreparedDocument:
    """A validated document: its id, its complete new set of rows and the fencing token they
    are written under."""

    document_id: str
    rows: list[PreparedRow]
    fencing_token: int = 0


@dataclass(frozen=True)
class PreparedFilter:
    """A validated equality filter, split into what backends evaluate natively.

    ``document_id`` / ``chunk_id`` are matched on their own fields; every
    other key through ``tags`` (all must be present, AND). ``impossible`` is
    set when the filter can match nothing (``document_id`` compared with a
    number, for instance), so no backend call is needed.
    """

    document_id: str | None = None
    chunk_id: str | None = None
    tags: tuple[str, ...] = ()
    impossible: bool = False

    @property
    def empty(self) -> bool:
        """True when the filter matches every row."""
        return self.document_id is None and self.chunk_id is None and not self.tags and not self.impossible


def vector_id(document_id: str, chunk_id: str, fencing_token: int = 0) -> str:
    """The deterministic id of a row: 32 hex characters (128-bit BLAKE2b).

    Length-prefixed so that ("a", "bc") and ("ab", "c") differ; safe as a
    Milvus VARCHAR primary key and as a Turbopuffer string id (<= 64 bytes).
    A non-zero fencing token is part of the id, so that a write under one token
    never overwrites a row of another (a retry under the same token does).
    """
    doc = document_id.encode()
    data = len(doc).to_bytes(4, "big") + doc + chunk_id.encode()
    if fencing_token:
        data += b"\x00#" + str(fencing_token).encode()
    return hashlib.blake2b(data, digest_size=16, person=b"hevlayer-vec-id").hexdigest()


def _canonical_scalar(value: object) -> str | None:
    """Type-tagged text of a filterable value; None if it is not a scalar.

    Numbers are compared by value (``2`` equals ``2.0``: protobuf Struct
    carries every number as a double); strings, numbers and booleans never
    equal one another (``"2"``, ``2`` and ``true`` differ).
    """
    if isinstance(value, bool):
        return "b:true" if value else "b:false"
    if isinstance(value, int):
        return f"n:{value}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < 2**63:
            return f"n:{int(value)}"
        return f"n:{value!r}"
    if isinstance(value, str):
        return "s:" + value
    return None


def filter_tag(key: str, value: Scalar) -> str:
    """The tag a row carries for ``attributes[key] == value`` (32 hex chars)."""
    canonical = _canonical_scalar(value)
    if canonical is None:
        raise ValueError(f"not a filterable value: {value!r}")
    return _tag(key, canonical)


def _tag(key: str, canonical: str) -> str:
    encoded_key = key.encode()
    data = len(encoded_key).to_bytes(4, "big") + encoded_key + canonical.encode()
    return hashlib.blake2b(data, digest_size=16, person=b"hevlayer-tag").hexdigest()


def _id_problem(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > MAX_ID_BYTES // 4 and len(value.encode()) > MAX_ID_BYTES:
        return f"must be at most {MAX_ID_BYTES} bytes (UTF-8)"
    return None


def _vector_problem(values: Sequence[float], dimension: int) -> str | None:
    """Why ``values`` is not a valid vector of ``dimension``; None if it is.

    Two C-speed passes: packing as float32 rejects non-numbers and values
    out of float32 range; a NaN or an infinity anywhere makes the sum
    non-finite.
    """
    if len(values) != dimension:
        return f"expected {dimension} values, got {len(values)}"
    if isinstance(values, array) and values.typecode == "f":
        # Already float32 (WriteVectors keeps vectors so): numbers that fit, so only a
        # NaN or an infinity can be wrong, and the sum finds them in one pass.
        return None if math.isfinite(sum(values)) else "values must be finite (no NaN or infinity)"
    try:
        _float32_struct(dimension).pack(*values)
        total = sum(values)
    except (struct.error, TypeError):
        return "values must be numbers"
    except OverflowError:
        return "values must fit in a 32-bit float"
    if not math.isfinite(total):
        return "values must be finite (no NaN or infinity)"
    return None


@functools.lru_cache(maxsize=16)
def _float32_struct(dimension: int) -> struct.Struct:
    return struct.Struct(f"<{dimension}f")


def validate_dimension(dimension: object) -> int:
    """The dimension, or InvalidArgument naming ``dimension``."""
    if isinstance(dimension, bool) or not isinstance(dimension, int) or not 1 <= dimension <= MAX_DIMENSION:
        raise InvalidArgument.field("dimension", f"must be an integer from 1 to {MAX_DIMENSION}")
    return dimension


def validate_metric(metric: object) -> DistanceMetric:
    """The metric (enum or its REST spelling), or InvalidArgument naming ``distance_metric``."""
    if isinstance(metric, DistanceMetric):
        return metric
    try:
        return DistanceMetric(metric)
    except ValueError:
        allowed = ", ".join(m.value for m in DistanceMetric)
        raise InvalidArgument.field("distance_metric", f"must be one of {allowed}, got {metric!r}") from None


def prepare_documents(
    documents: Mapping[str, Sequence[Row]],
    spec: NamespaceSpec,
    fencing_tokens: Mapping[str, int] | None = None,
) -> list[PreparedDocument]:
    """Validate a replace_documents call; InvalidArgument naming the first bad field.

    Field paths look like ``documents[doc-1].rows[3].values``.
    """
    prepared: list[PreparedDocument] = []
    tokens = fencing_tokens or {}
    for document_id, rows in documents.items():
        problem = _id_problem(document_id)
        if problem is not None:
            raise InvalidArgument.field(f"documents[{document_id!r}]", f"document id {problem}")
        token = tokens.get(document_id, 0)
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < 2**63:
            raise InvalidArgument.field(
                f"fencing_tokens[{document_id!r}]", "must be an integer from 0 to 2^63 - 1"
            )
        seen: set[str] = set()
        out: list[PreparedRow] = []
        for index, row in enumerate(rows):
            out.append(_prepare_row(document_id, row, spec, index, seen, token))
        prepared.append(PreparedDocument(document_id, out, token))
    return prepared


def _prepare_row(
    document_id: str, row: Row, spec: NamespaceSpec, index: int, seen: set[str], fencing_token: int = 0
) -> PreparedRow:
    chunk_id = row.chunk_id
    problem = _id_problem(chunk_id)
    if problem is not None:
        raise InvalidArgument.field(f"{_row_path(document_id, index)}.chunk_id", f"chunk id {problem}")
    if chunk_id in seen:
        raise InvalidArgument.field(
            f"{_row_path(document_id, index)}.chunk_id", f"duplicate chunk id {chunk_id!r} in the document"
        )
    seen.add(chunk_id)
    problem = _vector_problem(row.values, spec.dimension)
    if problem is not None:
        raise InvalidArgument.field(f"{_row_path(document_id, index)}.values", problem)
    attributes: dict[str, JSONValue] = {}
    tags: list[str] = []
    for key, value in row.attributes.items():
        if not isinstance(key, str) or not key:
            raise InvalidArgument.field(
                f"{_row_path(document_id, index)}.attributes", f"keys must be non-empty strings, got {key!r}"
            )
        if key in RESERVED_ATTRIBUTES:
            expected = document_id if key == "document_id" else chunk_id
            if value != expected:
                raise InvalidArgument.field(
                    f"{_row_path(document_id, index)}.attributes.{key}",
                    f"is reserved: it must be absent or equal {expected!r}",
                )
            continue
        attributes[key] = value
        canonical = _canonical_scalar(value)
        if canonical is not None:
            tags.append(_tag(key, canonical))
    if len(tags) > MAX_FILTER_TAGS:
        raise InvalidArgument.field(
            f"{_row_path(document_id, index)}.attributes",
            f"at most {MAX_FILTER_TAGS} scalar attributes per row, got {len(tags)}",
        )
    try:
        encoded = _JSON.encode(attributes)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument.field(
            f"{_row_path(document_id, index)}.attributes", f"must be JSON values: {exc}"
        ) from None
    if len(encoded) > MAX_ATTRIBUTES_BYTES // 4 and len(encoded.encode()) > MAX_ATTRIBUTES_BYTES:
        raise InvalidArgument.field(
            f"{_row_path(document_id, index)}.attributes",
            f"JSON encoding exceeds {MAX_ATTRIBUTES_BYTES} bytes",
        )
    return PreparedRow(
        id=vector_id(document_id, chunk_id, fencing_token),
        document_id=document_id,
        chunk_id=chunk_id,
        values=row.values,
        attributes=attributes,
        attributes_json=encoded,
        filter_tags=tags,
        fencing_token=fencing_token,
    )


def _row_path(document_id: str, index: int) -> str:
    return f"documents[{document_id}].rows[{index}]"


def prepare_filter(filter: Mapping[str, Scalar] | None) -> PreparedFilter:
    """Validate an equality filter; InvalidArgument naming ``filter.<key>``."""
    if not filter:
        return PreparedFilter()
    document_id: str | None = None
    chunk_id: str | None = None
    tags: list[str] = []
    impossible = False
    for key, value in filter.items():
        if not isinstance(key, str) or not key:
            raise InvalidArgument.field("filter", f"keys must be non-empty strings, got {key!r}")
        canonical = _canonical_scalar(value)
        if canonical is None:
            raise InvalidArgument.field(
                f"filter.{key}", f"must be a string, a finite number or a boolean, got {value!r}"
            )
        if key in RESERVED_ATTRIBUTES:
            if not isinstance(value, str):
                impossible = True
            elif key == "document_id":
                document_id = value
            else:
                chunk_id = value
            continue
        tags.append(_tag(key, canonical))
    return PreparedFilter(document_id, chunk_id, tuple(sorted(set(tags))), impossible)


def hit_attributes(
    document_id: str, chunk_id: str, stored: Mapping[str, JSONValue] | None
) -> dict[str, JSONValue]:
    """The attributes a query returns: the stored ones plus the reserved keys."""
    attributes: dict[str, JSONValue] = dict(stored or {})
    attributes["document_id"] = document_id
    attributes["chunk_id"] = chunk_id
    return attributes


def score_from_distance(metric: DistanceMetric, distance: float) -> float:
    """Higher-is-better score from a backend distance (1 - d for cosine, -d for L2²)."""
    if metric is DistanceMetric.COSINE_DISTANCE:
        return 1.0 - distance
    return -distance


@dataclass(frozen=True)
class SinkInstance:
    """One instance of a sink, as the claimer binds pipelines to it (``BindSinkInstance``):
    gateways on different instances of a sink whose instances are not shared (Milvus Lite:
    one database per process) would split a pipeline's index between them."""

    kind: SinkKind
    instance_id: str
    """A random id kept in the sink's own storage: the same after a restart or a move of the
    storage, different for two databases."""
    location: str
    """Where this process opened it (``host:path``), for messages."""
    setting: str
    """The setting that chooses the instance, named when a pipeline is bound to another."""


class Sink(abc.ABC):
    """A vector index holding one namespace per pipeline.

    Public methods validate their arguments (the same way for every
    backend) and then call the backend hooks (``_ensure``, ``_describe``,
    ``_replace``, ...). Implementations are safe to call concurrently from
    one event loop.
    """

    def __init__(self, kind: SinkKind) -> None:
        self.kind = kind
        self.instance: SinkInstance | None = None
        """Set by sinks whose storage one gateway owns (Milvus Lite): pipelines are bound to
        it through the claimer. None for sinks every gateway shares (Milvus, Turbopuffer)."""
        self._specs: dict[str, NamespaceSpec] = {}

    # ---- public API -------------------------------------------------------

    async def ensure_namespace(
        self, namespace: str, dimension: int, metric: DistanceMetric | str
    ) -> NamespaceSpec:
        """Create the namespace, or check the existing one has this shape.

        FAILED_PRECONDITION (field ``dimension`` or ``distance_metric``) if
        the namespace exists with another dimension or metric.
        """
        self.check_namespace(namespace)
        wanted = NamespaceSpec(validate_dimension(dimension), validate_metric(metric))
        actual = await self._ensure(namespace, wanted)
        _check_same_spec(namespace, wanted, actual)
        self._specs[namespace] = actual
        return actual

    async def describe_namespace(self, namespace: str) -> NamespaceSpec | None:
        """The namespace's shape, or None if it does not exist."""
        self.check_namespace(namespace)
        spec = self._specs.get(namespace)
        if spec is None:
            spec = await self._describe(namespace)
            if spec is not None:
                self._specs[namespace] = spec
        return spec

    async def replace_documents(
        self,
        namespace: str,
        documents: Mapping[str, Sequence[Row]],
        fencing_tokens: Mapping[str, int] | None = None,
    ) -> int:
        """Replace each document's rows with ``documents[id]``; the number of rows written.

        The rows are written under ``fencing_tokens[id]`` (0 when absent): the
        document's rows of that token or an older one are replaced; rows of a
        newer token stay, and hide these (see the module docstring). An empty
        row list deletes the document's rows up to that token. The whole call is
        validated before anything is written (INVALID_ARGUMENT naming the
        field). The namespace must exist (FAILED_PRECONDITION otherwise).
        """
        spec = await self._require_spec(namespace)
        prepared = prepare_documents(documents, spec, fencing_tokens)
        if not prepared:
            return 0
        await self._replace(namespace, spec, prepared)
        return sum(len(document.rows) for document in prepared)

    async def delete_documents(
        self, namespace: str, document_ids: Iterable[str], up_to_tokens: Mapping[str, int] | None = None
    ) -> None:
        """Delete every row of these documents (unknown ids and namespaces are fine); with
        ``up_to_tokens``, only each document's rows whose fencing token is <= its bound
        (a document without a bound loses every row)."""
        self.check_namespace(namespace)
        ids = list(dict.fromkeys(document_ids))
        for index, document_id in enumerate(ids):
            problem = _id_problem(document_id)
            if problem is not None:
                raise InvalidArgument.field(f"document_ids[{index}]", f"document id {problem}")
        if not ids or await self.describe_namespace(namespace) is None:
            return
        bounds = {d: up_to_tokens[d] for d in ids if d in up_to_tokens} if up_to_tokens else {}
        await self._delete(namespace, ids, bounds)

    async def query(
        self,
        namespace: str,
        vector: Sequence[float],
        top_k: int = 10,
        filter: Mapping[str, Scalar] | None = None,
    ) -> list[Hit]:
        """The ``top_k`` rows nearest to ``vector`` that match ``filter``, best first.

        ``filter`` is an equality AND over attributes (``document_id`` and
        ``chunk_id`` included). A namespace that does not exist has no hits.
        """
        self.check_namespace(namespace)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise InvalidArgument.field("top_k", f"must be an integer from 1 to {MAX_TOP_K}")
        prepared_filter = prepare_filter(filter)
        spec = await self.describe_namespace(namespace)
        if spec is None:
            return []
        problem = _vector_problem(vector, spec.dimension)
        if problem is None and spec.metric is DistanceMetric.COSINE_DISTANCE and not any(vector):
            problem = "a zero vector has no cosine distance"
        if problem is not None:
            raise InvalidArgument.field("vector", problem)
        if prepared_filter.impossible:
            return []
        # The newest token wins: a row is hidden while its document has rows of a newer
        # token. Hidden rows are rare (a writer that lost its lease mid-write, until its
        # clean-up), so the query asks for top_k, and for more only when some were hidden.
        limit = top_k
        while True:
            hits = await self._query(namespace, spec, list(vector), limit, prepared_filter)
            superseded = await self._superseded(namespace, hits)
            visible = [hit for hit in hits if (hit.document_id, hit.fencing_token) not in superseded]
            if len(visible) >= top_k or len(hits) < limit or limit >= _MAX_SEARCH_LIMIT:
                return visible[:top_k]
            limit = min(limit * 4, _MAX_SEARCH_LIMIT)

    async def _superseded(self, namespace: str, hits: Sequence[Hit]) -> set[tuple[str, int]]:
        """The (document id, token) pairs of ``hits`` whose document has rows of a newer token."""
        pairs = list(dict.fromkeys((hit.document_id, hit.fencing_token) for hit in hits))
        if not pairs or not await self._count_newer(namespace, pairs):
            return set()
        if len(pairs) == 1:
            return set(pairs)
        return {pair for pair in pairs if await self._count_newer(namespace, [pair])}

    async def count(self, namespace: str, document_id: str | None = None) -> int:
        """Number of rows in the namespace, or of one document (0 if it does not exist)."""
        self.check_namespace(namespace)
        if document_id is not None:
            problem = _id_problem(document_id)
            if problem is not None:
                raise InvalidArgument.field("document_id", f"document id {problem}")
        if await self.describe_namespace(namespace) is None:
            return 0
        return await self._count(namespace, document_id)

    async def drop_namespace(self, namespace: str) -> None:
        """Delete the namespace and all its rows (a missing namespace is fine)."""
        self.check_namespace(namespace)
        self._specs.pop(namespace, None)
        await self._drop(namespace)

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the client (and, for Milvus Lite, the local database)."""

    @abc.abstractmethod
    async def ping(self, timeout: float) -> None:
        """Return when the backend is usable; raise Unavailable (naming why) when it is not.

        The readiness probe of the gateway's default sink: one cheap call with
        ``timeout`` (Milvus Lite, in this process: no call).
        """

    def check_namespace(self, namespace: str) -> None:
        """InvalidArgument naming ``namespace`` if the backend cannot hold this name."""
        if not isinstance(namespace, str) or not namespace:
            raise InvalidArgument.field("namespace", "must be a non-empty string")
        problem = self._namespace_problem(namespace)
        if problem is not None:
            raise InvalidArgument.field("namespace", problem)

    # ---- backend hooks ----------------------------------------------------

    @abc.abstractmethod
    def _namespace_problem(self, namespace: str) -> str | None:
        """Why the backend cannot name a namespace so; None if it can."""

    @abc.abstractmethod
    async def _ensure(self, namespace: str, spec: NamespaceSpec) -> NamespaceSpec:
        """Create the namespace with ``spec`` unless it exists; return its actual shape."""

    @abc.abstractmethod
    async def _describe(self, namespace: str) -> NamespaceSpec | None:
        """The existing namespace's shape, or None."""

    @abc.abstractmethod
    async def _replace(self, namespace: str, spec: NamespaceSpec, documents: list[PreparedDocument]) -> None:
        """Delete the documents' old rows (fencing token <= the document's), then upsert the
        new ones."""

    @abc.abstractmethod
    async def _delete(self, namespace: str, document_ids: list[str], up_to_tokens: Mapping[str, int]) -> None:
        """Delete the documents' rows (those with a fencing token <= ``up_to_tokens[id]`` for a
        document that has a bound)."""

    @abc.abstractmethod
    async def _count_newer(self, namespace: str, pairs: list[tuple[str, int]]) -> int:
        """The number of rows of ``document_id`` with a fencing token > ``token``, summed over the
        (document_id, token) pairs (0: no pair is superseded)."""

    @abc.abstractmethod
    async def _query(
        self, namespace: str, spec: NamespaceSpec, vector: list[float], top_k: int, filter: PreparedFilter
    ) -> list[Hit]:
        """Nearest rows, best first."""

    @abc.abstractmethod
    async def _count(self, namespace: str, document_id: str | None) -> int:
        """Rows in the namespace or of one document."""

    @abc.abstractmethod
    async def _drop(self, namespace: str) -> None:
        """Drop the namespace if it exists."""

    # ---- helpers ----------------------------------------------------------

    async def _require_spec(self, namespace: str) -> NamespaceSpec:
        spec = await self.describe_namespace(namespace)
        if spec is None:
            raise FailedPrecondition(
                f"namespace {namespace!r} does not exist: call ensure_namespace first",
                violations=[Violation("namespace", "does not exist")],
                reason="NAMESPACE_NOT_FOUND",
            )
        return spec

    def _forget(self, namespace: str) -> None:
        """Drop the cached shape (the backend said the namespace is gone)."""
        self._specs.pop(namespace, None)


def _check_same_spec(namespace: str, wanted: NamespaceSpec, actual: NamespaceSpec) -> None:
    if actual.dimension != wanted.dimension:
        raise FailedPrecondition(
            f"namespace {namespace!r} has dimension {actual.dimension}, not {wanted.dimension}",
            violations=[Violation("dimension", f"the namespace has dimension {actual.dimension}")],
            reason="DIMENSION_MISMATCH",
        )
    if actual.metric is not wanted.metric:
        raise FailedPrecondition(
            f"namespace {namespace!r} uses {actual.metric.value}, not {wanted.metric.value}",
            violations=[Violation("distance_metric", f"the namespace uses {actual.metric.value}")],
            reason="METRIC_MISMATCH",
        )
