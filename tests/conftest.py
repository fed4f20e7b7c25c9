"""Shared fixtures: a real PostgreSQL, a real SeaweedFS S3, and service processes.

- ``postgres`` (session): a throwaway ``PostgresServer`` with durability off.
- ``s3`` (session): a throwaway ``SeaweedS3``.
- ``s3_bucket``: a new, uniquely named bucket on ``s3``; the fixture is its name.
- ``database_url`` (module): the DSN of a database made for the test module.
  ``hevlayer.devstack.testing.fresh_database(postgres)`` makes more.
- ``service_factory``: a ``hevlayer.devstack.testing.ServiceFactory`` that
  starts ``ServiceProcess`` instances (waiting until SERVING), stops them all
  at teardown, and prints their log tails when the test failed.

Helpers live in ``hevlayer.devstack.testing`` rather than here, so that test
modules never import ``conftest`` (there is more than one).

Every server is stopped at teardown even when a test fails, and atexit hooks
in hevlayer.devstack stop whatever an aborted run left behind.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from uuid import uuid4

import pytest

from hevlayer.devstack import TEST_SETTINGS, PostgresServer, SeaweedS3
from hevlayer.devstack.testing import ServiceFactory, fresh_database

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
