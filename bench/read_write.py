"""Gateway read/write benchmarks (issue 5): vector writes into Milvus Lite.

Every *write path* writes the same generated documents (``--docs``
documents of ``--chunks`` chunks, ``--dim``-dimensional unit vectors, a
~160-byte ``text`` attribute and a ``page`` number), ``--batch-docs``
documents per call, each into its own fresh Milvus Lite database, in two
cases: ``new`` (no document is in the index yet) then ``rewrite`` (the same
documents again, so every one is replaced). The paths are *interleaved*:
each batch is written by every path in turn (the order rotating per batch)
and only the write call is timed, so load from other processes on the
machine hits all paths alike. ``--rounds`` repeats the whole run on fresh
databases; the figures are the totals over all rounds.

Printed: each path's vectors/s per case, and its ratio against the baseline
of the same case, ``pymilvus upsert``: ``MilvusClient.upsert`` of prebuilt
rows in the sink's collection layout (same ids, fields and filter tags;
attributes as a dict, as a pymilvus user writes them).

Paths measured now:

* ``MilvusSink.replace_documents``: validation, ids, filter tags, the
  delete of the document's stale rows, the upsert (the sink hands pymilvus
  the attributes as JSON text it encoded while validating).
* ``pymilvus upsert, JSON text`` (informational): the baseline with the
  attributes as JSON text, to show what that part is worth.

The gRPC ``WriteVectors`` path is to be added as another :class:`WritePath`
in :func:`write_paths` (``setup`` once per round, ``write`` per batch,
``close``).

Run: ``.venv/bin/python bench/read_write.py`` (defaults: 2000 x 10 x 384,
100 documents per call, 2 rounds).
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from milvus_lite.server_manager import server_manager_instance
from pymilvus import MilvusClient

from hevlayer.gateway.sinks import DistanceMetric, JSONValue, Row
from hevlayer.gateway.sinks.base import NamespaceSpec, prepare_documents
from hevlayer.gateway.sinks.milvus import MilvusSink, collection_schema, index_params, milvus_row

NAMESPACE = "bench_vectors"
METRIC = DistanceMetric.COSINE_DISTANCE
CASES = ("new", "rewrite")

Batch = dict[str, list[Row]]


@dataclass(frozen=True)
class Workload:
    """The documents every path writes, in ``batches`` of ``{document_id: rows}``."""

    dimension: int
    batches: list[Batch]

    @property
    def vectors(self) -> int:
        """Number of vectors in the workload."""
        return sum(len(rows) for batch in self.batches for rows in batch.values())

    @classmethod
    def generate(cls, docs: int, chunks: int, dimension: int, batch_docs: int, seed: int = 7) -> Workload:
        """Deterministic random unit vectors with small attributes."""
        rng = random.Random(seed)
        text = "lorem ipsum dolor sit amet " * 8
        documents: dict[str, list[Row]] = {}
        for d in range(docs):
            document_id = f"doc-{d:07d}"
            rows = []
            for c in range(chunks):
                vector = [rng.gauss(0.0, 1.0) for _ in range(dimension)]
                norm = sum(x * x for x in vector) ** 0.5 or 1.0
                attributes: dict[str, JSONValue] = {"text": text[: 150 + c], "page": c}
                rows.append(Row(f"{document_id}-{c}", [x / norm for x in vector], attributes))
            documents[document_id] = rows
        ids = list(documents)
        batches = [
            {document_id: documents[document_id] for document_id in ids[start : start + batch_docs]}
            for start in range(0, len(ids), batch_docs)
        ]
        return cls(dimension, batches)


class WritePath(abc.ABC):
    """One way of getting a batch of documents into Milvus Lite."""

    name: str
    baseline = False

    @abc.abstractmethod
    async def setup(self, workload: Workload, directory: Path) -> None:
        """Create an empty index in ``directory`` (not timed)."""

    @abc.abstractmethod
    async def write(self, batch_index: int, batch: Batch) -> None:
        """Write one batch (timed)."""

    @abc.abstractmethod
    async def count(self) -> int:
        """Rows in the index (checked after each case)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the index (not timed)."""


class PymilvusUpsert(WritePath):
    """MilvusClient.upsert of rows built before timing starts."""

    def __init__(self, *, json_text: bool) -> None:
        self.json_text = json_text
        self.name = "pymilvus upsert, JSON text (info)" if json_text else "pymilvus upsert"
        self.baseline = not json_text
        self._rows: list[list[dict[str, Any]]] = []
        self._path = ""
        self._client: Any = None

    async def setup(self, workload: Workload, directory: Path) -> None:
        spec = NamespaceSpec(workload.dimension, METRIC)
        self._rows = []
        for batch in workload.batches:
            rows = [row for document in prepare_documents(batch, spec) for row in document.rows]
            if self.json_text:
                self._rows.append([milvus_row(row) for row in rows])
            else:
                self._rows.append([{**milvus_row(row), "attributes": row.attributes} for row in rows])
        self._path = str(directory / "direct.db")
        self._client = MilvusClient(self._path)
        self._client.create_collection(
            NAMESPACE, schema=collection_schema(workload.dimension), consistency_level="Strong"
        )
        self._client.create_index(NAMESPACE, index_params(METRIC, lite=True), sync=False)
        self._client.load_collection(NAMESPACE)

    async def write(self, batch_index: int, batch: Batch) -> None:
        self._client.upsert(NAMESPACE, self._rows[batch_index])

    async def count(self) -> int:
        rows = self._client.query(NAMESPACE, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    async def close(self) -> None:
        self._client.close()
        server_manager_instance.release_server(self._path)


class SinkReplace(WritePath):
    """MilvusSink.replace_documents (Milvus Lite)."""

    name = "MilvusSink.replace_documents"

    def __init__(self) -> None:
        self._sink: MilvusSink | None = None

    async def setup(self, workload: Workload, directory: Path) -> None:
        self._sink = await MilvusSink.open_lite(str(directory / "sink.db"))
        await self._sink.ensure_namespace(NAMESPACE, workload.dimension, METRIC)

    async def write(self, batch_index: int, batch: Batch) -> None:
        assert self._sink is not None
        await self._sink.replace_documents(NAMESPACE, batch)

    async def count(self) -> int:
        assert self._sink is not None
        return await self._sink.count(NAMESPACE)

    async def close(self) -> None:
        if self._sink is not None:
            await self._sink.close()


def write_paths() -> list[WritePath]:
    """The paths compared; the first is the baseline. Add the gRPC WriteVectors path here."""
    return [PymilvusUpsert(json_text=False), SinkReplace(), PymilvusUpsert(json_text=True)]


@dataclass
class Measurement:
    """Total time one path spent writing one case."""

    name: str
    case: str
    baseline: bool
    vectors: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Vectors per second."""
        return self.vectors / self.seconds if self.seconds > 0 else float("inf")


