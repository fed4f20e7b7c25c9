"""``hevlayer add --summaries`` through the live suite (its summarizer, embedder worker,
gateway and index): every directory's summary is staged as a ``directory_summary``
chunk into the same pipeline, embedded into the same index, found by
``hevlayer search --kind directory_summary``, and counted by the summarizer's
success hooks. A PDF is folded by its derived text, which the Job Lane shares
with the Object Lane through the Artifact Cache. A second add of the unchanged
tree reuses every summary and converts nothing, and a removed directory's
summary is deleted."""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from pathlib import Path

from support.cli import hevlayer, make_pdf

from hevlayer.api.summary.v1 import summary_pb2 as pb
from hevlayer.cli.summaries import job_id_for
from hevlayer.client import Client
from hevlayer.devstack.testing import LiveSuite

TREE = {
    "README.md": "# Observatory\n\nTools for the rooftop telescope and its star catalogue.\n",
    "optics/lens.py": '"""Grinding parabolic mirrors and measuring lens focal lengths."""\n\nFOCAL = 1200\n',
    "optics/coatings/silver.md": "Silvering a mirror: tin chloride, then ammoniacal silver nitrate.\n",
    "catalogue/stars.csv": "name,magnitude\nSirius,-1.46\nVega,0.03\n",
    "catalogue/notes.txt": "Variable stars in Cepheus, observed every clear night in winter.\n",
}
DIRECTORIES = {"", "optics", "optics/coatings", "catalogue"}


PDF_PHRASE = "Collimate the secondary mirror before every session"


def _tree(root: Path) -> Path:
    for name, text in TREE.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "optics" / "manual.pdf").write_bytes(make_pdf([f"{PDF_PHRASE}."]))
    return root


def _converted(stdout: str) -> tuple[int, int]:
    """(from the artifact cache, converted) of the Job Lane's line."""
    found = re.search(r"converted files: (\d+) from the artifact cache, (\d+) converted", stdout)
    assert found is not None, stdout
    return int(found[1]), int(found[2])


async def _summary_text(live_suite: LiveSuite, job_id: str, path: str) -> str:
    async with Client.connect(live_suite.services["summarizer"]) as summarizer:
        return (await summarizer.summaries.get_summary(job_id, path, timeout=60)).text


async def _job(live_suite: LiveSuite, job_id: str) -> pb.Job:
    async with Client.connect(live_suite.services["summarizer"]) as summarizer:
        job = pb.Job()
        async for update in summarizer.summaries.watch_job(job_id, until_indexed=True, timeout=120):
            job = update.job
        return job


async def _summary_stages(live_suite: LiveSuite, pipeline: str, job_id: str) -> dict[str, tuple[str, int]]:
    async with Client.connect(live_suite.gateway) as gateway:
        return {
            d.document_id: (d.stage, d.fencing_token)
            async for d in gateway.staging.list_documents(pipeline, id_prefix=f"dir:{job_id}:/")
        }


