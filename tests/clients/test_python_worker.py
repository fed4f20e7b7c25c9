"""examples/python-worker against the live suite: its stager stages files, its worker
embeds and writes them, and Query finds each file by a phrase from it.

The pipeline is named ``external-…``, so the suite's own embedder worker leaves
its documents to this one (``LiveSuite.external_prefix``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

from hevlayer.client import Client, Pipeline
from hevlayer.devstack.testing import LiveSuite

WORKER = Path(__file__).resolve().parents[2] / "examples" / "python-worker" / "worker.py"

FILES = {
    "bees.txt": "Honey bees dance to tell their hive where the flowers are.\n" * 3,
    "glaciers.txt": "Glaciers grind valleys into a U shape as they slide downhill.\n" * 3,
    "tides.txt": "The moon's gravity pulls the oceans into two tidal bulges.\n" * 3,
}


def run(*args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORKER), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_stage_work_and_query(live_suite: LiveSuite, tmp_path: Path) -> None:
    pipeline = f"{live_suite.external_prefix}py-{uuid.uuid4().hex[:6]}"
    paths = []
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
        paths.append(tmp_path / name)

    async def create() -> None:
        async with Client.connect(live_suite.gateway) as client:
            await client.pipelines.create(Pipeline(id=pipeline))

    asyncio.run(create())
    staged = run("stage", "--gateway", live_suite.gateway, "--pipeline", pipeline, *paths)
    assert staged.returncode == 0, staged
    assert sorted(staged.stdout.split("\n")[:-1]) == [f"{name}: staged" for name in sorted(FILES)]

    worked = run(
        "work",
        "--gateway",
        live_suite.gateway,
        "--embedder",
        live_suite.services["embedder"],
        "--pipeline",
        pipeline,
        "--max-documents",
        str(len(FILES)),
        "--idle-seconds",
        "60",
    )
    assert worked.returncode == 0, worked
    assert worked.stdout.strip() == f"indexed {len(FILES)}, failed 0, lost 0", worked

    async def check() -> None:
        async with Client.connect(live_suite.gateway) as client:
            for name in FILES:
                document = await client.staging.get_document(pipeline, name)
                assert document.stage == "indexed", document
            hits = await client.index.query(pipeline, "how do bees tell others where flowers are", top_k=3)
            assert hits[0].document_id == "bees.txt", hits
            hits = await client.index.query(pipeline, "what causes ocean tides", top_k=3)
            assert hits[0].document_id == "tides.txt", hits

    asyncio.run(check())


def test_errors_name_the_field(live_suite: LiveSuite, tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("hello")
    ran = run("stage", "--gateway", live_suite.gateway, "--pipeline", "Not A Pipeline", tmp_path / "note.txt")
    assert ran.returncode == 2, ran
    assert ran.stderr.startswith("INVALID_ARGUMENT"), ran
    assert "pipeline_id" in ran.stderr, ran
