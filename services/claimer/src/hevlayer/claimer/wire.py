"""Fast protobuf encoding of large repeated lease and result lists.

A claim of 10,000 documents answers 10,000 ``Lease`` messages whose stage,
worker and expiry are identical. Building them one by one with the Python
protobuf API costs about 1.7 µs each; here the shared fields are serialized
once, every varint of a batch is encoded by one ``SerializeToString`` of a
packed ``repeated uint64`` and split with a regular expression, and the wire
bytes are concatenated (about 0.8 µs each). The caller parses the bytes back
into the response message (C parser, ~0.15 µs per lease), so the output is
an ordinary message and the encoding is checked by the parser.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

from hevlayer.api.document.v1 import document_pb2

_VARINT = re.compile(rb"[\x80-\xff]*[\x00-\x7f]", re.S)


def _varints_class() -> Any:
    """A runtime message ``{ repeated uint64 values = 1; }`` (packed)."""
    pool = descriptor_pool.DescriptorPool()
    file = descriptor_pb2.FileDescriptorProto(
        name="hevlayer_claimer_wire.proto", package="hevlayer.claimer.wire"
    )
    file.syntax = "proto3"
    message = file.message_type.add(name="Varints")
    message.field.add(
        name="values",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("hevlayer.claimer.wire.Varints"))


_Varints = _varints_class()


_SMALL = [bytes([value]) for value in range(128)]
"""Varints of 0..127: one byte each (lengths, attempts and chunk counts are mostly here)."""


def varints(values: Sequence[int]) -> list[bytes]:
    """The varint encoding of each value."""
    if not values:
        return []
    if min(values) >= 0 and max(values) < 128:
        small = _SMALL
        return [small[value] for value in values]
    data: bytes = _Varints(values=values).SerializeToString()
    # skip the tag (1 byte) and the length varint of the packed field
    start = _VARINT.match(data, 1)
    assert start is not None
    out = _VARINT.findall(data, start.end())
    assert len(out) == len(values)
    return out


def _length_delimited(tag: bytes, bodies: Sequence[bytes]) -> bytes:
    lengths = varints([len(b) for b in bodies])
    return b"".join([tag + length + body for length, body in zip(lengths, bodies, strict=True)])


def encode_leases(
    stage: str,
    worker_id: str,
    expires_at: datetime,
    ids: Sequence[str],
    tokens: Sequence[int],
    attempts: Sequence[int],
    hashes: Sequence[str],
    chunk_counts: Sequence[int],
) -> bytes:
    """Wire bytes of ``repeated Lease leases = 1`` (ClaimDocumentsResponse and
    StreamLeasesResponse share that layout)."""
    if not ids:
        return b""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(expires_at)
    common = document_pb2.Lease(stage=stage, worker_id=worker_id, expires_at=stamp).SerializeToString()
    encoded = [doc.encode() for doc in ids]
    id_lengths = varints([len(e) for e in encoded])
    token_bytes = varints(tokens)
    attempt_bytes = varints(attempts)
    extras: list[bytes] | None = None
    if any(hashes) or any(chunk_counts):
        hash_encoded = [h.encode() for h in hashes]
        hash_lengths = varints([len(h) for h in hash_encoded])
        counts = varints(chunk_counts)
        extras = [
            (b"\x3a" + hash_lengths[i] + hash_encoded[i] if hash_encoded[i] else b"")
            + (b"\x40" + counts[i] if chunk_counts[i] else b"")
            for i in range(len(ids))
        ]
    bodies = [
        b"\x0a" + id_lengths[i] + encoded[i] + common + b"\x20" + token_bytes[i] + b"\x30" + attempt_bytes[i]
        for i in range(len(ids))
    ]
    if extras is not None:
        bodies = [body + extras[i] for i, body in enumerate(bodies)]
    return _length_delimited(b"\x0a", bodies)


def encode_transition_results(ids: Sequence[str], outcomes: Sequence[int], tokens: Sequence[int]) -> bytes:
    """Wire bytes of ``repeated TransitionResult results = 1``."""
    if not ids:
        return b""
    encoded = [doc.encode() for doc in ids]
    id_lengths = varints([len(e) for e in encoded])
    if len(set(outcomes)) == 1 and len(set(tokens)) == 1:
        # one outcome and one token for all (a segment moved whole): a shared suffix
        suffix = b"\x10" + bytes([outcomes[0]]) + (b"\x18" + varints(tokens[:1])[0] if tokens[0] else b"")
        return _length_delimited(
            b"\x0a",
            [b"\x0a" + length + doc + suffix for length, doc in zip(id_lengths, encoded, strict=True)],
        )
    outcome_bytes = {value: b"\x10" + bytes([value]) for value in set(outcomes)}
    token_bytes = varints(tokens)
    bodies = [
        b"\x0a"
        + id_lengths[i]
        + encoded[i]
        + outcome_bytes[outcomes[i]]
        + (b"\x18" + token_bytes[i] if tokens[i] else b"")
        for i in range(len(ids))
    ]
    return _length_delimited(b"\x0a", bodies)
