"""TokenService: create, list and revoke API tokens (admin tokens only)."""

from __future__ import annotations

from collections.abc import Sequence

from grpc import aio

from hevlayer.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hevlayer.client._base import ServiceClient
from hevlayer.client.methods import TOKEN_SERVICE, method
from hevlayer.client.options import ClientOptions
from hevlayer.common.auth import ADMIN, READER, STAGER, WORKER

_CREATE = method(TOKEN_SERVICE, "CreateToken")
_LIST = method(TOKEN_SERVICE, "ListTokens")
_REVOKE = method(TOKEN_SERVICE, "RevokeToken")

ROLE_VALUES: dict[str, auth_pb2.Role.ValueType] = {
    ADMIN: auth_pb2.ROLE_ADMIN,
    STAGER: auth_pb2.ROLE_STAGER,
    WORKER: auth_pb2.ROLE_WORKER,
    READER: auth_pb2.ROLE_READER,
}
"""Role name → the API's Role value."""
ROLE_NAMES = {value: name for name, value in ROLE_VALUES.items()}


class TokensClient(ServiceClient):
    """Calls of TokenService."""

    def __init__(self, channel: aio.Channel, options: ClientOptions | None = None) -> None:
        super().__init__(channel, options)
        self._stub = auth_pb2_grpc.TokenServiceStub(channel)

    async def create(
        self,
        name: str,
        role: str,
        pipeline_ids: Sequence[str] | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[auth_pb2.Token, str]:
        """A new token of ``role`` for ``pipeline_ids`` (None: every pipeline) and its secret,
        which is shown only now."""
        if role not in ROLE_VALUES:
            raise ValueError(f"role: expected one of {', '.join(ROLE_VALUES)}, got {role!r}")
        request = auth_pb2.CreateTokenRequest(
            name=name,
            role=ROLE_VALUES[role],
            all_pipelines=pipeline_ids is None,
            pipeline_ids=list(pipeline_ids or ()),
        )
        response = await self._unary(_CREATE, self._stub.CreateToken, request, timeout)
        return response.token, response.secret

    async def list(
        self, *, include_revoked: bool = False, timeout: float | None = None
    ) -> list[auth_pb2.Token]:
        """Tokens, oldest first (never their secrets)."""
        request = auth_pb2.ListTokensRequest(include_revoked=include_revoked)
        response = await self._unary(_LIST, self._stub.ListTokens, request, timeout)
        return list(response.tokens)

    async def revoke(self, token_id: str, *, timeout: float | None = None) -> auth_pb2.Token:
        """Revoke the token ``token_id`` (NOT_FOUND if there is none)."""
        request = auth_pb2.RevokeTokenRequest(token_id=token_id)
        response = await self._unary(_REVOKE, self._stub.RevokeToken, request, timeout)
        token: auth_pb2.Token = response.token
        return token
