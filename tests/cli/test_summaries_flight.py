"""Both lanes of one ``hevlayer add`` reaching the same unconverted files at the same moment
convert each file once: the Object Lane (``ExtractLoop.extract``, as ``add``'s in-process
extract workers run it) and the Job Lane (``SummaryJobs``' enumeration, which converts the files
whose text it sends to the summarizer) each hold their own Artifact Cache object on the same
directory, and the cache's single flight makes one of them wait and read the other's entry.
Through the live suite: ``hevlayer add --summaries`` of a tree of images describes each image
once (one call to the vision endpoint, though both lanes need it), and a second add of the
unchanged tree converts nothing and calls the endpoint no more."""

from __future__ import annotations

import asyncio
import io
import re
import uuid
from pathlib import Path
from typing import cast

from PIL import Image
from support.cli import hevlayer, make_pdf
from support.fakes.vision import fake_vision_server

from hevlayer.api.summary.v1 import summary_pb2
from hevlayer.cli.summaries import JobOutcome, SummaryJobs, SummaryOptions
from hevlayer.client import Client
from hevlayer.devstack.testing import LiveSuite
from hevlayer.ingest.artifacts import LocalArtifactCache
from hevlayer.ingest.extract_loop import ExtractLoop
from hevlayer.ingest.files import Root, document_id
from hevlayer.ingest.sources import LocalSource

FILES = 12
GUARD = 120.0  # a hang guard, not a timing assertion


def _corpus(root: Path) -> list[Path]:
    paths = []
    for n in range(FILES):
        if n % 2:
            path = root / f"reports/report-{n}.pdf"
            data = make_pdf([f"Report {n}: the north wall needs pointing", f"Report {n}, page two"])
        else:
            path = root / f"pages/page-{n}.html"
            data = f"<html><body><h1>Page {n}</h1><p>Orchard notes number {n}.</p></body></html>".encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


async def test_both_lanes_at_once_convert_each_file_once(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    paths = _corpus(root)
    artifacts = tmp_path / "artifacts"
    unused = cast(Client, None)  # neither extract() nor the enumeration calls the gateway
    object_lane = ExtractLoop(
        unused,
        "p",
        LocalSource([Root.of(root)]),
        cache=LocalArtifactCache(artifacts, 1 << 26),
    )
    job_lane = SummaryJobs(
        unused,
        "p",
        [root],
        SummaryOptions(summarizer="127.0.0.1:1", artifact_dir=str(artifacts), artifact_bytes=1 << 26),
        note=lambda line: None,
    )
    outcome = JobOutcome(str(root), "job")
    sent: list[summary_pb2.JobObject] = []

    async def enumerate_job() -> None:
        async for batch in job_lane._batches(job_lane.roots[0], [], outcome):
            sent.extend(batch)

    extractions, _ = await asyncio.wait_for(
        asyncio.gather(
            asyncio.gather(*(object_lane.extract(document_id(p)) for p in paths)),
            enumerate_job(),
        ),
        GUARD,
    )
    assert all(e.document is not None for e in extractions), [e.reason for e in extractions]
    assert len(sent) == FILES
    assert all(o.text for o in sent), "every file's text reached the Job Lane"
    stats = object_lane.stats
    assert stats.conversions + stats.cache_hits == FILES
    assert outcome.conversions + outcome.artifact_hits == FILES
    assert stats.conversions + outcome.conversions == FILES, (
        f"object lane converted {stats.conversions}, job lane {outcome.conversions}: "
        "some file was converted by both"
    )


def _png(seed: bytes, n: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (seed[0], seed[1], n * 40)).save(out, format="PNG")
    return out.getvalue()


def _job_lane_converted(stdout: str) -> tuple[int, int]:
    """(from the artifact cache, converted) of the Job Lane's line."""
    found = re.search(r"converted files: (\d+) from the artifact cache, (\d+) converted", stdout)
    assert found is not None, stdout
    return int(found[1]), int(found[2])


def test_add_with_summaries_describes_each_image_once(live_suite: LiveSuite, tmp_path: Path) -> None:
    pipeline = f"img-{uuid.uuid4().hex[:6]}"
    root = tmp_path / "album"
    seed = uuid.uuid4().bytes  # images no other test has described
    for n in range(3):
        path = root / ("holidays" if n else "") / f"photo-{n}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(seed, n))
    (root / "notes.txt").write_text("Photos of the harbour, the lighthouse and the ferry.\n")
    with fake_vision_server() as fake:
        env = {
            **live_suite.env,
            "HEVLAYER_VISION_PROVIDER": "openai",
            "HEVLAYER_VISION_URL": fake.url,
            "HEVLAYER_VISION_MODEL": "vision-test",
            "HEVLAYER_TRANSFORM_CACHE": "",
        }
        first = hevlayer("add", "--summaries", "--plain", "-p", pipeline, root, env=env, timeout=300)
        assert first.returncode == 0, first
        assert len(fake.requests) == 3, "each image described once, though both lanes need its text"
        assert sum(_job_lane_converted(first.stdout)) == 3

        second = hevlayer("add", "--summaries", "--plain", "-p", pipeline, root, env=env, timeout=300)
        assert second.returncode == 0, second
        assert "unchanged 4" in second.stdout, second.stdout
        assert _job_lane_converted(second.stdout) == (3, 0)
        assert len(fake.requests) == 3, "a second add of unchanged files calls the provider no more"
