"""Settings every service shares beyond the server's own (environment variables)."""

from __future__ import annotations

from dataclasses import dataclass

from hevlayer.common.config import ConfigError, setting


@dataclass(frozen=True)
class ReadinessSettings:
    """How often and how patiently a service probes what it depends on (``/readyz``, gRPC health)."""

    interval_seconds: float = setting(
        "HEVLAYER_READINESS_INTERVAL_SECONDS",
        "Interval between two rounds of dependency probes (the gateway: claimer, S3, default sink; "
        "the claimer: PostgreSQL; the embedder: Triton); at most 1 s while one is down. /readyz and "
        "gRPC health report the last round; no request probes.",
        5.0,
    )
    timeout_seconds: float = setting(
        "HEVLAYER_READINESS_TIMEOUT_SECONDS",
        "Deadline of one dependency probe; a slower answer counts as the dependency being down.",
        2.0,
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid variable."""
        if self.interval_seconds <= 0:
            raise ConfigError("HEVLAYER_READINESS_INTERVAL_SECONDS: must be > 0")
        if self.timeout_seconds <= 0:
            raise ConfigError("HEVLAYER_READINESS_TIMEOUT_SECONDS: must be > 0")
        if self.timeout_seconds > self.interval_seconds:
            raise ConfigError(
                "HEVLAYER_READINESS_TIMEOUT_SECONDS: must not exceed HEVLAYER_READINESS_INTERVAL_SECONDS"
            )
