"""The claimer's hand-rolled protobuf encoding against the protobuf library (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.lease.v1 import lease_pb2
from hevlayer.claimer.wire import encode_lease_columns, encode_leases, encode_transition_results, varints

UINT64 = st.integers(min_value=0, max_value=2**64 - 1)
IDS = st.text(min_size=1, max_size=40)


@given(st.lists(UINT64, max_size=50) | st.lists(st.integers(0, 127), max_size=50))
def test_varints_match_protobuf(values: list[int]) -> None:
    for value, encoded in zip(values, varints(values), strict=True):
        expected = document_pb2.Lease(fencing_token=value).SerializeToString()
        assert (b"\x20" + encoded if value else b"") == expected


TOKENS = st.integers(1, 2**63 - 1)
ROWS = st.lists(
    st.tuples(IDS, TOKENS, st.integers(0, 300), st.text(max_size=20), st.integers(0, 10**6)), max_size=30
)
# every hash present and every count set, or none: the shapes that take the template path
UNIFORM_ROWS = st.lists(
    st.tuples(IDS, TOKENS, st.integers(1, 300), st.text(min_size=1), st.integers(1, 10**6)), max_size=30
) | st.lists(st.tuples(IDS, TOKENS, st.integers(1, 300), st.just(""), st.just(0)), max_size=30)


@given(
    ROWS | UNIFORM_ROWS,
    st.text(min_size=1, max_size=300),  # '%' and long workers must not break the template
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)),
)
def test_encoded_leases_parse_to_the_same_messages(
    rows: list[tuple[str, int, int, str, int]], worker: str, expires: datetime
) -> None:
    ids, tokens, attempts, hashes, counts = (
        (list(column) for column in zip(*rows, strict=True)) if rows else ([],) * 5
    )
    data = encode_leases("embedding", worker, expires, ids, tokens, attempts, hashes, counts)
    parsed = lease_pb2.ClaimDocumentsResponse.FromString(data)
    assert [
        (lease.document_id, lease.fencing_token, lease.attempts, lease.content_hash, lease.chunk_count)
        for lease in parsed.leases
    ] == rows
    assert all(lease.stage == "embedding" and lease.worker_id == worker for lease in parsed.leases)
    assert all(lease.expires_at.ToDatetime(tzinfo=UTC) == expires for lease in parsed.leases)


@given(
    st.lists(st.tuples(IDS, st.sampled_from([1, 2, 3]), st.integers(0, 2**63 - 1)), max_size=30)
    | st.lists(st.tuples(IDS, st.just(1), st.integers(1, 2**63 - 1)), max_size=30)
)
def test_encoded_transition_results_parse_back(rows: list[tuple[str, int, int]]) -> None:
    ids = [row[0] for row in rows]
    data = encode_transition_results(ids, [row[1] for row in rows], [row[2] for row in rows])
    parsed = lease_pb2.TransitionDocumentsResponse.FromString(data)
    assert [(r.document_id, r.outcome, r.fencing_token) for r in parsed.results] == rows


TRACE_PARENTS = st.sampled_from(
    ["", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "00-%d-%%-00", "x" * 200]
)


@given(
    st.lists(st.tuples(IDS, TOKENS, st.text(max_size=5), TRACE_PARENTS), max_size=30)
    | st.lists(st.tuples(IDS, TOKENS, st.just("h"), TRACE_PARENTS.filter(bool)), max_size=30)
)
def test_encoded_leases_carry_trace_parents(rows: list[tuple[str, int, str, str]]) -> None:
    ids, tokens, hashes, parents = (list(column) for column in zip(*rows, strict=True)) if rows else ([],) * 4
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    data = encode_leases(
        "embedding", "w", expires, ids, tokens, [1] * len(ids), hashes, [0] * len(ids), parents
    )
    parsed = lease_pb2.ClaimDocumentsResponse.FromString(data)
    assert [
        (lease.document_id, lease.fencing_token, lease.content_hash, lease.trace_parent)
        for lease in parsed.leases
    ] == rows
    # without the column every lease's trace_parent is empty
    bare = lease_pb2.ClaimDocumentsResponse.FromString(
        encode_leases("embedding", "w", expires, ids, tokens, [1] * len(ids), hashes, [0] * len(ids))
    )
    assert [lease.trace_parent for lease in bare.leases] == [""] * len(ids)


# columns drawn from few values, so that some are uniform (one value repeated) and some are not
FEW_TOKENS = st.sampled_from([1, 127, 128, 2**40, 2**64 - 1])
FEW_COUNTS = st.sampled_from([0, 1, 300, 2**32 - 1])
FEW_TEXTS = st.sampled_from(["", "h", "%d", "x" * 200, "\u00e9t\u00e9"])


@given(
    st.lists(st.tuples(IDS, FEW_TOKENS, FEW_COUNTS, FEW_TEXTS, FEW_COUNTS, FEW_TEXTS), max_size=30),
    st.text(min_size=1, max_size=300),
    st.booleans(),
)
def test_encoded_lease_columns_parse_to_the_same_columns(
    rows: list[tuple[str, int, int, str, int, str]], worker: str, with_parents: bool
) -> None:
    ids, tokens, attempts, hashes, counts, parents = (
        (list(column) for column in zip(*rows, strict=True)) if rows else ([],) * 6
    )
    expires = datetime(2030, 1, 1, 12, 30, 5, 123456, tzinfo=UTC)
    data = encode_lease_columns(
        "embedding", worker, expires, ids, tokens, attempts, hashes, counts, parents if with_parents else ()
    )
    expected = lease_pb2.ClaimDocumentsResponse()
    if rows:
        expected.lease_columns.CopyFrom(
            lease_pb2.LeaseColumns(
                stage="embedding",
                worker_id=worker,
                document_ids=ids,
                fencing_tokens=tokens,
                attempts=attempts,
                content_hashes=hashes,
                chunk_counts=counts,
                trace_parents=parents if with_parents else [],
            )
        )
        expected.lease_columns.expires_at.FromDatetime(expires)
    assert lease_pb2.ClaimDocumentsResponse.FromString(data) == expected
    assert lease_pb2.StreamLeasesResponse.FromString(data).lease_columns == expected.lease_columns
