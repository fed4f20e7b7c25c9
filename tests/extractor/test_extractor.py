"""The extract worker (``hevlayer-extractor``) against the live suite.

Documents are enqueued into stage ``extract`` through the gateway, their ids naming objects in
each source: local files, objects on a local S3 server (SeaweedFS), URLs of a local aiohttp
server. The extractor process claims, reads, converts and stages them; the suite's embedder
indexes them. Also: the Artifact Cache spares every conversion when the same objects are
extracted again; a SIGKILLed extractor loses no id; ``hevlayer add --remote-workers`` leaves the
extraction to a running extractor; a second ``hevlayer add`` of unchanged files converts nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest
from aiohttp import web

from hevlayer.api.pipeline.v1.pipeline_pb2 import Pipeline
from hevlayer.client import Client
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.devstack.testing import LiveSuite, ServiceFactory

pytestmark = pytest.mark.timeout(600)

DEADLINE = 120.0
"""Bound on waiting for a pipeline to settle (a hang fails instead of blocking the session)."""

DOCS = {
    "guide.md": "# Glaciers\n\nGlaciers are rivers of ice that carve valleys over millennia.\n",
    "notes.txt": "Field notes: the moraine was surveyed twice in the spring.\n",
    "orbit.py": 'def period(a: float) -> float:\n    """Kepler\'s third law."""\n    return a ** 1.5\n',
}


@dataclass
class HttpServer:
    base: str
    release: asyncio.Event
    """Requests under /slow/ wait until this is set."""
    requests: list[str]


@pytest.fixture
async def http_server() -> AsyncIterator[HttpServer]:
    """A local HTTP server: /docs/<name> serves DOCS, /slow/<name> waits for ``release``, others 404."""
    release = asyncio.Event()
    requests: list[str] = []

    async def docs(request: web.Request) -> web.Response:
        requests.append(request.path)
        name = request.match_info["name"]
        if request.path.startswith("/slow/"):
            await release.wait()
            return web.Response(text=f"Slow page {name}: a document about lease expiry {name}.\n")
        if name not in DOCS:
            raise web.HTTPNotFound()
        return web.Response(text=DOCS[name])

    app = web.Application()
    app.router.add_get("/docs/{name}", docs)
    app.router.add_get("/slow/{name}", docs)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield HttpServer(f"http://127.0.0.1:{port}", release, requests)
    finally:
        release.set()
        await runner.cleanup()


@pytest.fixture
async def gateway(live_suite: LiveSuite) -> AsyncIterator[Client]:
    client = Client.connect(live_suite.gateway)
    try:
        yield client
    finally:
        await client.close()


def start_extractor(
    factory: ServiceFactory,
    live_suite: LiveSuite,
    pipelines: Sequence[str],
    s3: SeaweedS3 | None = None,
    cache_dir: Path | None = None,
    **extra: str,
) -> ServiceProcess:
    env = {
        "EXTRACTOR_GATEWAY_ADDRESS": live_suite.gateway,
        "EXTRACTOR_PIPELINES": ",".join(pipelines),
        "EXTRACTOR_POLL_SECONDS": "0.2",
        "EXTRACTOR_REFRESH_SECONDS": "1",
        "HEVLAYER_TRACES_EXPORTER": f"file:{live_suite.traces}",
        **extra,
    }
    if s3 is not None:
        env |= {
            "EXTRACTOR_S3_ENDPOINT_URL": s3.endpoint_url,
            "EXTRACTOR_S3_ACCESS_KEY_ID": s3.access_key,
            "EXTRACTOR_S3_SECRET_ACCESS_KEY": s3.secret_key,
            "EXTRACTOR_S3_REGION": s3.region,
        }
    if cache_dir is not None:
        env["EXTRACTOR_ARTIFACT_CACHE"] = str(cache_dir)
    return factory("hevlayer-extractor", name="extractor", env=env)


