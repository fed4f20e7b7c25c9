"""Both lanes of one ``hevlayer add`` reaching the same unconverted files at the same moment
convert each file once: the Object Lane (``ExtractLoop.extract``, as ``add``'s in-process
extract workers run it) and the Job Lane (``SummaryJobs``' enumeration, which converts the files
whose text it sends to the summarizer) each hold their own Artifact Cache object on the same
directory, and the cache's single flight makes one of them wait and read the other's entry."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

from support.cli import make_pdf

from hevlayer.api.summary.v1 import summary_pb2
from hevlayer.cli.summaries import JobOutcome, SummaryJobs, SummaryOptions
from hevlayer.client import Client
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
