"""Names derived from a pipeline: its sink namespace and the S3 keys of its chunk packs.

One definition of each rule, imported by every side that applies it: the
claimer (which stores pipelines, keeps ``target_namespace`` unique per sink
and refuses backings outside a pipeline's packs), the gateway (which writes
the packs and the vectors) and the operator. Pure functions of strings and
times: no I/O.

* A pipeline's **namespace** in its sink is its ``target_namespace``, or by
  default its id with ``-`` replaced by ``_`` (:func:`effective_namespace`).
* Its **incarnation** is its creation time in microseconds since the epoch,
  in hex (:func:`incarnation`): a pipeline deleted and created again under the
  same id gets a new incarnation, so it never shares a key prefix with its
  predecessor.
* Its chunk packs live under ``pipelines/{id}/{incarnation}/packs/``
  (:func:`pack_prefix`), and a document's **backing** is
  ``"<pack key>#<offset>:<length>"`` (:func:`backing_problem` says whether a
  backing is one of the pipeline's own).
"""

from __future__ import annotations

import datetime

NAMESPACE_TAKEN = "NAMESPACE_TAKEN"
"""``ErrorInfo.reason`` of CreatePipeline's ALREADY_EXISTS when another pipeline of the sink
owns the namespace (``ErrorInfo.metadata["owner_pipeline_id"]`` names it)."""

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


def default_namespace(pipeline_id: str) -> str:
    """The namespace of a pipeline that names none: its id with ``-`` replaced by ``_``."""
    return pipeline_id.replace("-", "_")


def effective_namespace(pipeline_id: str, target_namespace: str = "") -> str:
    """The namespace a pipeline's vectors live in: ``target_namespace``, or the default."""
    return target_namespace or default_namespace(pipeline_id)


def incarnation(create_time_micros: int) -> str:
    """The incarnation of a pipeline created at ``create_time_micros`` (µs since the epoch), in hex."""
    return f"{create_time_micros:x}"


def incarnation_of(create_time: datetime.datetime) -> str:
    """:func:`incarnation` of an aware datetime (what PostgreSQL's ``timestamptz`` gives),
    exact to the microsecond (no float rounding)."""
    return incarnation((create_time - _EPOCH) // _MICROSECOND)


def pipeline_prefix(pipeline_id: str, incarnation: str) -> str:
    """The key prefix of everything the gateway stores for one pipeline incarnation."""
    return f"pipelines/{pipeline_id}/{incarnation}/"


def pack_prefix(pipeline_id: str, incarnation: str) -> str:
    """The key prefix of one pipeline incarnation's chunk packs."""
    return f"{pipeline_prefix(pipeline_id, incarnation)}packs/"


def object_key_of(backing: str) -> str:
    """The object key part of a backing (everything before its last ``#``)."""
    return backing.rpartition("#")[0]


def backing_problem(backing: str, pipeline_id: str, incarnation: str) -> str | None:
    """Why ``backing`` is not a backing of this pipeline incarnation's packs; None if it is.

    A backing is ``"<pack_prefix><name>#<offset>:<length>"``: ``name`` non-empty
    without ``/`` or ``#`` (one pack object directly under the prefix, one ``#``
    in the whole backing, so every reader finds the same object key), offset
    and length decimal digits. The empty backing (no chunks stored) is
    accepted: it points at nothing.
    """
    if not backing:
        return None
    key, sep, span = backing.rpartition("#")
    offset, colon, length = span.partition(":")
    if not sep or not colon or not offset.isdigit() or not length.isdigit():
        return f"{backing[:120]!r} is not '<object key>#<offset>:<length>'"
    prefix = pack_prefix(pipeline_id, incarnation)
    name = key[len(prefix) :]
    if not key.startswith(prefix) or not name or "/" in name or "#" in name:
        return (
            f"{backing[:120]!r} is outside the pipeline's packs: the object key must be a pack "
            f"directly under {prefix!r}"
        )
    return None