def test_add_summaries_end_to_end(live_suite: LiveSuite, tmp_path: Path) -> None:
    assert "summarizer" in live_suite.services, "hevlayer up runs the summarizer"
    pipeline = f"sum-{uuid.uuid4().hex[:6]}"
    root = _tree(tmp_path / "observatory")
    job_id = job_id_for(pipeline, root)

    added = hevlayer("add", "--summaries", "--plain", "-p", pipeline, root, env=live_suite.env, timeout=300)
    assert added.returncode == 0, added
    assert f"summaries of {root.as_posix()} (job {job_id}, succeeded): 4/4 directories" in added.stdout
    assert "4 indexed" in added.stdout
    assert "summaries added" in added.stdout
    # The PDF's text is folded into its directory's summary, converted once for both lanes.
    assert PDF_PHRASE in asyncio.run(_summary_text(live_suite, job_id, "optics"))
    assert _converted(added.stdout) in ((2, 0), (1, 1), (0, 2))  # the PDF and the CSV

    # The success hooks counted every summary indexed; each is a document of the same pipeline.
    job = asyncio.run(_job(live_suite, job_id))
    assert (job.summarized_directories, job.indexed_directories, job.index_failed_directories) == (4, 4, 0)
    stages = asyncio.run(_summary_stages(live_suite, pipeline, job_id))
    assert {d.removeprefix(f"dir:{job_id}:/") for d in stages} == DIRECTORIES
    assert {stage for stage, _ in stages.values()} == {"indexed"}

    found = hevlayer(
        "search",
        "-p",
        pipeline,
        "--kind",
        "directory_summary",
        "-k",
        "10",
        "mirrors and lenses",
        env=live_suite.env,
    )
    assert found.returncode == 0, found
    lines = [line for line in found.stdout.splitlines() if line[:3].strip().rstrip(".").isdigit()]
    assert len(lines) == 4
    assert all("[directory_summary]" in line and f"dir:{job_id}:/" in line for line in lines)
    assert f"dir:{job_id}:/optics" in found.stdout
    every = hevlayer("search", "-p", pipeline, "-k", "20", "star catalogue", env=live_suite.env)
    assert "[directory_summary]" in every.stdout
    assert "catalogue/stars.csv" in every.stdout

    # Unchanged: every summary comes from the cache and keeps its indexed document.
    again = hevlayer("add", "--summaries", "--plain", "-p", pipeline, root, env=live_suite.env, timeout=300)
    assert again.returncode == 0, again
    assert _converted(again.stdout) == (2, 0)
    job = asyncio.run(_job(live_suite, job_id))
    assert job.cache_hits == 4
    assert asyncio.run(_summary_stages(live_suite, pipeline, job_id)) == stages

    # A removed directory's summary goes with it; its parent is summarized anew.
    shutil.rmtree(root / "optics" / "coatings")
    third = hevlayer("add", "--summaries", "--plain", "-p", pipeline, root, env=live_suite.env, timeout=300)
    assert third.returncode == 0, third
    assert "1 summaries of removed directories deleted" in third.stdout
    after = asyncio.run(_summary_stages(live_suite, pipeline, job_id))
    assert {d.removeprefix(f"dir:{job_id}:/") for d in after} == DIRECTORIES - {"optics/coatings"}
    assert after[f"dir:{job_id}:/catalogue"] == stages[f"dir:{job_id}:/catalogue"]
    assert after[f"dir:{job_id}:/optics"][1] != stages[f"dir:{job_id}:/optics"][1]


def test_a_pipeline_with_summaries_enabled_summarizes_by_default(
    live_suite: LiveSuite, tmp_path: Path
) -> None:
    pipeline = f"sumon-{uuid.uuid4().hex[:6]}"
    root = tmp_path / "notes"
    (root / "day").mkdir(parents=True)
    (root / "day" / "one.txt").write_text("The first entry of the diary.\n")
    created = hevlayer("pipelines", "create", pipeline, "--summaries", env=live_suite.env)
    assert created.returncode == 0, created

    added = hevlayer("add", "--plain", "-p", pipeline, root, env=live_suite.env, timeout=300)
    assert added.returncode == 0, added
    assert "directories summarized" in added.stdout
    stages = asyncio.run(_summary_stages(live_suite, pipeline, job_id_for(pipeline, root)))
    assert len(stages) == 2

    switched = hevlayer("pipelines", "summaries", pipeline, "off", env=live_suite.env)
    assert switched.returncode == 0, switched
    (root / "day" / "two.txt").write_text("The second entry.\n")
    quiet = hevlayer("add", "--plain", "-p", pipeline, root, env=live_suite.env, timeout=300)
    assert quiet.returncode == 0, quiet
    assert "directories summarized" not in quiet.stdout
    forced = hevlayer("add", "--summaries", "--plain", "-p", pipeline, root, env=live_suite.env, timeout=300)
    assert "directories summarized" in forced.stdout


def test_add_summaries_without_a_summarizer_names_the_option(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree")
    ran = hevlayer(
        "--data-dir", tmp_path / "nowhere", "add", "--summaries", "-p", "x", root, env={}, timeout=60
    )
    assert ran.returncode == 1
    assert "--summaries needs a summarizer" in ran.stderr
    assert "--summarizer HOST:PORT" in ran.stderr
