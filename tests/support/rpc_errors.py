"""What a failed gRPC call carries in its ``google.rpc.Status`` details."""

from __future__ import annotations

from google.rpc import error_details_pb2
from grpc import aio

from hevlayer.common.errors import status_from_rpc_error


def violations(error: aio.AioRpcError) -> list[str]:
    """Field paths of the BadRequest detail of a failed call."""
    found: list[str] = []
    for detail in status_from_rpc_error(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.extend(v.field for v in bad.field_violations)
    return found


def reason(error: aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call ("" if it carries none)."""
    for detail in status_from_rpc_error(error).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""
