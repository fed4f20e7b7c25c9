"""Authentication and authorization of every public call (docs/security.md).

One :class:`GatewayGuard` decides for both transports: the gRPC interceptor
(:class:`~hevlayer.common.guard.GuardInterceptor`) and the REST middleware
(:func:`rest_middleware`). A call needs an API token (``authorization: Bearer``)
whose role the method's entry of :data:`hevlayer.client.methods.ACCESS` allows,
and whose pipelines cover the pipeline the request names:

- no token, a malformed one, an unknown or a revoked one: UNAUTHENTICATED (401);
- a valid token without the role, or without the pipeline: PERMISSION_DENIED (403);
- a valid token over its role's rate limit (:mod:`hevlayer.gateway.ratelimit`):
  RESOURCE_EXHAUSTED with RetryInfo (429 with Retry-After);
- a method without an ACCESS entry, or an internal one: PERMISSION_DENIED, even for admin.

Messages name the token by its public id, never its secret. Tokens are verified
with the claimer (by SHA-256 hash) and remembered for GATEWAY_AUTH_CACHE_SECONDS,
so a revoked token stops working within that time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from grpc import aio

from hevlayer.api.auth.v1 import auth_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.client.methods import ACCESS, PIPELINE_SERVICE, TOKEN_SERVICE, Access
from hevlayer.common.auth import (
    ADMIN,
    AUTHORIZATION,
    READER,
    STAGER,
    WORKER,
    Principal,
    bearer,
    token_hash,
    token_id_of,
)
from hevlayer.common.errors import (
    InvalidArgument,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from hevlayer.common.guard import metadata_value
from hevlayer.gateway.ratelimit import RateLimiter

_ROLE_NAMES = {
    auth_pb2.ROLE_ADMIN: ADMIN,
    auth_pb2.ROLE_STAGER: STAGER,
    auth_pb2.ROLE_WORKER: WORKER,
    auth_pb2.ROLE_READER: READER,
}

LIST_PIPELINES = f"/{PIPELINE_SERVICE}/ListPipelines"
MAX_CACHED_TOKENS = 10_000

Verify = Callable[[bytes], Awaitable[auth_pb2.Token | None]]


def principal_of(token: auth_pb2.Token) -> Principal:
    """Who a verified token is."""
    return Principal(
        token_id=token.id,
        name=token.name,
        role=_ROLE_NAMES.get(token.role, ""),
        all_pipelines=token.all_pipelines,
        pipelines=frozenset(token.pipeline_ids),
    )


class TokenCache:
    """Verified tokens by hash, each remembered for ``ttl`` seconds (unknown ones too, so
    a flood of bad tokens does not become a flood of lookups); at most
    :data:`MAX_CACHED_TOKENS`, the oldest dropped first. Concurrent calls with one
    uncached token share one lookup."""

    def __init__(self, ttl: float, verify: Verify | None = None) -> None:
        self._verify = verify
        self._ttl = ttl
        self._entries: dict[bytes, tuple[float, Principal | None]] = {}
        self._inflight: dict[bytes, asyncio.Future[Principal | None]] = {}

    def bind(self, verify: Verify) -> None:
        """Set the lookup (the claimer's VerifyToken), once the gateway has its channel."""
        self._verify = verify

    async def principal(self, secret: str) -> Principal | None:
        """The principal of ``secret``; None if unknown or revoked."""
        if self._verify is None:
            raise Unavailable("the gateway is starting", retry_after=1.0)
        key = token_hash(secret)
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            token = await self._verify(key)
            principal = principal_of(token) if token is not None else None
            if self._ttl > 0:
                if len(self._entries) >= MAX_CACHED_TOKENS:
                    self._entries.pop(next(iter(self._entries)))
                self._entries[key] = (time.monotonic() + self._ttl, principal)
            future.set_result(principal)
            return principal
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, no "never retrieved" warning
            raise
        finally:
            del self._inflight[key]


def _message_class(method: str) -> type[Message]:
    service, _, name = method.lstrip("/").rpartition("/")
    found = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name)
    return message_factory.GetMessageClass(found.input_type)


def _field(message: Message, path: str) -> str:
    """The string at ``path`` (``a.b``) of ``message``; "" if a message on the way is unset."""
    *parents, leaf = path.split(".")
    for name in parents:
        if not message.HasField(name):
            return ""
        message = getattr(message, name)
    value: str = getattr(message, leaf)
    return value


