"""gRPC adapters of the token store: TokenService (public, forwarded by the gateway,
admin only there) and TokenVerificationService (internal, the gateway's lookup)."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2
from grpc import aio

from hevlayer.api.auth.v1 import auth_pb2 as pb
from hevlayer.api.auth.v1 import auth_pb2_grpc
from hevlayer.api.claimer.v1 import token_verification_pb2 as vpb
from hevlayer.api.claimer.v1 import token_verification_pb2_grpc
from hevlayer.claimer.tokens import TokenRecord, TokenStore
from hevlayer.common.auth import ADMIN, READER, STAGER, WORKER
from hevlayer.common.errors import InvalidArgument

ROLE_VALUES: dict[str, int] = {
    ADMIN: pb.ROLE_ADMIN,
    STAGER: pb.ROLE_STAGER,
    WORKER: pb.ROLE_WORKER,
    READER: pb.ROLE_READER,
}
ROLE_NAMES: dict[int, str] = {value: name for name, value in ROLE_VALUES.items()}


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def token_to_proto(record: TokenRecord) -> pb.Token:
    """The API form of a stored token (never a secret or hash)."""
    token = pb.Token(
        id=record.id,
        name=record.name,
        role=ROLE_VALUES[record.role],  # type: ignore[arg-type]
        all_pipelines=record.all_pipelines,
        pipeline_ids=list(record.pipeline_ids),
        create_time=_timestamp(record.create_time),
    )
    if record.revoke_time is not None:
        token.revoke_time.CopyFrom(_timestamp(record.revoke_time))
    return token


class TokenServicer(auth_pb2_grpc.TokenServiceServicer):
    """TokenService on top of :class:`TokenStore`."""

    def __init__(self, store: TokenStore) -> None:
        self._store = store

    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: aio.ServicerContext
    ) -> pb.CreateTokenResponse:
        role = ROLE_NAMES.get(request.role)
        if role is None:
            raise InvalidArgument.field(
                "role", "must be one of ROLE_ADMIN, ROLE_STAGER, ROLE_WORKER, ROLE_READER"
            )
        record, secret = await self._store.create(
            request.name, role, request.all_pipelines, list(request.pipeline_ids)
        )
        return pb.CreateTokenResponse(token=token_to_proto(record), secret=secret)

    async def ListTokens(
        self, request: pb.ListTokensRequest, context: aio.ServicerContext
    ) -> pb.ListTokensResponse:
        records = await self._store.list(request.include_revoked)
        return pb.ListTokensResponse(tokens=[token_to_proto(r) for r in records])

    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: aio.ServicerContext
    ) -> pb.RevokeTokenResponse:
        return pb.RevokeTokenResponse(token=token_to_proto(await self._store.revoke(request.token_id)))


class TokenVerificationServicer(token_verification_pb2_grpc.TokenVerificationServiceServicer):
    """TokenVerificationService on top of :class:`TokenStore`."""

    def __init__(self, store: TokenStore) -> None:
        self._store = store

    async def VerifyToken(
        self, request: vpb.VerifyTokenRequest, context: aio.ServicerContext
    ) -> vpb.VerifyTokenResponse:
        record = await self._store.verify(request.token_hash)
        if record is None:
            return vpb.VerifyTokenResponse(found=False)
        return vpb.VerifyTokenResponse(found=True, token=token_to_proto(record))
