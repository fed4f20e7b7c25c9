"""A gRPC StagingService that answers UNAVAILABLE a given number of times, then stages.

It stays a fake for one reason: the real gateway cannot be made to refuse a stream on demand,
and the summarizer's retry of a staging outage is what its test checks. Every other summarizer
test stages into the live suite's real gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from grpc import aio

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.staging.v1 import staging_pb2

SERVICE = staging_pb2.DESCRIPTOR.services_by_name["StagingService"].full_name


class StagingOutage:
    """StageDocuments refused UNAVAILABLE ``unavailable`` times, then each document staged (and
    kept in :attr:`documents`); every other method of the service UNIMPLEMENTED."""

    def __init__(self, unavailable: int = 0) -> None:
        self.unavailable = unavailable
        self.documents: dict[str, document_pb2.Document] = {}
        self.port = 0
        self._server: aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> StagingOutage:
        self._server = aio.server()
        handler = grpc.stream_stream_rpc_method_handler(
            self.stage_documents,
            request_deserializer=staging_pb2.StageDocumentsRequest.FromString,
            response_serializer=staging_pb2.StageDocumentsResponse.SerializeToString,
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"StageDocuments": handler}),)
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    async def stage_documents(
        self,
        request_iterator: AsyncIterator[staging_pb2.StageDocumentsRequest],
        context: aio.ServicerContext[staging_pb2.StageDocumentsRequest, staging_pb2.StageDocumentsResponse],
    ) -> AsyncIterator[staging_pb2.StageDocumentsResponse]:
        if self.unavailable > 0:
            self.unavailable -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted outage")
        async for request in request_iterator:
            results = []
            for document in request.documents:
                self.documents[document.id] = document
                results.append(
                    staging_pb2.StageResult(
                        document_id=document.id,
                        outcome=staging_pb2.STAGE_OUTCOME_STAGED,
                        fencing_token=len(self.documents),
                        chunk_count=len(document.chunks),
                    )
                )
            yield staging_pb2.StageDocumentsResponse(results=results)
