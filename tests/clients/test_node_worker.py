"""examples/node-worker against the live suite: a Node.js stager and GPU-style worker
on stubs that ``buf generate`` makes from protos/ at build time.

The example is built in place (``npm ci`` from the committed lockfile, then
``npm run build``: buf with the local protoc-gen-es plugin, then tsc; node_modules,
src/gen and dist are git-ignored). Its stager stages a few files, its worker claims
them (StreamLeases), reads their chunks, embeds them through the embedder's
EmbeddingService and writes the vectors; the documents end indexed and Query finds
each file's text. The pipeline is named ``external-…``, so the suite's own embedder
worker leaves its documents to the Node worker (``LiveSuite.external_prefix``).

Node.js and npm must be on PATH (CI has them): without them these tests fail.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import pytest
from grpc import aio

from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.devstack.testing import LiveSuite

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node-worker"

FILES = {
    "lighthouse.txt": (
        "The lighthouse keeper climbed the spiral stairs at dusk to light the great lamp. "
        "Ships rounding the rocky cape steered by its beam through fog and storm. "
    )
    * 12,
    "sourdough.txt": "A sourdough starter of flour and water ferments for days before the bread is baked.\n",
    "volcano.txt": (
        "Molten lava poured down the flanks of the volcano and cooled into black basalt. "
        "Ash from the eruption drifted for hundreds of kilometres. "
    )
    * 20,
}
QUERIES = {
    "lighthouse.txt": "Ships rounding the rocky cape steered by its beam through fog and storm.",
    "sourdough.txt": "A sourdough starter of flour and water ferments for days",
    "volcano.txt": "Ash from the eruption drifted for hundreds of kilometres.",
}
"""A phrase of each file: Query by it finds one of that file's chunks first."""


def _run(command: list[str], *, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
        env={**os.environ, "BUF": str(Path(sys.executable).parent / "buf")},
    )


@pytest.fixture(scope="module")
def node_worker() -> Path:
    """The built example's entry point (dist/main.js)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "tests/clients/test_node_worker.py needs Node.js (20 or later) and npm on PATH to build "
            f"examples/node-worker; found node={node}, npm={npm}"
        )
    for step in (
        [npm, "ci", "--no-audit", "--no-fund"],
        [npm, "run", "build"],
    ):
        done = _run(step, cwd=EXAMPLE, timeout=600)
        if done.returncode != 0:
            pytest.fail(
                f"{' '.join(step[1:])} in {EXAMPLE} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
    main = EXAMPLE / "dist" / "main.js"
    assert main.is_file(), f"npm run build did not produce {main}"
    return main


async def node(main: Path, *args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the example's CLI (without blocking the event loop)."""
    return await asyncio.to_thread(_run, ["node", str(main), *args], cwd=cwd, timeout=timeout)


@pytest.fixture
async def gateway(live_suite: LiveSuite) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(live_suite.gateway) as channel:
        yield channel


async def create_pipeline(channel: aio.Channel, pipeline_id: str) -> None:
    await pipeline_pb2_grpc.PipelineServiceStub(channel).CreatePipeline(
        pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(id=pipeline_id)), timeout=30
    )


async def test_stage_work_and_query(
    node_worker: Path, live_suite: LiveSuite, gateway: aio.Channel, tmp_path: Path
) -> None:
    pipeline = f"{live_suite.external_prefix}node-{uuid4().hex[:6]}"
    await create_pipeline(gateway, pipeline)
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)

    staged = await node(
        node_worker, "stage", "--gateway", live_suite.gateway, "--pipeline", pipeline, *FILES, cwd=tmp_path
    )
    assert staged.returncode == 0, staged
    chunks = {
        m["id"]: int(m["chunks"])
        for m in re.finditer(
            r"^staged (?P<id>\S+): (?P<chunks>\d+) chunks, fencing token \d+$", staged.stdout, re.M
        )
    }
    assert chunks.keys() == FILES.keys(), staged.stdout
    # ~800-character chunks: the long files are split, the one-line file is one chunk.
    assert chunks["sourdough.txt"] == 1
    assert chunks["lighthouse.txt"] >= len(FILES["lighthouse.txt"]) // 800, chunks
    assert chunks["volcano.txt"] >= len(FILES["volcano.txt"]) // 800, chunks

    worked = await node(
        node_worker,
        "work",
        "--gateway",
        live_suite.gateway,
        "--embedder",
        live_suite.services["embedder"],
        "--pipeline",
        pipeline,
        "--max-documents",
        str(len(FILES)),
        "--idle-timeout",
        "120",
        "--lease-seconds",
        "30",
        cwd=tmp_path,
    )
    assert worked.returncode == 0, worked
    # The Node worker (not the suite's own) embedded and wrote every document, all its chunks.
    indexed = {
        m["id"]: int(m["vectors"])
        for m in re.finditer(r"^indexed (?P<id>\S+): (?P<vectors>\d+) vectors$", worked.stdout, re.M)
    }
    assert indexed == chunks, worked.stdout
    assert f"stopped ({len(FILES)} documents finished): {len(FILES)} indexed, 0 failed" in worked.stdout

    staging = staging_pb2_grpc.StagingServiceStub(gateway)
    for name in FILES:
        got = await staging.GetDocument(
            staging_pb2.GetDocumentRequest(pipeline_id=pipeline, document_id=name), timeout=30
        )
        assert got.document.stage == "indexed", got.document
        assert got.document.chunk_count == chunks[name]

    index = index_pb2_grpc.IndexServiceStub(gateway)
    for name, phrase in QUERIES.items():
        response = await index.Query(
            index_pb2.QueryRequest(pipeline_id=pipeline, text=phrase, top_k=3), timeout=60
        )
        best = response.hits[0]
        assert best.document_id == name, (phrase, response.hits)
        assert best.attributes["text"] in FILES[name]
        assert best.attributes["file"] == name


async def test_errors_show_the_grpc_status(node_worker: Path, live_suite: LiveSuite, tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("a short note\n")
    missing = f"{live_suite.external_prefix}node-missing-{uuid4().hex[:6]}"
    ran = await node(
        node_worker, "stage", "--gateway", live_suite.gateway, "--pipeline", missing, "note.txt", cwd=tmp_path
    )
    assert ran.returncode == 1, ran
    assert f"StageDocuments failed: NOT_FOUND (5): pipeline '{missing}' not found" in ran.stderr

    ran = await node(
        node_worker,
        "stage",
        "--gateway",
        live_suite.gateway,
        "--pipeline",
        "Not_A_Pipeline",
        "note.txt",
        cwd=tmp_path,
    )
    assert ran.returncode == 1, ran
    assert "StageDocuments failed: INVALID_ARGUMENT (3): pipeline_id: 'Not_A_Pipeline'" in ran.stderr

    ran = await node(
        node_worker,
        "work",
        "--gateway",
        live_suite.gateway,
        "--embedder",
        live_suite.services["embedder"],
        "--pipeline",
        missing,
        cwd=tmp_path,
    )
    assert ran.returncode == 1, ran
    assert f"StreamLeases failed: NOT_FOUND (5): pipeline '{missing}' not found" in ran.stderr

    ran = await node(node_worker, "work", "--pipeline", missing, cwd=tmp_path)
    assert ran.returncode == 2, ran
    assert "--embedder: required" in ran.stderr