class GatewayGuard:
    """The gateway's decision on each call (see the module docstring)."""

    def __init__(
        self, cache: TokenCache, access: Mapping[str, Access] = ACCESS, limiter: RateLimiter | None = None
    ) -> None:
        self.cache = cache
        self._access = access
        self.limiter = limiter
        self._classes: dict[str, type[Message]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``authorization`` value; UNAUTHENTICATED if there is none."""
        secret = bearer(authorization)
        if secret is None:
            raise Unauthenticated(
                "this call needs an API token: send 'authorization: Bearer <token>'",
                reason="TOKEN_MISSING",
            )
        principal = await self.cache.principal(secret) if token_id_of(secret) else None
        if principal is None:
            raise Unauthenticated("the API token is unknown or revoked", reason="TOKEN_INVALID")
        return principal

    def limit(self, principal: Principal, transport: str) -> None:
        """Count one call of ``principal`` against its token's rate limit (every authenticated
        call counts, a stream once at its start); RESOURCE_EXHAUSTED (reason RATE_LIMITED,
        RetryInfo) when over it. Nothing has run yet when it refuses."""
        if self.limiter is not None:
            self.limiter.check(principal, transport)

    def authorize(self, principal: Principal, method: str) -> Access:
        """The method's access entry if ``principal``'s role may call it; PERMISSION_DENIED if not."""
        access = self._access.get(method)
        if access is None or access.internal:
            raise PermissionDenied(f"{method} is not a public method", reason="METHOD_NOT_PUBLIC")
        if not principal.may(access.roles):
            allowed = ", ".join(sorted({ADMIN, *access.roles}))
            raise PermissionDenied(
                f"{principal.describe()} may not call {method} (roles allowed: {allowed})",
                reason="ROLE_NOT_ALLOWED",
            )
        if method.startswith(f"/{TOKEN_SERVICE}/") and not principal.all_pipelines:
            # A token of some pipelines must not mint (or revoke) tokens of others.
            raise PermissionDenied(
                f"{principal.describe()} may not call {method}: managing tokens needs a token "
                "for every pipeline",
                reason="PIPELINE_NOT_ALLOWED",
            )
        return access

    def check_pipeline(self, principal: Principal, method: str, pipeline_id: str, first: bool) -> None:
        """PERMISSION_DENIED unless ``principal`` covers ``pipeline_id``. A message naming no
        pipeline is let through only after the stream's first message was checked (the
        service itself refuses one without a pipeline)."""
        if principal.all_pipelines:
            return
        if not pipeline_id:
            if first:
                raise PermissionDenied(
                    f"{method}: the request names no pipeline, and {principal.describe()} "
                    "is limited to some pipelines",
                    reason="PIPELINE_NOT_ALLOWED",
                )
            return
        if not principal.covers(pipeline_id):
            raise PermissionDenied(
                f"{principal.describe()} may not act on pipeline {pipeline_id!r}",
                reason="PIPELINE_NOT_ALLOWED",
            )

    # -- the gRPC side (hevlayer.common.guard.Guard) -----------------------------------------

    async def admit(self, method: str, context: aio.ServicerContext) -> tuple[Principal, Access]:
        principal = await self.authenticate(metadata_value(context, AUTHORIZATION))
        self.limit(principal, "grpc")
        return principal, self.authorize(principal, method)

    async def admit_request(
        self, admitted: tuple[Principal, Access], method: str, request: Any, index: int
    ) -> None:
        principal, access = admitted
        if principal.all_pipelines or access.pipeline_field is None:
            return
        if isinstance(request, bytes):
            cls = self._classes.get(method)
            if cls is None:
                cls = self._classes[method] = _message_class(method)
            try:
                request = cls.FromString(request)
            except DecodeError:
                raise InvalidArgument("the request is not a valid protobuf message") from None
        self.check_pipeline(principal, method, _field(request, access.pipeline_field), index == 0)

    def filter_response(self, admitted: tuple[Principal, Access], method: str, response: Any) -> Any:
        principal, _ = admitted
        if method != LIST_PIPELINES or principal.all_pipelines:
            return response
        raw = isinstance(response, bytes)
        listed = pipeline_pb2.ListPipelinesResponse.FromString(response) if raw else response
        kept = [p for p in listed.pipelines if principal.covers(p.id)]
        filtered = pipeline_pb2.ListPipelinesResponse(pipelines=kept, next_page_token=listed.next_page_token)
        return filtered.SerializeToString() if raw else filtered


# -- REST ---------------------------------------------------------------------------------------

OPEN_ROUTES = ("/metrics", "/healthz", "/readyz", "/v2/metrics", "/v2/openapi.json")
"""HTTP paths anyone may read: health, readiness, metrics (for Prometheus and KEDA), the
OpenAPI document. They carry no document data."""

ErrorResponse = Callable[[ServiceError], web.StreamResponse]


def rest_middleware(
    guard: GatewayGuard,
    routes: Mapping[tuple[str, str], str],
    pipeline_of_body: Mapping[str, str],
    error_response: ErrorResponse,
) -> Any:
    """The aiohttp middleware checking every REST route of ``routes`` ((HTTP method,
    path template) → the gRPC method whose ACCESS entry applies). The pipeline is the
    ``{pipeline_id}`` of the path, or for the methods of ``pipeline_of_body`` the named
    field of the JSON body. Routes not in ``routes`` must be in :data:`OPEN_ROUTES`
    (or unknown: 404); anything else is refused."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else None
        # HEAD runs the GET handler (aiohttp adds it to every GET route): it is checked as GET.
        verb = "GET" if request.method == "HEAD" else request.method
        method = routes.get((verb, template)) if template is not None else None
        if method is None:
            if template is None or template in OPEN_ROUTES:
                return await handler(request)
            return error_response(PermissionDenied(f"{request.method} {template} is not a public route"))
        try:
            principal = await guard.authenticate(request.headers.get(AUTHORIZATION))
            guard.limit(principal, "rest")
            access = guard.authorize(principal, method)
            if access.pipeline_field is not None and not principal.all_pipelines:
                pipeline_id = request.match_info.get("pipeline_id", "")
                if method in pipeline_of_body:
                    pipeline_id = await _body_field(request, pipeline_of_body[method])
                guard.check_pipeline(principal, method, pipeline_id, first=True)
        except ServiceError as error:
            response = error_response(error)
            if isinstance(error, Unauthenticated):
                response.headers["WWW-Authenticate"] = 'Bearer realm="hevlayer"'
            return response
        return await handler(request)

    return middleware


async def _body_field(request: web.Request, field: str) -> str:
    """A string field of the JSON body ("" when absent or the body is not a JSON object);
    the body stays readable by the handler."""
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        return ""
    value = body.get(field) if isinstance(body, dict) else None
    return value if isinstance(value, str) else ""
