"""The gateway relays a client stream the claimer refuses early with the claimer's own status.

StreamLeases is forwarded to the claimer as bytes. When the claimer refuses the first
message while the gateway still relays the next one, grpc-aio's request consumer reported
INTERNAL "Internal error from Core" instead of the claimer's status about half the time
(grpc/grpc#36066); the forwarder sends the messages itself (hevlayer.client._requests).
Many calls through the live suite's gateway, so the old behaviour fails with near certainty.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from hevlayer.api.lease.v1 import lease_pb2, lease_pb2_grpc
from hevlayer.devstack.testing import LiveSuite

CALLS = 60


def _two_empty_opens() -> Iterator[lease_pb2.StreamLeasesRequest]:
    yield lease_pb2.StreamLeasesRequest(open=lease_pb2.StreamLeasesOpen())
    yield lease_pb2.StreamLeasesRequest(open=lease_pb2.StreamLeasesOpen())


def test_a_refused_stream_keeps_the_claimers_status(live_suite: LiveSuite) -> None:
    seen: dict[str, int] = {}
    with grpc.insecure_channel(live_suite.gateway) as channel:
        stub = lease_pb2_grpc.LeaseServiceStub(channel)
        for _ in range(CALLS):
            try:
                for _response in stub.StreamLeases(_two_empty_opens(), timeout=30):
                    pass
                code = "OK"
            except grpc.RpcError as error:
                code = f"{error.code().name}: {error.details()}"
            seen[code] = seen.get(code, 0) + 1
    assert len(seen) == 1, seen
    assert next(iter(seen)).startswith("INVALID_ARGUMENT: "), seen
