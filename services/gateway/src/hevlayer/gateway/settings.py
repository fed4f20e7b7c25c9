"""Settings of the gateway (environment variables)."""

from __future__ import annotations

from dataclasses import dataclass

from hevlayer.common.config import ConfigError, setting, split_address

GRPC_DEFAULTS = {
    "HEVLAYER_GRPC_ADDRESS": "127.0.0.1:50051",
    "HEVLAYER_HTTP_ADDRESS": "127.0.0.1:8080",
}


@dataclass(frozen=True)
class GatewaySettings:
    """What the gateway needs beyond the common server settings."""

    claimer_address: str = setting(
        "CLAIMER_ADDRESS", "host:port of the claimer's gRPC server.", "127.0.0.1:50052"
    )
    forward_timeout_seconds: float = setting(
        "GATEWAY_FORWARD_TIMEOUT_SECONDS",
        "Deadline of a unary call forwarded to the claimer when the caller set none.",
        30.0,
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid variable."""
        split_address(self.claimer_address, "CLAIMER_ADDRESS")
        if self.forward_timeout_seconds <= 0:
            raise ConfigError("GATEWAY_FORWARD_TIMEOUT_SECONDS: must be > 0")
