"""Shared fixtures: a real PostgreSQL, a real SeaweedFS S3, and service processes.

- ``postgres`` (session): a throwaway ``PostgresServer`` with durability off.
- ``s3`` (session): a throwaway ``SeaweedS3``.
- ``s3_bucket``: a new, uniquely named bucket on ``s3``; the fixture is its name.
- ``database_url`` (module): the DSN of a database made for the test module.
  ``hevlayer.devstack.testing.fresh_database(postgres)`` makes more.
- ``service_factory``: a ``hevlayer.devstack.testing.ServiceFactory`` that
  starts ``ServiceProcess`` instances (waiting until SERVING), stops them all
  at teardown, and prints their log tails when the test failed.
- ``live_suite`` (session): the whole suite up (``hevlayer up --detach``), for
  tests that drive it as a user would: other languages' clients, grpcurl
  recipes, dashboards against live metrics, traces across processes. It
  self-heals: ``up`` restarts a process that dies (a test's kill, a crash) on
  the same ports; only a crash loop stops it (docs/operations.md).

Helpers live in ``hevlayer.devstack.testing`` and ``tests/support`` rather than
here, so that test modules never import ``conftest`` (there is more than one;
tests/test_helper_imports.py checks it).

Every server is stopped at teardown even when a test fails, and atexit hooks
in hevlayer.devstack stop whatever an aborted run left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Generator, Iterator
from uuid import uuid4

import pytest

from hevlayer.common.auth import generate_internal_token
from hevlayer.devstack import TEST_SETTINGS, PostgresServer, SeaweedS3
from hevlayer.devstack.testing import EXTERNAL_PIPELINES, LiveSuite, ServiceFactory, fresh_database

# Every claimer requires the gateway's shared secret (CLAIMER_INTERNAL_TOKEN) and every
# gateway sends it: the claimers and gateways the tests start inherit this session's one
# (a test calling a claimer directly sends it with hevlayer.devstack.testing.claimer_metadata()).
# `hevlayer up` (live_suite) makes its own, in its data directory.
os.environ.setdefault("CLAIMER_INTERNAL_TOKEN", generate_internal_token())

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _phase_failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return any(report.failed for report in reports.values())


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer(settings=TEST_SETTINGS) as server:
        yield server


@pytest.fixture(scope="session")
def s3() -> Iterator[SeaweedS3]:
    with SeaweedS3() as server:
        yield server


@pytest.fixture
def s3_bucket(s3: SeaweedS3) -> str:
    name = f"test-{uuid4().hex[:12]}"
    s3.create_bucket(name)
    return name


@pytest.fixture(scope="module")
def database_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    return fresh_database(postgres, request.module.__name__.rsplit(".", 1)[-1][:30])


@pytest.fixture
def service_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceFactory]:
    factory = ServiceFactory(tmp_path_factory.mktemp("service-logs"))
    try:
        yield factory
    finally:
        if _phase_failed(request):
            print(factory.report())
        factory.stop_all()


def _hevlayer(
    *args: str | os.PathLike[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hevlayer.cli", *[str(a) for a in args]],
        capture_output=True,
        text=True,
        env={**os.environ, "HEVLAYER_GATEWAY": "", **env},
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture(scope="session")
def live_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSuite]:
    """PostgreSQL, S3, Triton with the model, the embedder, the claimer, the gateway (Milvus Lite),
    and the embedder's worker loop, started once per session by ``hevlayer up``."""
    from hevlayer.cli.stack import UpState

    data_dir = tmp_path_factory.mktemp("live-suite") / "data"
    traces = data_dir.parent / "traces.jsonl"
    env = {
        "HEVLAYER_TRACES_EXPORTER": f"file:{traces}",
        # The suite's embedder worker embeds every pipeline but these: tests of workers written in
        # other languages (tests/clients) run their own worker on pipelines named external-*.
        "EMBEDDER_WORKER_EXCLUDE_PIPELINES": f"{EXTERNAL_PIPELINES}*",
        # Authentication off for this shared suite (explicit, unsafe outside tests): its tests
        # drive it with clients in other languages and the grpcurl recipes of docs/grpcurl.md,
        # which send no token. `hevlayer up` with authentication on is tested by
        # tests/cli/test_cli_end_to_end.py, and every refusal by tests/gateway/test_auth.py.
        "GATEWAY_AUTH": "off",
    }
    started = _hevlayer("--data-dir", data_dir, "up", "--detach", env=env, timeout=600)
    if started.returncode != 0:
        up_log = data_dir / "logs" / "up.log"
        pytest.fail(
            f"hevlayer up failed: {started}\n{up_log.read_text(errors='replace') if up_log.exists() else ''}"
        )
    state = UpState.read(data_dir)
    assert state is not None, "hevlayer up --detach returned, but no live state was recorded"
    try:
        yield LiveSuite(data_dir, state.gateway, dict(state.services), dict(state.http), traces)
    finally:
        stopped = _hevlayer("--data-dir", data_dir, "down", env={}, timeout=180)
        assert stopped.returncode == 0, stopped
