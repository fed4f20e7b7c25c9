"""A local PostgreSQL server run from the machine's own binaries.

``PostgresServer`` runs ``initdb`` (once) and ``pg_ctl`` for a data directory
that is either a throwaway temporary directory (tests) or a persistent one
(``make run`` keeps ``.hevlayer/postgres``; an existing cluster is reused).

PostgreSQL refuses to run as root. When this process is root, an unprivileged
system user ``hevlayer-pg`` is created (once) and the server runs as that
user via ``runuser``; the data directory is owned by it.

The server listens on 127.0.0.1 only (its unix socket lives in the data
directory). The bootstrap superuser is ``hevlayer`` with password
``hevlayer``; local socket connections are trusted, TCP ones use
scram-sha-256, so the DSN's credentials are checked for real.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from hevlayer.common.processes import log_tail
from hevlayer.devstack.errors import DevstackError, ServerNotFoundError
from hevlayer.devstack.lifecycle import Lifecycle
from hevlayer.devstack.ports import LOOPBACK, free_port, port_is_free

SYSTEM_USER = "hevlayer-pg"
"""The unprivileged user that runs PostgreSQL when this process is root."""

DEFAULT_USER = "hevlayer"
DEFAULT_PASSWORD = "hevlayer"
DEFAULT_DATABASE = "hevlayer"

BASE_SETTINGS: Mapping[str, str] = {"random_page_cost": "1.1", "max_connections": "200"}
"""Settings every server gets (the claim queries are planned for SSD-like costs)."""

TEST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
"""Durability off: for throwaway test clusters only."""

CONF_FILE = "hevlayer.devstack.conf"
_INCLUDE_LINE = f"include_if_exists = '{CONF_FILE}'"
_REQUIRED_TOOLS = ("initdb", "pg_ctl", "postgres")
# A unix socket path may hold at most 107 bytes; ".s.PGSQL.65535.lock" is 19.
_MAX_SOCKET_DIR = 80

SettingValue = str | int | float | bool


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        proc_stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return proc_stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _has_tools(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in _REQUIRED_TOOLS)


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def find_postgres_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Looked for in order: ``$HEVLAYER_PG_BINDIR``; the directory of ``pg_ctl``
    on PATH (symlinks resolved); ``/usr/lib/postgresql/*/bin``, newest first;
    the binaries of the ``pgserver`` wheel if it is installed.
    """
    override = os.environ.get("HEVLAYER_PG_BINDIR")
    if override:
        bindir = Path(override)
        if _has_tools(bindir):
            return bindir
        raise ServerNotFoundError(f"HEVLAYER_PG_BINDIR={override} lacks {', '.join(_REQUIRED_TOOLS)}")
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True))
    with contextlib.suppress(ImportError):
        import pgserver  # type: ignore[import-not-found,unused-ignore]

        candidates.append(Path(pgserver.__file__).parent / "pginstall" / "bin")
    for bindir in candidates:
        if _has_tools(bindir):
            return bindir
    raise ServerNotFoundError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH or "
        "under /usr/lib/postgresql/*/bin; install them with `apt-get install postgresql` "
        "(or set HEVLAYER_PG_BINDIR)"
    )


