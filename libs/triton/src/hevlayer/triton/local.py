"""A real NVIDIA Triton server on this machine's CPU, for development and tests.

The ``nvidia-pytriton`` wheel ships ``tritonserver`` 2.51 with the Python
backend only (and one backend stub per Python version); this module runs that
binary directly on a model repository it writes, without PyTriton's proxy:
one model (:mod:`hevlayer.triton.python_model`) tokenizes, encodes
with onnxruntime, pools and normalizes, with the same ``TEXT`` → ``EMBEDDING``
interface as the GPU ensemble in ``deploy/triton``.

What it takes to run that binary here (see docs/embedding.md):

* the stub matching the running Python's ``major.minor`` is copied into
  ``<workdir>/backends/python/triton_python_backend_stub``;
* ``LD_LIBRARY_PATH`` holds the running Python's ``LIBDIR`` first (the stub
  links ``libpython3.X.so``; with another build of the same minor version the
  stub dies in ``multiprocessing``), then ``nvidia_pytriton.libs``;
* ``PATH`` starts with the running Python's ``bin`` directory: the stub takes
  its ``sys.path`` (the venv's site-packages, hence onnxruntime, tokenizers and
  hevlayer) from the ``python3`` it finds there;
* NumPy below 2 in that environment: the stub's pybind11 reads NumPy 1 array
  descriptors, and with NumPy 2 it garbles every tensor it converts (BYTES
  inputs crash the stub, FP32 outputs come back empty);
* a unique ``shm-region-prefix-name`` per server, so several servers can run
  side by side.

Use :class:`LocalTriton` from Python (tests, devstack) or the
``hevlayer-triton-local`` console script.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc

from hevlayer.common.processes import log_tail
from hevlayer.devstack.ports import free_port
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.triton.model_files import ModelFiles, RuntimeOptions, minilm_files
from hevlayer.triton.readiness import ReadinessProbe, tls_credentials

DEFAULT_MODEL_NAME = "minilm"
DEFAULT_GRPC_PORT = 8001
_MODEL_FILE = Path(__file__).with_name("python_model.py")


@dataclass(frozen=True)
class TritonTLS:
    """TLS on a :class:`LocalTriton`'s gRPC endpoint (tritonserver's ``--grpc-use-ssl`` flags).

    ``cert``/``key``: the server's PEM certificate chain and key; ``ca``: the CA that
    signed it (what :meth:`LocalTriton.wait_ready` checks it against) and, with
    ``mutual``, the CA every client certificate must come from
    (``--grpc-use-ssl-mutual``, ``--grpc-root-cert``). Under mutual TLS,
    ``client_cert``/``client_key`` are what :meth:`LocalTriton.wait_ready` presents."""

    cert: Path
    key: Path
    ca: Path
    mutual: bool = False
    client_cert: Path | None = None
    client_key: Path | None = None

    def server_args(self) -> list[str]:
        """The tritonserver flags."""
        args = [
            f"--grpc-server-cert={self.cert}",
            f"--grpc-server-key={self.key}",
            f"--grpc-root-cert={self.ca}",
        ]
        if self.mutual:
            return [*args, "--grpc-use-ssl-mutual=true"]
        return [*args, "--grpc-use-ssl=true"]

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """What :meth:`LocalTriton.wait_ready` reaches the server with."""
        if self.mutual and (self.client_cert is None or self.client_key is None):
            raise TritonStartError(
                "TritonTLS: mutual TLS needs client_cert and client_key to probe readiness"
            )
        if self.mutual:
            return tls_credentials(self.ca, self.client_cert, self.client_key)
        return tls_credentials(self.ca)


class TritonStartError(RuntimeError):
    """The server could not be started, or did not become ready (log tail included)."""


@dataclass(frozen=True)
class TritonDistribution:
    """The tritonserver binary and libraries that the nvidia-pytriton wheel installed."""

    binary: Path
    backend_library: Path
    backend_utils: Path
    stub: Path
    libs: Path

    @classmethod
    def find(cls) -> TritonDistribution:
        """Locate the files in the installed wheel (without importing pytriton)."""
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise TritonStartError("nvidia-pytriton is not installed (hevlayer-triton needs it: uv sync)")
        root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        found = cls(
            binary=root / "bin" / "tritonserver",
            backend_library=root / "backends" / "python" / "libtriton_python.so",
            backend_utils=root / "backends" / "python" / "triton_python_backend_utils.py",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
            libs=root.parent.parent / "nvidia_pytriton.libs",
        )
        for path in (found.binary, found.backend_library, found.backend_utils, found.stub, found.libs):
            if not path.exists():
                raise TritonStartError(f"{path} is missing (no Triton stub for Python {version}?)")
        return found


@dataclass(frozen=True)
class LocalModel:
    """The served model and how Triton and onnxruntime run it."""

    name: str = DEFAULT_MODEL_NAME
    files: ModelFiles = field(default_factory=minilm_files)
    max_batch_size: int = 64
    instances: int = 1
    queue_delay_us: int = 2000
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    input_name: str = "TEXT"
    output_name: str = "EMBEDDING"

    def config_pbtxt(self) -> str:
        """The model's config.pbtxt (Triton's protobuf text format)."""
        params = {
            "onnx_path": str(self.files.onnx_path),
            "tokenizer_path": str(self.files.tokenizer_path),
            "dimension": str(self.files.dimension),
            "max_length": str(self.files.max_length),
            "onnx_sha256": self.files.onnx_sha256 or "",
            "tokenizer_sha256": self.files.tokenizer_sha256 or "",
            "intra_op_threads": str(self.runtime.intra_op_threads),
            "allow_spinning": "true" if self.runtime.allow_spinning else "false",
            "max_batch_tokens": str(self.runtime.max_batch_tokens),
            "parallel_runs": str(self.runtime.parallel_runs),
            "fuse_graph": "true" if self.runtime.fuse_graph else "false",
            "normalized": "true",
        }
        parameters = "\n".join(
            f"parameters: {{ key: {json.dumps(k)} value: {{ string_value: {json.dumps(v)} }} }}"
            for k, v in params.items()
        )
        return f"""name: {json.dumps(self.name)}