def metric(process: ServiceProcess, name: str, labels: str = "") -> float:
    """The sum of a counter's samples (those whose labels contain ``labels``) on /metrics."""
    address = process.env["HEVLAYER_HTTP_ADDRESS"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
        if match and labels in (match.group(1) or ""):
            total += float(match.group(2))
    return total


async def new_pipeline(gateway: Client, prefix: str = "extr") -> str:
    pipeline_id = f"{prefix}-{uuid4().hex[:8]}"
    await gateway.pipelines.create(Pipeline(id=pipeline_id))
    return pipeline_id


async def enqueue(gateway: Client, pipeline_id: str, items: Iterable[tuple[str, bytes]]) -> None:
    entries = [(doc_id, f"sha256:{hashlib.sha256(data).hexdigest()}") for doc_id, data in items]

    async def batches() -> AsyncIterator[list[tuple[str, str]]]:
        yield entries

    await gateway.staging.enqueue(pipeline_id, batches(), stage="extract", skip_unchanged=False)


async def settle(gateway: Client, pipeline_id: str, expected: int) -> dict[str, str]:
    """Wait until ``expected`` documents are all indexed or failed; each id's stage."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        stages = {d.document_id: d.stage async for d in gateway.staging.list_documents(pipeline_id)}
        if len(stages) == expected and all(s in ("indexed", "failed") for s in stages.values()):
            return stages
        assert loop.time() < deadline, f"pipeline {pipeline_id} did not settle: {stages}"
        await asyncio.sleep(0.5)


def local_files(root: Path) -> list[tuple[str, bytes]]:
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for name, text in DOCS.items():
        path = root / name
        path.write_text(text + f"\n{root.name}\n")
        items.append((path.as_posix(), path.read_bytes()))
    return items


def s3_objects(s3: SeaweedS3, bucket: str, prefix: str) -> list[tuple[str, bytes]]:
    items = []
    for name, text in DOCS.items():
        key = f"{prefix}/{name}"
        data = (text + f"\n{prefix}\n").encode()
        status, body = s3.request("PUT", f"/{bucket}/{key}", data)
        assert status == 200, body
        items.append((f"s3://{bucket}/{key}", data))
    return items


async def test_every_source_is_extracted_and_indexed_and_the_cache_spares_conversions(
    live_suite: LiveSuite,
    service_factory: ServiceFactory,
    gateway: Client,
    http_server: HttpServer,
    s3: SeaweedS3,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    first = await new_pipeline(gateway)
    second = await new_pipeline(gateway)
    extractor = start_extractor(service_factory, live_suite, [first, second], s3, tmp_path / "artifacts")
    local = local_files(tmp_path / f"local-{uuid4().hex[:6]}")
    remote = s3_objects(s3, s3_bucket, f"src-{uuid4().hex[:6]}")
    web_items = [(f"{http_server.base}/docs/{name}", text.encode()) for name, text in DOCS.items()]
    items = [*local, *remote, *web_items]
    gone = [
        (f"{http_server.base}/docs/missing.md", b""),
        (f"s3://{s3_bucket}/never-written.txt", b""),
        ((tmp_path / "never-written.txt").as_posix(), b""),
    ]
    unreadable = [(f"s3://no-such-bucket-{uuid4().hex[:6]}/a.txt", b"")]

    await enqueue(gateway, first, [*items, *gone, *unreadable])
    stages = await settle(gateway, first, len(items) + len(unreadable))
    assert {doc_id: stages[doc_id] for doc_id, _ in items} == {doc_id: "indexed" for doc_id, _ in items}
    assert stages[unreadable[0][0]] == "failed"
    failure = await gateway.staging.get_document(first, unreadable[0][0])
    assert "S3 refused the read" in failure.last_error, failure
    assert all(doc_id not in stages for doc_id, _ in gone), "objects that are gone are deleted"
    converted = metric(extractor, "hevlayer_extractor_conversions_total")
    assert converted == len(items)
    assert metric(extractor, "hevlayer_extractor_bytes_read_total") == sum(len(d) for _, d in items)
    assert metric(extractor, "hevlayer_extractor_artifact_cache_total", 'event="hit"') == 0

    results = await gateway.index.query(first, "rivers of ice carving valleys", top_k=20)
    found = {r.document_id for r in results}
    assert {doc_id for doc_id, _ in items if doc_id.endswith("guide.md")} <= found

    # The same objects again (another pipeline): every chunk list comes from the Artifact Cache.
    await enqueue(gateway, second, items)
    stages = await settle(gateway, second, len(items))
    assert set(stages.values()) == {"indexed"}
    assert metric(extractor, "hevlayer_extractor_conversions_total") == converted
    assert metric(extractor, "hevlayer_extractor_artifact_cache_total", 'event="hit"') == len(items)


async def test_a_killed_extractor_loses_no_id(
    live_suite: LiveSuite, service_factory: ServiceFactory, gateway: Client, http_server: HttpServer
) -> None:
    pipeline_id = await new_pipeline(gateway)
    slow = [(f"{http_server.base}/slow/page-{n}.txt", b"") for n in range(6)]
    fast = [(f"{http_server.base}/docs/{name}", text.encode()) for name, text in DOCS.items()]
    doomed = start_extractor(
        service_factory,
        live_suite,
        [pipeline_id],
        EXTRACTOR_LEASE_SECONDS="3",
        EXTRACTOR_CONCURRENCY="2",
        EXTRACTOR_CLAIM_LIMIT="3",
    )
    await enqueue(gateway, pipeline_id, [*slow, *fast])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while sum(p.startswith("/slow/") for p in http_server.requests) < 2:  # it holds slow leases now
        assert loop.time() < deadline, "the extractor never fetched the slow pages"
        await asyncio.sleep(0.1)
    status = await gateway.pipelines.status(pipeline_id)
    assert status.counts["extracting"] >= 2, dict(status.counts)
    doomed.kill()
    http_server.release.set()
    start_extractor(service_factory, live_suite, [pipeline_id], EXTRACTOR_LEASE_SECONDS="3")
    stages = await settle(gateway, pipeline_id, len(slow) + len(fast))
    assert set(stages.values()) == {"indexed"}, stages


def hevlayer(live_suite: LiveSuite, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hevlayer.cli", *[str(a) for a in args]],
        capture_output=True,
        text=True,
        env={**os.environ, **live_suite.env},
        timeout=DEADLINE,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def extracted_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("queued "))


async def test_add_with_remote_workers_and_a_second_add_converts_nothing(
    live_suite: LiveSuite, service_factory: ServiceFactory, gateway: Client, tmp_path: Path
) -> None:
    tree = tmp_path / f"tree-{uuid4().hex[:6]}"
    local_files(tree)
    remote_pipeline = await new_pipeline(gateway, "remote")
    start_extractor(service_factory, live_suite, [remote_pipeline])
    ran = await asyncio.to_thread(
        hevlayer, live_suite, "add", tree, "-p", remote_pipeline, "--remote-workers", "--plain"
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert extracted_line(ran.stdout).startswith(f"queued {len(DOCS)}, unchanged 0"), ran.stdout
    assert f"under the given paths: {len(DOCS)} indexed, 0 failed" in ran.stdout, ran.stdout
    assert "extracted 0 documents" in ran.stdout, "this add extracted nothing itself"

    in_process = [f"local-{uuid4().hex[:6]}", f"local-{uuid4().hex[:6]}"]
    first = await asyncio.to_thread(hevlayer, live_suite, "add", tree, "-p", in_process[0], "--plain")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"({len(DOCS)} converted, 0 from the artifact cache)" in extracted_line(first.stdout), first.stdout
    second = await asyncio.to_thread(hevlayer, live_suite, "add", tree, "-p", in_process[1], "--plain")
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"(0 converted, {len(DOCS)} from the artifact cache)" in extracted_line(second.stdout), (
        second.stdout
    )
    assert f"under the given paths: {len(DOCS)} indexed, 0 failed" in second.stdout, second.stdout