def ensure_system_user(name: str = SYSTEM_USER) -> pwd.struct_passwd:
    """The unprivileged system user ``name``, created with ``useradd`` if missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [
            useradd,
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:  # a concurrent run may have created it first
        return pwd.getpwnam(name)
    except KeyError:
        raise DevstackError(
            f"could not create the system user {name!r} to run PostgreSQL as: "
            f"{result.stderr.strip() or result.returncode}"
        ) from None


def _ensure_traversable(path: Path, user: pwd.struct_passwd) -> None:
    """Give ``user`` search permission on every parent of ``path`` that lacks it."""
    for parent in reversed(path.parents):
        info = parent.stat()
        mode = info.st_mode
        if info.st_uid == user.pw_uid and mode & stat.S_IXUSR:
            continue
        if info.st_gid == user.pw_gid and mode & stat.S_IXGRP:
            continue
        if mode & stat.S_IXOTH:
            continue
        os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)
        print(
            f"hevlayer.devstack: added o+x to {parent} so that {user.pw_name} can reach {path}",
            file=sys.stderr,
        )


def _conf_value(value: SettingValue) -> str:
    text = ("on" if value else "off") if isinstance(value, bool) else str(value)
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class PostgresServer(Lifecycle):
    """A PostgreSQL server on 127.0.0.1 for development and tests.

    ``data_dir=None`` makes a throwaway cluster in a temporary directory that
    ``stop()`` removes; a given ``data_dir`` is persistent and an existing
    cluster in it is reused. ``settings`` are extra server settings
    (``{"fsync": "off"}``) on top of ``BASE_SETTINGS``. ``port=None`` picks a
    free port.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        settings: Mapping[str, SettingValue] | None = None,
        user: str = DEFAULT_USER,
        password: str = DEFAULT_PASSWORD,
        database: str = DEFAULT_DATABASE,
        log_path: str | os.PathLike[str] | None = None,
        bindir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self._temp_root: Path | None = None
        if data_dir is None:
            self._temp_root = Path(tempfile.mkdtemp(prefix="hevlayer-pg-"))
            self._data_dir = self._temp_root / "data"
        else:
            self._data_dir = Path(data_dir).absolute()
        self._port_given = port is not None
        self._port = port if port is not None else free_port()
        self._settings: dict[str, SettingValue] = {**BASE_SETTINGS, **(settings or {})}
        self.user = user
        self.password = password
        self.database = database
        self._log_path = Path(log_path).absolute() if log_path is not None else None
        self._bindir = Path(bindir) if bindir is not None else None
        self.startup_timeout = startup_timeout
        self._socket_dir: Path | None = None
        self._own_socket_dir = False
        self._run_as: pwd.struct_passwd | None = None
        self._started = False

    # -- properties ---------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def dsn(self) -> str:
        """``postgresql://hevlayer:hevlayer@127.0.0.1:PORT/hevlayer``."""
        return self.dsn_for(self.database)

    @property
    def log_path(self) -> Path:
        return self._log_path if self._log_path is not None else self._data_dir / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        if self._socket_dir is None:
            raise DevstackError("the server has not been started")
        return self._socket_dir

    @property
    def running(self) -> bool:
        return self._started

    def dsn_for(self, database: str) -> str:
        """The TCP DSN of another database on this server."""
        return f"postgresql://{self.user}:{self.password}@{LOOPBACK}:{self._port}/{database}"

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> Self:
        """initdb if needed, start the server, and create the database if missing."""
        if self._started:
            return self
        bindir = self._bindir or find_postgres_bindir()
        self._bindir = bindir
        self._run_as = ensure_system_user() if os.geteuid() == 0 else None
        try:
            self._prepare_dirs()
            if not (self._data_dir / "PG_VERSION").exists():
                self._initdb()
            self._ensure_include()
            self._stop_stale_server()
            if not self._port_given and not port_is_free(self._port):
                self._port = free_port()
            self._write_conf()
            self._start_server()
            self._started = True
            atexit.register(self.stop)
            self._ensure_database()
        except BaseException:
            if self._started:
                self.stop()
            else:
                with contextlib.suppress(Exception):
                    self._stop_stale_server()
                self._cleanup()
            raise
        return self

    @property
    def postmaster_pid(self) -> int | None:
        """The pid in ``postmaster.pid``; None when there is no such file."""
        try:
            return int((self._data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def server_alive(self) -> bool:
        """Whether the postmaster of this cluster is running (a killed one, even a zombie
        nobody reaped, is not)."""
        pid = self.postmaster_pid
        return pid is not None and process_alive(pid)

    def restart(self) -> Self:
        """Start again on the same port after the server died (a crash, a kill -9).

        The dead postmaster's lock file is removed first: its pid may still look alive as an
        unreaped zombie, which would make both ``pg_ctl`` and the new postmaster refuse."""
        if self._started:
            self._started = False
            atexit.unregister(self.stop)
        if not self.server_alive():
            (self._data_dir / "postmaster.pid").unlink(missing_ok=True)
        self._port_given = True
        return self.start()

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``); safe to call more than once."""
        if not self._started:
            return
        self._started = False
        atexit.unregister(self.stop)
        result = self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60", check=False)
        if result.returncode != 0 and self._is_running():
            print(
                f"hevlayer.devstack: pg_ctl stop failed for {self._data_dir}: "
                f"{result.stdout.strip()} {result.stderr.strip()}",
                file=sys.stderr,
            )
        self._cleanup()

    # -- SQL through psql ------------------------------------------------------------

    def execute(self, sql: str, database: str | None = None) -> str:
        """Run ``sql`` with ``psql`` over the unix socket as the superuser.

        Returns psql's unaligned, tuples-only output (``"1"`` for
        ``SELECT 1``). Raises ``DevstackError`` on an SQL error.
        """
        if not self._started:
            raise DevstackError("the server has not been started")
        psql = self._tool("psql")
        result = subprocess.run(
            [
                psql,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self._port),
                "-U",
                self.user,
                "-d",
                database or self.database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
            env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
        )
        if result.returncode != 0:
            raise DevstackError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name`` (owned by the superuser); returns its DSN."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"not a plain lower-case database name: {name!r}")
        self.execute(f'CREATE DATABASE "{name}"', database="postgres")
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE IF EXISTS name WITH (FORCE)``."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"not a plain lower-case database name: {name!r}")
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', database="postgres")

    # -- internals ------------------------------------------------------------------

    def _tool(self, name: str) -> str:
        assert self._bindir is not None
        candidate = self._bindir / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
        found = shutil.which(name)
        if found is None:
            raise ServerNotFoundError(f"{name} not found in {self._bindir} or on PATH")
        return found

    def _as_server_user(self, argv: Sequence[str]) -> list[str]:
        if self._run_as is None:
            return list(argv)
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", self._run_as.pw_name, "--", *argv]

    def _run(self, argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self._as_server_user(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
        )
        if check and result.returncode != 0:
            raise DevstackError(
                f"{Path(argv[0]).name} failed ({result.returncode}) for {self._data_dir}:\n"
                f"{result.stdout.strip()}\n{result.stderr.strip()}".rstrip()
            )
        return result

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([self._tool("pg_ctl"), "-D", str(self._data_dir), *args], check=check)

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)

    def _prepare_dirs(self) -> None:
        if self._temp_root is not None:
            self._temp_root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._chown(self._temp_root)
        self._data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._data_dir.mkdir(mode=0o700, exist_ok=True)
        self._chown(self._data_dir)
        os.chmod(self._data_dir, 0o700)
        if self._run_as is not None:
            _ensure_traversable(self._data_dir, self._run_as)
        if len(str(self._data_dir)) <= _MAX_SOCKET_DIR:
            self._socket_dir = self._data_dir
        else:  # too long for a unix socket path: use a short temporary directory
            self._socket_dir = Path(tempfile.mkdtemp(prefix="hvpg-"))
            self._own_socket_dir = True
            self._chown(self._socket_dir)

    def _initdb(self) -> None:
        # The password file must be readable by the server user (not a pipe of ours).
        pw_dir = Path(tempfile.mkdtemp(prefix="hvpg-pw-"))
        try:
            self._chown(pw_dir)
            pw_file = pw_dir / "pwfile"
            pw_file.write_text(self.password + "\n")
            self._chown(pw_file)
            argv = [
                self._tool("initdb"),
                "-D",
                str(self._data_dir),
                "-U",
                self.user,
                f"--pwfile={pw_file}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ]
            if self._temp_root is not None:
                argv.append("--no-sync")
            self._run(argv)
        finally:
            shutil.rmtree(pw_dir, ignore_errors=True)

    def _ensure_include(self) -> None:
        conf = self._data_dir / "postgresql.conf"
        text = conf.read_text()
        if _INCLUDE_LINE not in text:
            conf.write_text(
                text.rstrip("\n") + f"\n\n# Written by hevlayer.devstack on each start.\n{_INCLUDE_LINE}\n"
            )

    def _write_conf(self) -> None:
        assert self._socket_dir is not None
        settings: dict[str, SettingValue] = {
            "listen_addresses": LOOPBACK,
            "port": self._port,
            "unix_socket_directories": str(self._socket_dir),
            **self._settings,
        }
        lines = ["# Rewritten by hevlayer.devstack on every start; do not edit."]
        lines.extend(f"{key} = {_conf_value(value)}" for key, value in settings.items())
        path = self._data_dir / CONF_FILE
        path.write_text("\n".join(lines) + "\n")
        self._chown(path)

    def _is_running(self) -> bool:
        if not (self._data_dir / "postmaster.pid").exists():
            return False
        return self._pg_ctl("status", check=False).returncode == 0

    def _stop_stale_server(self) -> None:
        """A server left running on this data directory (a crashed run) is stopped."""
        if self._is_running():
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60", check=False)

    def _start_server(self) -> None:
        log = self.log_path
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()
        self._chown(log)
        result = self._pg_ctl(
            "start",
            "-w",
            "-t",
            str(int(self.startup_timeout)),
            "-l",
            str(log),
            check=False,
        )
        if result.returncode != 0:
            raise DevstackError(
                f"PostgreSQL did not start on port {self._port} ({self._data_dir}):\n"
                f"{result.stderr.strip()}\n--- {log} ---\n{log_tail(log)}"
            )

    def _ensure_database(self) -> None:
        exists = self.execute(
            f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'", database="postgres"
        )
        if exists != "1":
            self.execute(f'CREATE DATABASE "{self.database}"', database="postgres")

    def _cleanup(self) -> None:
        if self._own_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._own_socket_dir = False
        if self._temp_root is not None and not self._is_running():
            shutil.rmtree(self._temp_root, ignore_errors=True)
