"""The Go example client (examples/go-client) against the live suite.

The client is built the way its README says (``make go-client``: ``buf generate`` with
the local Debian plugins, then ``go build`` in GOPATH mode) and run as a user would:
it creates a pipeline, stages two documents, waits until the suite's embedder worker
has indexed them and queries the index. What it prints is checked against the
gateway with the Python stubs.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest
from grpc import aio

from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.devstack.testing import LiveSuite

ROOT = Path(__file__).resolve().parents[2]
GO_DIR = ROOT / "build" / "go"
BINARY = GO_DIR / "bin" / "go-client"
RUN_TIMEOUT = 180.0
HIT = re.compile(r"^hit (\d+): score=(\S+) document=(\S+) chunk=(\S+) text=(.*)$")


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    def hits(self) -> list[tuple[str, str]]:
        """(document id, chunk id) of each printed hit, in rank order."""
        found = [HIT.match(line) for line in self.stdout.splitlines()]
        return [(m.group(3), m.group(4)) for m in found if m]

    def indexed(self) -> set[str]:
        return {
            line.split()[1].rstrip(":") for line in self.stdout.splitlines() if line.startswith("indexed ")
        }


@pytest.fixture(scope="module")
def go_client() -> Path:
    """The example built by ``make go-client`` (Go from ``make system-deps``)."""
    missing = [tool for tool in ("go", "protoc-gen-go", "protoc-gen-go-grpc") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found on PATH: run `make system-deps` as root "
            "(it installs Debian's golang-go, grpc-go and protoc plugins; see examples/go-client/README.md)"
        )
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    built = subprocess.run(
        ["make", "--no-print-directory", "go-client"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert built.returncode == 0, f"make go-client failed:\n{built.stdout}\n{built.stderr}"
    assert BINARY.is_file(), f"make go-client succeeded but {BINARY} is missing"
    return BINARY


async def run_client(binary: Path, *args: str) -> Run:
    process = await asyncio.create_subprocess_exec(
        str(binary),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        pytest.fail(f"go-client still running after {RUN_TIMEOUT} s:\n{out.decode()}\n{err.decode()}")
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def test_gofmt_and_vet(go_client: Path) -> None:
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
        "GOPATH": f"{GO_DIR}:/usr/share/gocode",
        "GOCACHE": str(GO_DIR / "cache"),
    }
    unformatted = subprocess.run(
        ["gofmt", "-l", "examples/go-client"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert unformatted.returncode == 0, unformatted.stderr
    assert unformatted.stdout == "", f"not gofmt-formatted: {unformatted.stdout}"
    vet = subprocess.run(
        ["go", "vet", "./examples/go-client"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert vet.returncode == 0, vet.stderr


async def test_flags_are_checked_before_dialing(go_client: Path) -> None:
    run = await run_client(go_client, "-gateway", "127.0.0.1:1", "-top-k", "0")
    assert run.returncode == 2, run.describe()
    assert "-top-k: 0 is not between 1 and 1000" in run.stderr, run.describe()


async def test_rpc_errors_show_code_and_message(go_client: Path, live_suite: LiveSuite) -> None:
    run = await run_client(go_client, "-gateway", live_suite.gateway, "-pipeline", "Not_A_Valid_Id")
    assert run.returncode == 1, run.describe()
    assert "PipelineService.CreatePipeline failed: InvalidArgument (code 3): pipeline.id:" in run.stderr, (
        run.describe()
    )


async def test_unreachable_gateway_is_unavailable(go_client: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        run = await run_client(go_client, "-gateway", address)
    assert run.returncode == 1, run.describe()
    assert "PipelineService.ListPipelines failed: Unavailable (code 14):" in run.stderr, run.describe()


async def test_stage_wait_and_query(go_client: Path, live_suite: LiveSuite) -> None:
    pipeline_id = f"go-{uuid4().hex[:6]}"
    prefix = f"doc-{uuid4().hex[:4]}"
    cats, rockets = f"{prefix}-cats", f"{prefix}-rockets"
    common = (
        "-gateway",
        live_suite.gateway,
        "-pipeline",
        pipeline_id,
        "-doc-prefix",
        prefix,
        "-wait",
        "120s",
    )

    first = await run_client(go_client, *common, "-query", "how do spacecraft get into orbit")
    assert first.returncode == 0, first.describe()
    assert f"pipeline {pipeline_id}: created" in first.stdout, first.describe()
    assert first.indexed() == {cats, rockets}, first.describe()
    hits = first.hits()
    assert hits, first.describe()
    assert hits[0][0] == rockets, first.describe()
    assert hits[0][1].startswith(f"{rockets}-"), first.describe()
    assert {document for document, _ in hits} <= {cats, rockets}, first.describe()

    # Again on the pipeline it made: it finds it, re-stages and waits for the new generation.
    second = await run_client(go_client, *common, "-query", "a kitten asleep on a rug", "-top-k", "1")
    assert second.returncode == 0, second.describe()
    assert f"pipeline {pipeline_id}: exists" in second.stdout, second.describe()
    assert second.indexed() == {cats, rockets}, second.describe()
    assert [document for document, _ in second.hits()] == [cats], second.describe()

    async with aio.insecure_channel(live_suite.gateway) as channel:
        pipelines = pipeline_pb2_grpc.PipelineServiceStub(channel)
        got = await pipelines.GetPipeline(pipeline_pb2.GetPipelineRequest(pipeline_id=pipeline_id))
        assert got.pipeline.id == pipeline_id
        staging = staging_pb2_grpc.StagingServiceStub(channel)
        for document_id in (cats, rockets):
            state = (
                await staging.GetDocument(
                    staging_pb2.GetDocumentRequest(pipeline_id=pipeline_id, document_id=document_id)
                )
            ).document
            assert state.stage == "indexed", state
            assert state.chunk_count == 2, state
        deleted = await pipelines.DeletePipeline(pipeline_pb2.DeletePipelineRequest(pipeline_id=pipeline_id))
        assert deleted.deleted_documents == 2, deleted