backend: "python"
max_batch_size: {self.max_batch_size}
input [ {{ name: {json.dumps(self.input_name)} data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: {json.dumps(self.output_name)} data_type: TYPE_FP32 dims: [ {self.files.dimension} ] }} ]
instance_group [ {{ kind: KIND_CPU count: {self.instances} }} ]
dynamic_batching {{ max_queue_delay_microseconds: {self.queue_delay_us} }}
{parameters}
"""


def write_model_repository(directory: Path, models: list[LocalModel]) -> Path:
    """Write ``<directory>/<name>/{config.pbtxt,1/model.py}`` for each model."""
    for model in models:
        version_dir = directory / model.name / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        (directory / model.name / "config.pbtxt").write_text(model.config_pbtxt())
        shutil.copyfile(_MODEL_FILE, version_dir / "model.py")
    return directory


def _python_libdir() -> str:
    libdir = sysconfig.get_config_var("LIBDIR")
    return str(libdir) if libdir else ""


class LocalTriton:
    """One ``tritonserver`` process serving :class:`LocalModel` s on loopback.

    ``grpc_port`` 0 picks a free port. ``model_repository`` serves an existing
    repository (its Python models must be importable here) instead of writing
    one from ``models``. ``tls``: TLS or mutual TLS on the gRPC endpoint. The
    process is the dev stack's :class:`~hevlayer.devstack.processes.ServiceProcess`: its own
    process group (the backend stubs included), logging to ``<workdir>/tritonserver.log``,
    killed at exit. ``die_with_parent``: the kernel kills ``tritonserver`` when the process that
    started it dies, even by SIGKILL (Linux; what ``hevlayer-triton-local`` asks for, so that a
    launcher killed under a supervisor leaves no server holding its port).
    """

    def __init__(
        self,
        models: list[LocalModel] | None = None,
        *,
        grpc_port: int = 0,
        http_port: int | None = None,
        host: str = "127.0.0.1",
        workdir: Path | None = None,
        model_repository: Path | None = None,
        log_verbose: int = 0,
        tls: TritonTLS | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.models = models if models is not None else [LocalModel()]
        self.die_with_parent = die_with_parent
        self.tls = tls
        self.host = host
        self.grpc_port = grpc_port or free_port(host)
        self.http_port = http_port
        self._own_workdir = workdir is None
        self.workdir = (
            Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="hevlayer-triton-"))
        )
        self.model_repository = model_repository
        self.log_verbose = log_verbose
        self.shm_prefix = f"hevlayer_{os.getpid()}_{secrets.token_hex(4)}_"
        self._process: ServiceProcess | None = None

    @property
    def url(self) -> str:
        """``host:port`` of the gRPC endpoint (what tritonclient.grpc takes)."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "tritonserver.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of the server (prepares the backend directory)."""
        dist = TritonDistribution.find()
        backends = self.workdir / "backends"
        python_backend = backends / "python"
        python_backend.mkdir(parents=True, exist_ok=True)
        for source, name in (
            (dist.backend_library, "libtriton_python.so"),
            (dist.backend_utils, "triton_python_backend_utils.py"),
            (dist.stub, "triton_python_backend_stub"),
        ):
            target = python_backend / name
            if not target.exists():
                shutil.copy2(source, target)
        repository = self.model_repository or write_model_repository(self.workdir / "models", self.models)
        argv = [
            str(dist.binary),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=none",
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--exit-timeout-secs=5",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=false",
            f"--log-verbose={self.log_verbose}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        if self.tls is not None:
            argv += self.tls.server_args()
        if self.http_port is None:
            argv.append("--allow-http=false")
        else:
            argv += [f"--http-address={self.host}", f"--http-port={self.http_port or free_port(self.host)}"]
        env = dict(os.environ)
        libraries = [_python_libdir(), str(dist.libs), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in libraries if p)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        env.pop("PYTHONHOME", None)
        return argv, env

    def start(self) -> Self:
        """Start the server (returns at once; see :meth:`wait_ready`)."""
        if self._process is not None:
            raise TritonStartError(f"tritonserver already started (pid {self._process.pid})")
        argv, env = self.command()
        self._process = ServiceProcess(
            argv,
            name="tritonserver",
            env=env,
            inherit_environment=False,
            log_path=self.log_path,
            cwd=self.workdir,
            die_with_parent=self.die_with_parent,
        ).start()
        return self

    def wait_ready(self, timeout: float = 120.0) -> Self:
        """Block until every model is ready; TritonStartError with the log tail otherwise."""
        process = self._process
        if process is None:
            raise TritonStartError("tritonserver has not been started")
        deadline = time.monotonic() + timeout
        names = [m.name for m in self.models] if self.model_repository is None else []
        client = ReadinessProbe(self.url, self.tls.channel_credentials() if self.tls is not None else None)
        try:
            while True:
                if not process.running:
                    raise TritonStartError(
                        f"tritonserver exited with {process.returncode} before it was ready\n"
                        f"--- {self.log_path} ---\n{self.log_tail()}"
                    )
                if client.server_ready(timeout=1.0) and all(
                    client.model_ready(name, timeout=1.0) for name in names
                ):
                    return self
                if time.monotonic() > deadline:
                    raise TritonStartError(
                        f"tritonserver (pid {process.pid}) not ready on {self.url} after {timeout:.0f}s\n"
                        f"--- {self.log_path} ---\n{self.log_tail()}"
                    )
                time.sleep(0.1)
        finally:
            client.close()

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM the server's process group, SIGKILL it after ``grace`` seconds."""
        return self._end(grace)

    def kill(self) -> int | None:
        """SIGKILL the server's process group at once (an outage, for fault tests)."""
        return self._end(0.0)

    def _end(self, grace: float) -> int | None:
        process = self._process
        if process is None:
            return None
        code = process.stop(grace) if grace > 0 else process.kill()
        self._process = None
        for path in glob.glob(f"/dev/shm/{self.shm_prefix}*"):
            with contextlib.suppress(OSError):
                os.unlink(path)
        return code

    def cleanup(self) -> None:
        """Stop the server and remove the working directory if this object made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self, timeout: float = 120.0) -> Self:
        """Start again on the same ports (after :meth:`stop` or :meth:`kill`)."""
        self.stop()
        self.shm_prefix = f"hevlayer_{os.getpid()}_{secrets.token_hex(4)}_"
        return self.start().wait_ready(timeout)

    def __enter__(self) -> Self:
        return self.start().wait_ready()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


def main(argv: list[str] | None = None) -> None:
    """``hevlayer-triton-local``: serve the embedding model on a local Triton until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="hevlayer-triton-local", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT, help="gRPC port (0: any)")
    parser.add_argument("--http-port", type=int, default=None, help="also serve HTTP/REST on this port")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="name of the served model")
    parser.add_argument("--max-batch-size", type=int, default=64, help="the model's max_batch_size")
    parser.add_argument("--instances", type=int, default=1, help="model instances (stub processes)")
    parser.add_argument(
        "--threads", type=int, default=0, help="onnxruntime threads per run (0: the CPUs / --parallel-runs)"
    )
    parser.add_argument(
        "--parallel-runs", type=int, default=0, help="encoder runs of a batch at once (0: one per CPU)"
    )
    parser.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batching queue delay")
    parser.add_argument("--allow-spinning", action="store_true", help="let onnxruntime threads spin")
    parser.add_argument(
        "--no-fuse-graph",
        action="store_true",
        help="run the encoder's graph as the file has it (default: attention and GELU fused)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="working directory (default: a temp dir)")
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
    args = parser.parse_args(argv)
    model = LocalModel(
        name=args.model_name,
        max_batch_size=args.max_batch_size,
        instances=args.instances,
        queue_delay_us=args.queue_delay_us,
        runtime=RuntimeOptions(
            intra_op_threads=args.threads,
            allow_spinning=args.allow_spinning,
            parallel_runs=args.parallel_runs,
            fuse_graph=not args.no_fuse_graph,
        ),
    )
    server = LocalTriton(
        [model],
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        host=args.host,
        workdir=args.workdir,
        log_verbose=args.log_verbose,
        die_with_parent=True,
    )
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start().wait_ready()
        print(
            f"Triton serving {model.name!r} ({model.files.dimension} dims) on {server.url} (gRPC); "
            f"EMBEDDER_TRITON_URL={server.url}; log: {server.log_path}",
            flush=True,
        )
        while not stop and server.running:
            time.sleep(0.2)
        if not stop:
            print(f"tritonserver exited\n{server.log_tail()}", file=sys.stderr)
            raise SystemExit(1)
    except TritonStartError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
