"""``hevlayer add`` as a subprocess against a real claimer and gateway, up to ``pending``.

The gateway of ``cli_stack`` has no embedder, so ``add --no-wait`` is checked
on the Object Lane's extract side: files are enumerated, queued as lightweight
ids in ``extract``, claimed, chunked and staged (→ ``pending``); unchanged
files are skipped, changed ones re-staged, deleted ones removed, and files
that cannot be read are reported. Both queue backends are exercised.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from support.cli import CONTROL, Ran, hevlayer, sample_tree
from support.stacks import CliStack

from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.client import Client
from hevlayer.client.types import Claim

SUPPORTED = ["birds.csv", "config.json", "glaciers.pdf", "guide.md", "notes.txt", "orbit.py", "page.html"]


def documents(stack: CliStack, pipeline: str) -> dict[str, staging_pb2.DocumentState]:
    async def collect() -> dict[str, staging_pb2.DocumentState]:
        async with Client.connect(stack.gateway_address) as gateway:
            return {Path(d.document_id).name: d async for d in gateway.staging.list_documents(pipeline)}

    return asyncio.run(collect())


def add(stack: CliStack, pipeline: str, *paths: Path, extra: tuple[str, ...] = ()) -> Ran:
    ran = hevlayer("add", *paths, "-p", pipeline, "--no-wait", "--timeout", "30", *extra, env=stack.env)
    assert not CONTROL.search(ran.stdout), "no control codes when stdout is not a terminal"
    return ran


def summary_line(ran: Ran, prefix: str) -> str:
    return next(line for line in ran.stdout.splitlines() if line.startswith(prefix))


@pytest.mark.parametrize("queue", ["row", "segment"])
def test_add_stages_changed_files_only_and_removes_deleted_ones(
    cli_stack: CliStack, tmp_path: Path, queue: str
) -> None:
    pipeline = f"add-{queue}-{uuid.uuid4().hex[:6]}"
    created = hevlayer("pipelines", "create", pipeline, "--queue", queue, env=cli_stack.env)
    assert created.returncode == 0, created
    tree = tmp_path / "tree"
    paths = sample_tree(tree)

    first = add(cli_stack, pipeline, tree)
    assert first.returncode == 0, first
    assert summary_line(first, "pipeline ").startswith(f"pipeline {pipeline}: 8 files found, 7 supported (")
    assert summary_line(first, "queued ").startswith(
        "queued 7, unchanged 0, deleted 0; extracted 7 documents"
    )
    assert f"  {paths['firmware.bin']}: binary file (.bin); no producer for it" in first.stdout
    progress = [line for line in first.stdout.splitlines() if line.startswith("enumerated ")]
    assert progress, first
    assert progress[-1].startswith("enumerated 8 files | extracted 7/7 |"), first
    state = documents(cli_stack, pipeline)
    assert sorted(state) == SUPPORTED
    assert all(d.stage == "pending" and d.chunk_count >= 1 for d in state.values()), state
    assert state["orbit.py"].content_hash.endswith(";code/2")

    again = add(cli_stack, pipeline, tree)
    assert again.returncode == 0, again
    assert summary_line(again, "queued ").startswith(
        "queued 0, unchanged 7, deleted 0; extracted 0 documents"
    )
    after = documents(cli_stack, pipeline)
    assert {n: d.fencing_token for n, d in after.items()} == {n: d.fencing_token for n, d in state.items()}

    paths["orbit.py"].write_text(
        paths["orbit.py"].read_text() + "\n\ndef orbital_period(a):\n    return a ** 1.5\n"
    )
    paths["notes.txt"].unlink()
    edited = add(cli_stack, pipeline, tree)
    assert edited.returncode == 0, edited
    assert summary_line(edited, "queued ").startswith(
        "queued 1, unchanged 5, deleted 1; extracted 1 documents"
    )
    final = documents(cli_stack, pipeline)
    assert "notes.txt" not in final
    changed = {n for n in final if final[n].fencing_token != state[n].fencing_token}
    assert changed == {"orbit.py"}
    assert final["orbit.py"].content_hash != state["orbit.py"].content_hash


def test_unreadable_files_are_reported_and_do_not_stop_the_run(cli_stack: CliStack, tmp_path: Path) -> None:
    pipeline = f"add-bad-{uuid.uuid4().hex[:6]}"
    assert hevlayer("pipelines", "create", pipeline, "--queue", "row", env=cli_stack.env).returncode == 0
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "good.md").write_text("# Fine\n\nA readable file.\n")
    (tree / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a PDF at all")
    (tree / "broken.json").write_text("{not json")
    ran = add(cli_stack, pipeline, tree, tmp_path / "missing-dir")
    assert ran.returncode == 0, ran
    assert f"  {tmp_path / 'missing-dir'}: no such file or directory" in ran.stdout
    assert f"  {tree / 'broken.pdf'}: unreadable PDF" in ran.stdout
    assert f"  {tree / 'broken.json'}: invalid JSON" in ran.stdout
    state = documents(cli_stack, pipeline)
    assert state["good.md"].stage == "pending"
    assert state["broken.pdf"].stage == "failed"
    assert state["broken.pdf"].last_error.startswith("unreadable PDF")


def test_add_creates_the_pipeline_and_prints_plain_progress(cli_stack: CliStack, tmp_path: Path) -> None:
    pipeline = f"add-new-{uuid.uuid4().hex[:6]}"
    (tmp_path / "one.txt").write_text("One small file.\n")
    ran = add(cli_stack, pipeline, tmp_path / "one.txt")
    assert ran.returncode == 0, ran
    lines = ran.stdout.splitlines()
    assert lines[0] == f"created pipeline {pipeline!r}"
    assert any(
        line.startswith("enumerated 1 files | extracted 1/1 | embedded 0/1 | indexed 0/1 |") for line in lines
    )
    assert summary_line(ran, "took ").endswith("chunks/s")
    assert documents(cli_stack, pipeline)["one.txt"].stage == "pending"


@pytest.mark.parametrize("queue", ["row", "segment"])
def test_add_priority_orders_the_claims(cli_stack: CliStack, tmp_path: Path, queue: str) -> None:
    """``add --priority N`` enqueues every file with priority N; the priority stays with the
    documents through extraction, so the embedder's claims from ``pending`` take a later
    ``add --priority -1`` before an earlier backlog of priority 5."""
    pipeline = f"prio-{queue}-{uuid.uuid4().hex[:6]}"
    created = hevlayer("pipelines", "create", pipeline, "--queue", queue, env=cli_stack.env)
    assert created.returncode == 0, created
    backlog, urgent = tmp_path / "backlog", tmp_path / "urgent"
    backlog.mkdir()
    urgent.mkdir()
    for n in range(3):
        (backlog / f"old-{n}.txt").write_text(f"backlog note number {n} about slow glaciers\n")
    (urgent / "hot.txt").write_text("an urgent note about a volcano\n")
    for tree, priority in ((backlog, "5"), (urgent, "-1")):
        ran = add(cli_stack, pipeline, tree, extra=("--priority", priority))
        assert ran.returncode == 0, ran

    async def claims() -> list[list[str]]:
        async with Client.connect(cli_stack.gateway_address) as gateway:
            claim = Claim(
                pipeline_id=pipeline, worker_id="gpu-0", from_stage="pending", claim_stage="embedding"
            )
            return [
                sorted(Path(lease.document_id).name for lease in await gateway.leases.claim(claim, limit))
                for limit in (1, 10)
            ]

    assert asyncio.run(claims()) == [["hot.txt"], ["old-0.txt", "old-1.txt", "old-2.txt"]]


def test_add_refuses_a_priority_outside_int32(cli_stack: CliStack, tmp_path: Path) -> None:
    ran = hevlayer(
        "add", tmp_path, "-p", "prio-bad", "--no-wait", "--priority", str(2**31), env=cli_stack.env
    )
    assert ran.returncode == 2, ran
    assert "--priority" in ran.stderr, ran
    assert "2147483648" in ran.stderr, ran
