"""Channel options in one place: deadlines, retries, keepalive, message sizes, credentials.

:class:`ClientOptions` is everything a :class:`~hevlayer.client.Client` (or a
bare channel from :func:`hevlayer.client.channel.open_channel`) is opened
with. The defaults suit a worker next to the gateway; every field can be
changed per client, and every call takes ``timeout=`` to override its
deadline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from hevlayer.client.methods import METHODS, Method
from hevlayer.common.limits import MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class RetryPolicy:
    """How idempotent calls are retried (by gRPC, from the channel's service config).

    Only methods whose :attr:`Method.idempotent` is true are retried, only on
    ``codes``, at most ``max_attempts`` times in all, with exponential backoff
    from ``initial_backoff`` to ``max_backoff`` seconds (gRPC adds jitter)."""

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    codes: tuple[str, ...] = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "ABORTED")

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 5:
            raise ValueError("RetryPolicy.max_attempts: must be 1 to 5 (gRPC caps retries at 5)")
        if self.initial_backoff <= 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("RetryPolicy: need 0 < initial_backoff <= max_backoff")
        unknown = [c for c in self.codes if c not in grpc.StatusCode.__members__]
        if unknown:
            raise ValueError(f"RetryPolicy.codes: unknown status codes {unknown}")


@dataclass(frozen=True)
class TLS:
    """TLS for the channel; with ``certificate_chain`` and ``private_key``, mutual TLS.

    Each of the three is PEM bytes or a path to a PEM file. No root
    certificates: the system's trust store."""

    root_certificates: bytes | Path | None = None
    certificate_chain: bytes | Path | None = None
    private_key: bytes | Path | None = None
    server_name: str | None = None
    """Name to check the server's certificate against, when it differs from the target's host."""

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials."""
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("TLS: certificate_chain and private_key go together (mutual TLS)")
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.root_certificates),
            private_key=_pem(self.private_key),
            certificate_chain=_pem(self.certificate_chain),
        )


def _pem(value: bytes | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class ClientOptions:
    """What a channel to a hevlayer service is opened with."""

    timeouts: Mapping[str, float | None] = field(default_factory=dict)
    """Deadline per method (``"/pkg.Service/Method"`` or ``"Method"``), seconds; None: no
    deadline. Methods not named here use :data:`hevlayer.client.methods.METHODS`' defaults."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    keepalive_time: float = 30.0
    """Seconds between keepalive pings on an idle connection."""
    keepalive_timeout: float = 10.0
    """Seconds to wait for a ping's answer before the connection is considered dead."""
    max_message_bytes: int = MAX_MESSAGE_BYTES
    """Largest message sent or received (both ways)."""
    tls: TLS | None = None
    """TLS (mutual with a client certificate); None: plaintext."""
    call_credentials: grpc.CallCredentials | None = None
    """Per-call credentials (e.g. ``grpc.access_token_call_credentials``); TLS only."""
    metadata: Sequence[tuple[str, str]] = ()
    """Metadata sent with every call (e.g. ``("authorization", "Bearer ...")``)."""
    traced: bool = True
    """Client spans and trace-context propagation (OpenTelemetry) on every call."""
    extra_channel_args: Sequence[tuple[str, str | int]] = ()
    """More gRPC channel arguments, appended last."""

    def timeout(self, method: Method) -> float | None:
        """The deadline of a call of ``method``."""
        for key in (method.full_name, method.name):
            if key in self.timeouts:
                return self.timeouts[key]
        return method.timeout

    def service_config(self) -> str:
        """The gRPC service config: the retry policy on idempotent methods only (none at all
        with ``max_attempts=1``: gRPC refuses a retry policy of fewer than two attempts)."""
        retry = self.retry
        if retry.max_attempts < 2:
            return json.dumps({"methodConfig": []})
        names = [{"service": m.service, "method": m.name} for m in METHODS if m.idempotent]
        return json.dumps(
            {
                "methodConfig": [
                    {
                        "name": names,
                        "retryPolicy": {
                            "maxAttempts": retry.max_attempts,
                            "initialBackoff": f"{retry.initial_backoff}s",
                            "maxBackoff": f"{retry.max_backoff}s",
                            "backoffMultiplier": retry.multiplier,
                            "retryableStatusCodes": list(retry.codes),
                        },
                    }
                ]
            }
        )

    def channel_args(self) -> list[tuple[str, str | int]]:
        """The gRPC channel arguments."""
        args: list[tuple[str, str | int]] = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", self.service_config()),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", int(self.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        if self.tls is not None and self.tls.server_name:
            args.append(("grpc.ssl_target_name_override", self.tls.server_name))
        args.extend(self.extra_channel_args)
        return args
