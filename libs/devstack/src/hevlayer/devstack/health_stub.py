"""A stand-in service: a gRPC server with only the health service.

Run it as ``python -m hevlayer.devstack.health_stub`` (``health_stub_argv()``)
wherever a test needs a process that behaves like a hevlayer service.

Listens on ``$HEVLAYER_GRPC_ADDRESS`` (or argv[1]) and reports SERVING after
``--delay`` seconds. On SIGTERM it prints "stopping gracefully", sets
NOT_SERVING, stops the server and exits 0. ``--child-pid-file PATH`` starts a
``sleep`` child first and writes its pid there (for process-group tests).
``--exit-after SECONDS`` exits with status 3 (a crashing service).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from concurrent import futures
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("address", nargs="?", default=os.environ.get("HEVLAYER_GRPC_ADDRESS"))
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--child-pid-file")
    parser.add_argument("--exit-after", type=float)
    args = parser.parse_args()
    if not args.address:
        print("no address", file=sys.stderr)
        return 2

    if args.child_pid_file:
        child = subprocess.Popen(["sleep", "300"])
        with open(args.child_pid_file, "w") as handle:
            handle.write(str(child.pid))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(args.address)
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    print(f"listening on {args.address}", flush=True)
    print(
        "env:",
        " ".join(
            f"{key}={value}"
            for key, value in sorted(os.environ.items())
            if key.startswith(("HEVLAYER_", "S3_", "DATABASE_")) or key.endswith("_ADDRESS")
        ),
        flush=True,
    )

    stopping = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    if not stopping.wait(timeout=args.delay):
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        print("serving", flush=True)
    if stopping.wait(timeout=args.exit_after):
        print("stopping gracefully", flush=True)
        servicer.enter_graceful_shutdown()
        server.stop(grace=2).wait()
        return 0
    print("crashing on purpose", flush=True)
    return 3


if __name__ == "__main__":
    raise SystemExit(main())
