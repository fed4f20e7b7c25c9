"""A claimer + gateway (real PostgreSQL, SeaweedFS S3, Milvus Lite, disk cache) for the CLI tests.

- ``cli_stack`` (module): claimer and gateway processes on a fresh database
  and bucket; the gateway has no embedding service, so documents stop at
  ``pending`` (what the Object Lane's extract side produces).

A stack that embeds: ``support.stacks.start_cli_stack(...)`` with ``EMBEDDER_ADDRESS``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.stacks import CliStack, start_cli_stack

from hevlayer.devstack import SeaweedS3


@pytest.fixture(scope="module")
def cli_stack(
    database_url: str, s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[CliStack]:
    stack = start_cli_stack(database_url, s3, tmp_path_factory.mktemp("cli-stack"))
    failed_before = request.session.testsfailed
    try:
        yield stack
    finally:
        if request.session.testsfailed > failed_before:
            print(stack.logs())
        stack.stop()
