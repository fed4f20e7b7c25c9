"""A claimer process driven over gRPC with bare stubs, as the gateway drives it.

The internal-token check is off (``CLAIMER_AUTH=off``): these tests play the gateway; the
check itself is tested in tests/gateway/test_auth.py (a claimer refusing calls without the
secret). The fixtures ``claimer`` and ``channel`` (tests/claimer/conftest.py) start one per
test module.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from grpc import aio

from hevlayer.api.pipeline.v1 import pipeline_pb2 as ppb
from hevlayer.api.pipeline.v1 import pipeline_pb2_grpc
from hevlayer.devstack import ServiceProcess
from hevlayer.devstack.ports import free_port


class Claimer:
    def __init__(self, process: ServiceProcess, address: str, http: str) -> None:
        self.process = process
        self.address = address
        self.http = http


def start_bare_claimer(env: dict[str, str], tmp: Path) -> tuple[ServiceProcess, str, str]:
    address = f"127.0.0.1:{free_port()}"
    http = f"127.0.0.1:{free_port()}"
    process = ServiceProcess(
        "hevlayer-claimer",
        name="claimer",
        env={"HEVLAYER_GRPC_ADDRESS": address, "HEVLAYER_HTTP_ADDRESS": http, "CLAIMER_AUTH": "off", **env},
        log_path=tmp / f"claimer-{uuid.uuid4().hex[:6]}.log",
        grpc_address=address,
    ).start()
    return process, address, http


async def new_pipeline(channel: aio.Channel, backend: int = ppb.QUEUE_BACKEND_ROW) -> str:
    pid = f"g-{uuid.uuid4().hex[:10]}"
    await pipeline_pb2_grpc.PipelineServiceStub(channel).CreatePipeline(
        ppb.CreatePipelineRequest(pipeline=ppb.Pipeline(id=pid, queue_backend=backend))  # type: ignore[arg-type]
    )
    return pid
