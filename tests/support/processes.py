"""Claimer and gateway processes on free ports, writing spans to a JSON-lines file."""

from __future__ import annotations

import uuid
from pathlib import Path

from hevlayer.devstack.ports import free_port
from hevlayer.devstack.processes import ServiceProcess


def start_claimer(
    database_url: str, tmp: Path, traces: Path, **extra: str
) -> tuple[ServiceProcess, str, str]:
    """Start a claimer process; return it with its gRPC and HTTP addresses."""
    grpc_address = f"127.0.0.1:{free_port()}"
    http_address = f"127.0.0.1:{free_port()}"
    proc = ServiceProcess(
        "hevlayer-claimer",
        name="claimer",
        env={
            "DATABASE_URL": database_url,
            "HEVLAYER_GRPC_ADDRESS": grpc_address,
            "HEVLAYER_HTTP_ADDRESS": http_address,
            "HEVLAYER_TRACES_EXPORTER": f"file:{traces}",
            "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "5",
            **extra,
        },
        log_path=tmp / f"claimer-{uuid.uuid4().hex[:6]}.log",
        grpc_address=grpc_address,
    ).start()
    return proc, grpc_address, http_address


def start_gateway(
    claimer_address: str, tmp: Path, traces: Path, **extra: str
) -> tuple[ServiceProcess, str, str]:
    """Start a gateway process in front of ``claimer_address`` (``extra`` env overrides; the
    Milvus Lite file and the chunk cache default to ``tmp``)."""
    grpc_address = f"127.0.0.1:{free_port()}"
    http_address = f"127.0.0.1:{free_port()}"
    suffix = uuid.uuid4().hex[:6]
    proc = ServiceProcess(
        "hevlayer-gateway",
        name="gateway",
        env={
            "CLAIMER_ADDRESS": claimer_address,
            "HEVLAYER_GRPC_ADDRESS": grpc_address,
            "HEVLAYER_HTTP_ADDRESS": http_address,
            "HEVLAYER_TRACES_EXPORTER": f"file:{traces}",
            "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "5",
            "GATEWAY_MILVUS_LITE_PATH": str(tmp / f"vectors-{suffix}.db"),
            "GATEWAY_CACHE_DIR": str(tmp / f"cache-{suffix}"),
            # Off unless a test turns it on (GATEWAY_AUTH="on" in ``extra``): the tests on these
            # stacks (foundation, gateway, cli) exercise staging, leases, sinks and errors with
            # bare stubs; tests/gateway/test_auth.py runs a gateway with it on.
            "GATEWAY_AUTH": "off",
            **extra,
        },
        log_path=tmp / f"gateway-{uuid.uuid4().hex[:6]}.log",
        grpc_address=grpc_address,
    ).start()
    return proc, grpc_address, http_address
