"""What the fault tests' stacks share: stopping the service processes a fixture started, and
writing one whole document's vectors through a gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType

from grpc import aio
from support.vectors import embed

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2 as ix
from hevlayer.api.index.v1 import index_pb2_grpc
from hevlayer.devstack.processes import ServiceProcess


class Processes:
    """The service processes a fixture started (``with Processes() as processes``): on exit they
    are stopped, the last started first; the log tail of any that had died is printed."""

    def __init__(self) -> None:
        self.started: list[ServiceProcess] = []

    def add(self, started: tuple[ServiceProcess, str, str]) -> tuple[ServiceProcess, str, str]:
        """Keep the process of ``start_claimer``'s or ``start_gateway``'s answer; that answer."""
        self.started.append(started[0])
        return started

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for process in reversed(self.started):
            if process.running:
                process.stop(grace=5)
            else:
                print(process.log_tail(60))


async def write_document(
    channel: aio.Channel,
    pipeline_id: str,
    worker: str,
    token: int,
    doc_id: str,
    chunks: list[document_pb2.Chunk],
    from_stage: str = "embedding",
) -> list[ix.WriteResult]:
    """Write the vectors of all ``chunks`` of ``doc_id`` (leased with fencing ``token``) in one
    WriteVectors message that ends the document; the call's results."""
    request = ix.WriteVectorsRequest(
        pipeline_id=pipeline_id,
        worker_id=worker,
        from_stage=from_stage,
        lease=document_pb2.LeaseRef(document_id=doc_id, fencing_token=token),
        vectors=[document_pb2.Vector(id=chunk.id, values=embed(chunk.text)) for chunk in chunks],
        end_of_document=True,
    )

    async def requests() -> AsyncIterator[ix.WriteVectorsRequest]:
        yield request

    response = await index_pb2_grpc.IndexServiceStub(channel).WriteVectors(requests())
    return list(response.results)
