"""``hevlayer add s3://bucket/prefix`` (and ``s3://bucket/key``) end to end on the live suite: the
objects sit in a real local S3 server (SeaweedFS, the session's ``s3``), ``add`` lists and reads
them with the extract workers' ``EXTRACTOR_S3_*`` settings, its in-process extract loop reads them
again by their ``s3://`` ids, the suite embeds and indexes them, and ``hevlayer search`` finds
their text. A second ``add`` of the unchanged prefix queues nothing; an object deleted from the
prefix is deleted from the pipeline; a sibling prefix sharing the name's start is left out."""

from __future__ import annotations

from uuid import uuid4

from support.cli import Ran, hevlayer

from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.testing import LiveSuite

TIMEOUT = 300.0


def put(s3: SeaweedS3, bucket: str, key: str, data: bytes) -> None:
    status, body = s3.request("PUT", f"/{bucket}/{key}", data)
    assert status == 200, body


def add(live_suite: LiveSuite, s3: SeaweedS3, pipeline: str, *args: str, secret: str | None = None) -> Ran:
    env = {
        **live_suite.env,
        "EXTRACTOR_S3_ENDPOINT_URL": s3.endpoint_url,
        "EXTRACTOR_S3_ACCESS_KEY_ID": s3.access_key,
        "EXTRACTOR_S3_SECRET_ACCESS_KEY": s3.secret_key if secret is None else secret,
        "EXTRACTOR_S3_REGION": s3.region,
    }
    ran = hevlayer(
        "add", *args, "-p", pipeline, "--plain", "--timeout", str(TIMEOUT), env=env, timeout=TIMEOUT + 60
    )
    assert ran.returncode == 0, ran
    return ran


def line(ran: Ran, prefix: str) -> str:
    return next(text for text in ran.stdout.splitlines() if text.startswith(prefix))


def search(live_suite: LiveSuite, pipeline: str, query: str) -> str:
    """``hevlayer search``'s whole output."""
    ran = hevlayer("search", query, "-p", pipeline, "-k", "3", env=live_suite.env)
    assert ran.returncode == 0, ran
    return ran.stdout


def top(live_suite: LiveSuite, pipeline: str, query: str) -> str:
    """The first result's line."""
    output = search(live_suite, pipeline, query)
    return next((text for text in output.splitlines() if text.startswith(" 1. ")), output)


def test_add_an_s3_prefix_then_search_finds_its_text(
    live_suite: LiveSuite, s3: SeaweedS3, s3_bucket: str
) -> None:
    bucket = s3_bucket
    put(
        s3,
        bucket,
        "docs/volcano.md",
        b"# Volcanoes\n\nBasalt lava from a shield volcano flows far and cools slowly.\n",
    )
    put(
        s3,
        bucket,
        "docs/deep/orchard.txt",
        b"The orchard keeps heirloom apples in a cold cellar over winter.\n",
    )
    put(s3, bucket, "docs/firmware.bin", bytes(range(256)) * 8)
    put(s3, bucket, "docs-old/ignored.txt", b"A sibling prefix that add must leave out.\n")
    pipeline = f"s3-add-{uuid4().hex[:6]}"

    first = add(live_suite, s3, pipeline, f"s3://{bucket}/docs")
    assert line(first, "pipeline ").startswith(f"pipeline {pipeline}: 3 files found, 2 supported ("), first
    assert line(first, "queued ").startswith("queued 2, unchanged 0, deleted 0; extracted 2 documents"), first
    assert "under the given paths: 2 indexed, 0 failed" in first.stdout, first
    assert f"s3://{bucket}/docs/firmware.bin: binary file" in first.stdout, first
    assert f"s3://{bucket}/docs/volcano.md" in top(live_suite, pipeline, "lava from a shield volcano")
    assert f"s3://{bucket}/docs/deep/orchard.txt" in top(live_suite, pipeline, "apples stored in a cellar")
    assert "ignored.txt" not in search(live_suite, pipeline, "a sibling prefix")

    again = add(live_suite, s3, pipeline, f"s3://{bucket}/docs/")
    assert line(again, "queued ").startswith("queued 0, unchanged 2, deleted 0"), again

    status, body = s3.request("DELETE", f"/{bucket}/docs/deep/orchard.txt")
    assert status in (200, 204), body
    pruned = add(live_suite, s3, pipeline, f"s3://{bucket}/docs")
    assert line(pruned, "queued ").startswith("queued 0, unchanged 1, deleted 1"), pruned
    assert "orchard" not in search(live_suite, pipeline, "apples stored in a cellar")

    # a prefix that cannot be listed (a wrong secret) is reported, and nothing under it deleted
    refused = add(live_suite, s3, pipeline, f"s3://{bucket}/docs", secret="not-the-secret")
    assert f"s3://{bucket}/docs: S3 refused the listing: " in refused.stdout, refused
    assert line(refused, "queued ").startswith("queued 0, unchanged 0, deleted 0"), refused
    assert f"s3://{bucket}/docs/volcano.md" in top(live_suite, pipeline, "lava from a shield volcano")

    one = add(live_suite, s3, f"{pipeline}-one", f"s3://{bucket}/docs-old/ignored.txt")
    assert line(one, "queued ").startswith("queued 1, unchanged 0"), one
    assert "under the given paths: 1 indexed, 0 failed" in one.stdout, one
