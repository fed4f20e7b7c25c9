"""Real tests of hevlayer.devstack: PostgreSQL, SeaweedFS S3, service processes, the stack."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from hevlayer.devstack import (
    DevstackError,
    PostgresServer,
    SeaweedS3,
    ServiceProcess,
    ServiceSpec,
    ServiceStartError,
    free_port,
    free_ports,
    health_status,
)
from hevlayer.devstack.__main__ import up
from hevlayer.devstack.ports import ephemeral_range
from hevlayer.devstack.testing import ServiceFactory, health_stub_argv


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A directory under /tmp that the unprivileged PostgreSQL user can reach.

    (pytest's tmp_path lives under a 0700 directory of the current user.)
    """
    path = Path(tempfile.mkdtemp(prefix="hevlayer-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# -- ports -------------------------------------------------------------------------


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(1024 <= port < 65536 for port in ports)
    assert free_port(exclude=ports) not in ports


def test_free_ports_lie_outside_the_ephemeral_range() -> None:
    """A server restarted on its port must find it free: no outgoing connection can take a port
    outside the range the kernel picks local ports from."""
    low, high = ephemeral_range()
    ports = free_ports(50)
    assert not [port for port in ports if low <= port <= high]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", ports[0]))
        listener.listen()
        with socket.create_connection(("127.0.0.1", ports[0])) as outgoing:
            # the range read is the one the kernel gives outgoing connections their ports from
            assert low <= outgoing.getsockname()[1] <= high


# -- PostgreSQL --------------------------------------------------------------------


async def test_postgres_accepts_the_dsn_and_has_the_settings(postgres: PostgresServer) -> None:
    assert postgres.dsn == f"postgresql://hevlayer:hevlayer@127.0.0.1:{postgres.port}/hevlayer"
    connection = await asyncpg.connect(postgres.dsn)
    try:
        assert await connection.fetchval("SELECT 40 + 2") == 42
        assert await connection.fetchval("SELECT current_database()") == "hevlayer"
        assert await connection.fetchval("SHOW random_page_cost") == "1.1"
        assert await connection.fetchval("SHOW max_connections") == "200"
        assert await connection.fetchval("SHOW fsync") == "off"
        assert await connection.fetchval("SHOW synchronous_commit") == "off"
        assert await connection.fetchval("SHOW listen_addresses") == "127.0.0.1"
    finally:
        await connection.close()


async def test_postgres_checks_the_password(postgres: PostgresServer) -> None:
    wrong = postgres.dsn.replace("hevlayer:hevlayer@", "hevlayer:wrong@")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(wrong)


def test_postgres_execute_through_psql(postgres: PostgresServer) -> None:
    assert postgres.execute("SELECT 1") == "1"
    assert postgres.data_dir.is_dir()
    with pytest.raises(DevstackError, match="does_not_exist"):
        postgres.execute("SELECT * FROM does_not_exist")


async def test_database_url_is_a_fresh_database(database_url: str) -> None:
    assert database_url.rsplit("/", 1)[1].startswith("test_devstack_")
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("CREATE TABLE t (id int PRIMARY KEY)")
        await connection.execute("INSERT INTO t VALUES (1), (2)")
        assert await connection.fetchval("SELECT count(*) FROM t") == 2
    finally:
        await connection.close()


async def test_postgres_reuses_a_persistent_data_dir(scratch_dir: Path) -> None:
    data_dir = scratch_dir / "nested" / "postgres"
    first = PostgresServer(data_dir, settings={"fsync": "off"})
    with first:
        assert (data_dir / "PG_VERSION").exists()
        connection = await asyncpg.connect(first.dsn)
        try:
            await connection.execute("CREATE TABLE kept (v text)")
            await connection.execute("INSERT INTO kept VALUES ('still here')")
        finally:
            await connection.close()
    first.stop()  # a second stop is a no-op
    assert not first.running
    assert (data_dir / "PG_VERSION").exists(), "a persistent data dir survives stop()"

    second = PostgresServer(data_dir)
    with second:
        connection = await asyncpg.connect(second.dsn)
        try:
            assert await connection.fetchval("SELECT v FROM kept") == "still here"
            assert await connection.fetchval("SHOW fsync") == "on"
        finally:
            await connection.close()


def test_postgres_throwaway_data_dir_is_removed() -> None:
    server = PostgresServer(settings={"fsync": "off"})
    with server:
        data_dir = server.data_dir
        assert server.execute("SELECT 2") == "2"
    assert not data_dir.exists()
    server.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_postgres_as_root_makes_private_parents_traversable(scratch_dir: Path) -> None:
    private = scratch_dir / "private"
    private.mkdir(mode=0o700)
    with PostgresServer(private / "pg", settings={"fsync": "off"}) as server:
        assert server.execute("SELECT current_user") == "hevlayer"
        assert (private / "pg").stat().st_uid != 0, "the cluster is owned by hevlayer-pg"
    assert private.stat().st_mode & 0o001, "o+x was added so hevlayer-pg can reach the cluster"


def test_atexit_stops_servers_of_a_crashed_process(scratch_dir: Path) -> None:
    script = f"""
import pathlib
from hevlayer.devstack import PostgresServer, SeaweedS3
pg = PostgresServer(settings={{"fsync": "off"}}).start()
s3 = SeaweedS3().start()
postmaster = pathlib.Path(pg.data_dir, "postmaster.pid").read_text().split()[0]
pathlib.Path({str(scratch_dir / "pids")!r}).write_text(f"{{postmaster}} {{s3.pid}} {{pg.data_dir}}")
raise RuntimeError("crash on purpose")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1, result.stderr
    assert "crash on purpose" in result.stderr
    postmaster, weed, data_dir = (scratch_dir / "pids").read_text().split()
    assert not _alive(int(postmaster))
    assert not _alive(int(weed))
    assert not Path(data_dir).exists(), "the throwaway cluster was removed"


# -- SeaweedFS S3 ------------------------------------------------------------------


def _client_kwargs(s3: SeaweedS3) -> dict[str, object]:
    return {
        "endpoint_url": s3.endpoint_url,
        "aws_access_key_id": s3.access_key,
        "aws_secret_access_key": s3.secret_key,
        "region_name": s3.region,
        "config": AioConfig(s3={"addressing_style": "path"}),
    }


async def test_s3_round_trip_with_aiobotocore(s3: SeaweedS3, s3_bucket: str) -> None:
    assert s3.endpoint_url == f"http://127.0.0.1:{s3.port}"
    session = get_session()
    async with session.create_client("s3", **_client_kwargs(s3)) as client:
        buckets = await client.list_buckets()
        assert s3_bucket in {b["Name"] for b in buckets["Buckets"]}
        for index in range(3):
            await client.put_object(Bucket=s3_bucket, Key=f"docs/{index}.txt", Body=f"body {index}".encode())
        response = await client.get_object(Bucket=s3_bucket, Key="docs/1.txt")
        async with response["Body"] as stream:
            assert await stream.read() == b"body 1"
        listed = await client.list_objects_v2(Bucket=s3_bucket, Prefix="docs/")
        assert [o["Key"] for o in listed["Contents"]] == [f"docs/{i}.txt" for i in range(3)]
        await client.delete_object(Bucket=s3_bucket, Key="docs/1.txt")
        listed = await client.list_objects_v2(Bucket=s3_bucket, Prefix="docs/")
        assert [o["Key"] for o in listed["Contents"]] == ["docs/0.txt", "docs/2.txt"]
        with pytest.raises(ClientError) as missing:
            await client.get_object(Bucket=s3_bucket, Key="docs/1.txt")
        assert missing.value.response["Error"]["Code"] == "NoSuchKey"


async def test_s3_rejects_wrong_credentials(s3: SeaweedS3, s3_bucket: str) -> None:
    kwargs = _client_kwargs(s3)
    kwargs["aws_secret_access_key"] = "not-the-secret"
    async with get_session().create_client("s3", **kwargs) as client:
        with pytest.raises(ClientError) as denied:
            await client.put_object(Bucket=s3_bucket, Key="x", Body=b"x")
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_s3_persistent_data_dir_survives_a_restart(scratch_dir: Path) -> None:
    data_dir = scratch_dir / "s3"
    with SeaweedS3(data_dir, buckets=["kept"]) as first:
        status, _ = first.request("PUT", "/kept/object", b"persisted")
        assert status == 200
        first_port = first.port
    first.stop()
    with SeaweedS3(data_dir) as second:
        assert "kept" in second.list_buckets()
        assert second.request("GET", "/kept/object") == (200, b"persisted")
        assert second.port != first_port or second.ports != first.ports


# -- service processes --------------------------------------------------------------


def test_service_process_serving_then_sigterm(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    process = ServiceProcess(
        health_stub_argv("--delay", "0.5"),
        name="health",
        env={"HEVLAYER_GRPC_ADDRESS": address},
        log_path=tmp_path / "health.log",
        grpc_address=address,
    )
    with process:
        assert process.pid is not None
        assert process.returncode is None
        process.wait_ready(timeout=20)
        assert health_status(address) == "SERVING"
    assert process.returncode == 0
    assert "stopping gracefully" in process.log_tail()
    assert process.log_path == tmp_path / "health.log"
    assert process.stop() == 0  # idempotent


def test_service_process_kill_takes_the_process_group(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    child_pid_file = tmp_path / "child.pid"
    process = ServiceProcess(
        health_stub_argv(address, "--child-pid-file", str(child_pid_file)),
        log_path=tmp_path / "health.log",
    ).start()
    try:
        process.wait_ready(address, timeout=20)
        child_pid = int(child_pid_file.read_text())
        assert _alive(child_pid)
        assert process.kill() == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child_pid), "the child in the process group was killed too"
        assert "stopping gracefully" not in process.log_tail()
    finally:
        process.stop()


def test_service_process_stop_also_ends_children(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    child_pid_file = tmp_path / "child.pid"
    with ServiceProcess(
        health_stub_argv(address, "--child-pid-file", str(child_pid_file)),
        log_path=tmp_path / "health.log",
        grpc_address=address,
    ) as process:
        process.wait_ready(timeout=20)
        child_pid = int(child_pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child_pid)


def test_wait_ready_reports_an_early_exit_with_the_log(tmp_path: Path) -> None:
    process = ServiceProcess(
        [sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(4)"],
        name="broken",
        log_path=tmp_path / "broken.log",
    ).start()
    try:
        with pytest.raises(ServiceStartError, match=r"(?s)exited with 4.*boom: bad config"):
            process.wait_ready(f"127.0.0.1:{free_port()}", timeout=20)
        assert process.returncode == 4
    finally:
        process.stop()


def test_wait_ready_times_out_while_not_serving(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    with ServiceProcess(
        health_stub_argv(address, "--delay", "30"), log_path=tmp_path / "slow.log"
    ) as process:
        started = time.monotonic()
        with pytest.raises(ServiceStartError, match=r"(?s)NOT_SERVING.*listening on"):
            process.wait_ready(address, timeout=1.5)
        assert time.monotonic() - started < 10
    assert process.returncode == 0


def test_a_process_gets_only_its_environment_when_it_does_not_inherit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``inherit_environment=False``: ``env`` is the whole environment (what the local Triton
    passes, having removed ``PYTHONHOME`` from its own); by default it is merged over ours."""
    show = [sys.executable, "-c", "import json, os; print(json.dumps(sorted(os.environ)))"]
    monkeypatch.setenv("HEVLAYER_TEST_INHERITED", "1")
    alone = ServiceProcess(
        show, env={"ONLY": "1"}, inherit_environment=False, log_path=tmp_path / "alone.log"
    ).start()
    merged = ServiceProcess(show, env={"ONLY": "1"}, log_path=tmp_path / "merged.log").start()
    assert alone.wait(timeout=20) == 0
    assert merged.wait(timeout=20) == 0
    # CPython may add LC_CTYPE when it coerces the C locale.
    assert set(json.loads(alone.log_path.read_text())) - {"LC_CTYPE"} == {"ONLY"}
    assert {"ONLY", "HEVLAYER_TEST_INHERITED"} <= set(json.loads(merged.log_path.read_text()))
    alone.stop()
    merged.stop()


def test_console_script_names_resolve_next_to_the_interpreter(tmp_path: Path) -> None:
    with pytest.raises(DevstackError, match="no-such-hevlayer-script"):
        ServiceProcess("no-such-hevlayer-script", log_path=tmp_path / "x.log").start()
    interpreter = Path(sys.executable)
    python = ServiceProcess(interpreter.name, log_path=tmp_path / "py.log").start()
    assert python.argv == [str(interpreter.parent / interpreter.name)]
    assert python.wait(timeout=20) == 0  # stdin is /dev/null: the REPL exits at once
    python.stop()


def test_service_factory_passes_env_and_addresses(service_factory: ServiceFactory) -> None:
    first = service_factory(health_stub_argv(), name="first", env={"S3_BUCKET": "b"})
    second = service_factory(health_stub_argv(), name="second")
    assert first.grpc_address is not None
    assert second.grpc_address is not None
    assert first.grpc_address != second.grpc_address
    assert health_status(first.grpc_address) == "SERVING"
    assert f"HEVLAYER_GRPC_ADDRESS={first.grpc_address}" in first.log_tail()
    assert "S3_BUCKET=b" in first.log_tail()


# -- the whole stack ----------------------------------------------------------------


def test_up_once_with_stand_in_services(scratch_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    http_port = free_port()
    with socket.socket() as occupied:
        occupied.bind(("127.0.0.1", 0))
        occupied.listen()
        taken_port = occupied.getsockname()[1]
        services = (
            ServiceSpec("claimer", tuple(health_stub_argv()), database=True, s3=True),
            ServiceSpec(
                "gateway",
                tuple(health_stub_argv()),
                grpc_port=taken_port,
                http_port=http_port,
                s3=True,
                depends_on=("claimer",),
                public=True,
            ),
        )
        data_dir = scratch_dir / ".hevlayer"
        assert up(data_dir, once=True, services=services) == 0
    out = capsys.readouterr().out
    gateway_line = next(line for line in out.splitlines() if line.startswith("gateway: "))
    gateway_port = int(gateway_line.rsplit(":", 1)[1])
    assert gateway_port != taken_port, "a taken preferred port falls back to a free one"
    assert f"grpcurl -plaintext 127.0.0.1:{gateway_port} list" in out
    assert f"127.0.0.1:{http_port}" in out, "a free preferred port is used"
    claimer_log = (data_dir / "logs" / "claimer.log").read_text()
    gateway_log = (data_dir / "logs" / "gateway.log").read_text()
    assert "DATABASE_URL=postgresql://hevlayer:hevlayer@127.0.0.1:" in claimer_log
    assert "HEVLAYER_LOG_FORMAT=json" in claimer_log
    assert "S3_BUCKET=hevlayer" in claimer_log
    assert "S3_ENDPOINT_URL=http://127.0.0.1:" in gateway_log
    assert "CLAIMER_ADDRESS=127.0.0.1:" in gateway_log
    assert "DATABASE_URL" not in gateway_log
    assert "stopping gracefully" in gateway_log
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    assert (data_dir / "logs" / "postgres.log").exists()
    assert (data_dir / "logs" / "s3.log").exists()
    # A second run reuses the persistent cluster and S3 data.
    assert up(data_dir, once=True, services=services[:1]) == 0
    assert "claimer" in capsys.readouterr().out


def test_up_reports_a_service_that_fails_to_start(
    scratch_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    services = (
        ServiceSpec(
            "broken",
            (sys.executable, "-c", "import sys; print('cannot start'); sys.exit(2)"),
        ),
    )
    assert up(scratch_dir / "stack", once=True, services=services) == 1
    assert "cannot start" in capsys.readouterr().err


@pytest.mark.skipif(
    importlib.util.find_spec("hevlayer.claimer.main") is None
    or importlib.util.find_spec("hevlayer.gateway.main") is None,
    reason="the claimer and gateway services are not written yet",
)
def test_hevlayer_devstack_up_once_with_the_real_services(scratch_dir: Path) -> None:
    script = Path(sys.executable).parent / "hevlayer-devstack"
    result = subprocess.run(
        [str(script), "up", "--data-dir", str(scratch_dir / ".hevlayer"), "--once"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gateway: 127.0.0.1:" in result.stdout