async def run(workload: Workload, rounds: int) -> list[Measurement]:
    """Interleave every path over every batch, ``rounds`` times on fresh databases."""
    totals: dict[tuple[str, str], Measurement] = {}
    for _ in range(rounds):
        paths = write_paths()
        with tempfile.TemporaryDirectory(prefix="hevlayer-bench-") as root:
            try:
                for index, path in enumerate(paths):
                    directory = Path(root) / str(index)
                    directory.mkdir()
                    await path.setup(workload, directory)
                for case in CASES:
                    for batch_index, batch in enumerate(workload.batches):
                        vectors = sum(len(rows) for rows in batch.values())
                        shift = batch_index % len(paths)
                        for path in paths[shift:] + paths[:shift]:
                            started = time.perf_counter()
                            await path.write(batch_index, batch)
                            elapsed = time.perf_counter() - started
                            total = totals.setdefault(
                                (path.name, case), Measurement(path.name, case, path.baseline)
                            )
                            total.vectors += vectors
                            total.seconds += elapsed
                    for path in paths:
                        written = await path.count()
                        if written != workload.vectors:
                            raise SystemExit(
                                f"{path.name}: {written} rows after {case}, not {workload.vectors}"
                            )
            finally:
                for path in paths:
                    await path.close()
    return list(totals.values())


def report(measurements: list[Measurement], workload: Workload, args: argparse.Namespace) -> str:
    """The table printed by the benchmark: each rate and its ratio to the baseline of its case."""
    baselines = {m.case: m for m in measurements if m.baseline}
    lines = [
        f"WriteVectors into Milvus Lite: {args.docs} docs x {args.chunks} chunks = "
        f"{workload.vectors} vectors, dim {args.dim}, {args.batch_docs} docs per call, "
        f"{args.rounds} interleaved rounds",
        f"{'path':<36} {'case':<8} {'vectors/s':>10} {'seconds':>8} {'ratio':>6}",
    ]
    for m in sorted(measurements, key=lambda m: (CASES.index(m.case), not m.baseline, "info" in m.name)):
        ratio = m.rate / baselines[m.case].rate
        lines.append(f"{m.name:<36} {m.case:<8} {m.rate:>10.0f} {m.seconds:>8.2f} {ratio:>6.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Vector writes into Milvus Lite: sink vs pymilvus.")
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch-docs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    workload = Workload.generate(args.docs, args.chunks, args.dim, args.batch_docs)
    text = report(asyncio.run(run(workload, args.rounds)), workload, args)
    print(text)
    return text


if __name__ == "__main__":
    main()
