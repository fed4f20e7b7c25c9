"""The chunk store: pack format, segment codec, and S3 against a real SeaweedFS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.s3 import gateway_s3_settings

from hevlayer.api.document.v1 import document_pb2
from hevlayer.client.naming import object_key_of, pack_prefix
from hevlayer.common.errors import NotFound, Unavailable
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.ports import free_port
from hevlayer.gateway.chunkstore import (
    CODEC_PLAIN,
    CODEC_ZSTD,
    MERGE_GAP,
    Backing,
    ChunkStore,
    SegmentCodec,
    _merge_runs,
    build_pack,
    new_pack_key,
    read_pack_index,
)
from hevlayer.gateway.convert import python_to_struct
from hevlayer.gateway.metrics import S3_REQUESTS
from hevlayer.gateway.settings import S3Settings

texts = st.text(min_size=0, max_size=300)
metadata = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.one_of(st.integers(-1000, 1000), st.text(max_size=20), st.booleans(), st.none()),
    max_size=4,
)


@st.composite
def documents(draw: st.DrawFn) -> document_pb2.Document:
    doc_id = draw(st.text(min_size=1, max_size=30))
    chunks = draw(st.lists(st.tuples(texts, metadata), max_size=8))
    document = document_pb2.Document(id=doc_id)
    for index, (text, meta) in enumerate(chunks):
        chunk = document.chunks.add(id=f"{doc_id}-{index}", text=text)
        if meta:
            chunk.metadata.CopyFrom(python_to_struct(meta))
    return document


@given(st.lists(documents(), min_size=1, max_size=10), st.sampled_from(["zstd", "none"]))
@settings(max_examples=40, deadline=None)
def test_pack_round_trip(docs: list[document_pb2.Document], compression: str) -> None:
    codec = SegmentCodec(compression)
    segments = [(d.id, codec.encode(d)) for d in docs]
    pack, spans = build_pack(segments)
    index = read_pack_index(pack)
    assert [(doc_id, offset, length) for doc_id, offset, length in index] == [
        (doc_id, offset, length) for (doc_id, _), (offset, length) in zip(segments, spans, strict=True)
    ]
    for document, (offset, length) in zip(docs, spans, strict=True):
        assert codec.decode(pack[offset : offset + length]) == document


def test_codec_picks_zstd_only_when_smaller() -> None:
    codec = SegmentCodec("zstd")
    repetitive = document_pb2.Document(id="d", chunks=[document_pb2.Chunk(id="c", text="word " * 200)])
    assert codec.encode(repetitive)[0] == CODEC_ZSTD
    tiny = document_pb2.Document(id="d")
    assert codec.encode(tiny)[0] == CODEC_PLAIN
    plain = SegmentCodec("none")
    assert plain.encode(repetitive)[0] == CODEC_PLAIN
    # Either codec reads both.
    assert plain.decode(codec.encode(repetitive)) == repetitive
    assert codec.decode(plain.encode(repetitive)) == repetitive


@given(st.text(min_size=1).filter(lambda s: "#" not in s), st.integers(0, 2**40), st.integers(0, 2**31))
def test_backing_round_trip(key: str, offset: int, length: int) -> None:
    backing = Backing(key, offset, length)
    assert Backing.parse(str(backing)) == backing
    assert object_key_of(str(backing)) == key


@pytest.mark.parametrize("text", ["", "key", "key#", "key#1", "key#a:2", "#1:2", "key#1:-2"])
def test_backing_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="malformed"):
        Backing.parse(text)


def test_ranges_of_one_object_are_merged() -> None:
    near = [Backing("a", 8, 10), Backing("a", 18, 5), Backing("a", 30, 4)]
    far = Backing("a", 30 + MERGE_GAP + 100, 4)
    other = Backing("b", 8, 10)
    runs = _merge_runs([*near, far, other])
    shapes = sorted((r.key, r.start, r.end, len(r.members)) for r in runs)
    assert shapes == [("a", 8, 34, 3), ("a", far.offset, far.offset + 4, 1), ("b", 8, 18, 1)]


def test_pack_keys_are_fresh_and_under_the_pipeline_prefix() -> None:
    prefix = pack_prefix("product-images", "5f3a")
    keys = {new_pack_key(prefix) for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("pipelines/product-images/5f3a/packs/") and k.endswith(".pack") for k in keys)


# -- against SeaweedFS -----------------------------------------------------------------------------


@pytest.fixture
async def store(s3: SeaweedS3, s3_bucket: str) -> AsyncIterator[ChunkStore]:
    from hevlayer.gateway.chunkstore import open_s3_client

    async with AsyncExitStack() as stack:
        client: Any = await open_s3_client(gateway_s3_settings(s3, s3_bucket), stack)
        yield ChunkStore(client, s3_bucket)


def _docs(n: int, chunks: int = 3) -> list[document_pb2.Document]:
    return [
        document_pb2.Document(
            id=f"doc-{i}",
            chunks=[document_pb2.Chunk(id=f"c{j}", text=f"text {i}/{j} " * 20) for j in range(chunks)],
        )
        for i in range(n)
    ]


async def test_write_then_read_any_subset(store: ChunkStore) -> None:
    codec = SegmentCodec("zstd")
    docs = _docs(20)
    key = new_pack_key(pack_prefix("p", "1"))
    puts = S3_REQUESTS.labels("put")._value.get()
    backings = await store.write_pack(key, [(d.id, codec.encode(d)) for d in docs])
    assert S3_REQUESTS.labels("put")._value.get() == puts + 1
    assert all(b.key == key for b in backings)

    gets = S3_REQUESTS.labels("get")._value.get()
    wanted = backings[3:9] + backings[15:16]
    segments = await store.read_segments(wanted)
    # Nearby ranges of one object are read with one GET.
    assert S3_REQUESTS.labels("get")._value.get() == gets + 1
    for backing in wanted:
        assert codec.decode(segments[backing]) == docs[backings.index(backing)]

    index = read_pack_index(await store.read_object(key))
    assert [doc_id for doc_id, _, _ in index] == [d.id for d in docs]


async def test_deleted_objects_read_as_not_found(store: ChunkStore) -> None:
    codec = SegmentCodec("none")
    keys = [new_pack_key(pack_prefix("p", "2")) for _ in range(3)]
    backings = [(await store.write_pack(k, [("d", codec.encode(_docs(1)[0]))]))[0] for k in keys]
    assert sorted(await store.list_keys(pack_prefix("p", "2"))) == sorted(keys)

    await store.delete_objects([keys[0], "pipelines/p/2/packs/never-written.pack"])
    with pytest.raises(NotFound, match="gone"):
        await store.read_segments([backings[0]])
    assert len(await store.read_segments(backings[1:])) == 2

    assert await store.delete_prefix(pack_prefix("p", "2")) == 2
    assert await store.list_keys(pack_prefix("p", "2")) == []


async def test_unreachable_s3_is_unavailable() -> None:
    from hevlayer.gateway.chunkstore import open_s3_client

    settings = S3Settings(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key_id="k",
        secret_access_key="s",
        bucket="nowhere",
    )
    async with AsyncExitStack() as stack:
        client: Any = await open_s3_client(settings, stack, max_attempts=1)
        store = ChunkStore(client, "nowhere")
        with pytest.raises(Unavailable) as caught:
            await store.write_pack("k.pack", [("d", b"\x00")])
        assert caught.value.reason == "CHUNK_STORE_UNAVAILABLE"
        with pytest.raises(Unavailable):
            await store.read_segments([Backing("k.pack", 8, 1)])
