"""Settings of the gateway's vector sinks (environment variables)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from hevlayer.common.config import ConfigError, setting

from .base import SinkKind


@dataclass(frozen=True, repr=False)
class SinkSettings:
    """Where each kind of sink writes; load with ``load_settings(SinkSettings)``."""

    default_sink: SinkKind = setting(
        "GATEWAY_DEFAULT_SINK",
        "Sink of pipelines created without one: milvus_lite, milvus or turbopuffer.",
        SinkKind.MILVUS_LITE,
    )
    milvus_lite_path: str = setting(
        "GATEWAY_MILVUS_LITE_PATH",
        "Milvus Lite database of the milvus_lite sink (a path ending in .db, owned by this process).",
        "hevlayer-vectors.db",
    )
    milvus_uri: str = setting(
        "GATEWAY_MILVUS_URI",
        "Milvus or Zilliz endpoint of the milvus sink, e.g. http://milvus:19530 (required for that sink).",
        "",
    )
    milvus_token: str = setting(
        "GATEWAY_MILVUS_TOKEN",
        "Token of the milvus sink (user:password or a Zilliz API key).",
        "",
        secret=True,
    )
    milvus_db_name: str = setting("GATEWAY_MILVUS_DB_NAME", "Milvus database of the milvus sink.", "")
    turbopuffer_api_key: str = setting(
        "GATEWAY_TURBOPUFFER_API_KEY",
        "API key of the turbopuffer sink (required for that sink).",
        "",
        secret=True,
    )
    turbopuffer_region: str = setting(
        "GATEWAY_TURBOPUFFER_REGION", "Turbopuffer region, e.g. gcp-us-central1 (or set the base URL).", ""
    )
    turbopuffer_base_url: str = setting(
        "GATEWAY_TURBOPUFFER_BASE_URL",
        "Turbopuffer API base URL; overrides the region (may contain {region}).",
        "",
    )
    turbopuffer_max_retries: int = setting(
        "GATEWAY_TURBOPUFFER_MAX_RETRIES",
        "Retries of a Turbopuffer request on connection errors, 408, 409, 429 and 5xx.",
        2,
    )
    timeout_seconds: float = setting(
        "GATEWAY_SINK_TIMEOUT_SECONDS", "Deadline of one sink call (Milvus RPC or Turbopuffer request).", 30.0
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid variable (checks every sink's values)."""
        if not self.milvus_lite_path.endswith(".db"):
            raise ConfigError("GATEWAY_MILVUS_LITE_PATH: must end in .db")
        if self.milvus_uri:
            parsed = urlparse(self.milvus_uri)
            if parsed.scheme not in ("http", "https", "tcp", "unix") or (
                parsed.scheme != "unix" and not parsed.hostname
            ):
                raise ConfigError(
                    f"GATEWAY_MILVUS_URI: expected http(s)://host:port, tcp://host:port or unix:path, "
                    f"got {self.milvus_uri!r}"
                )
        if self.turbopuffer_base_url:
            parsed = urlparse(self.turbopuffer_base_url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ConfigError(
                    "GATEWAY_TURBOPUFFER_BASE_URL: expected an http(s) URL, "
                    f"got {self.turbopuffer_base_url!r}"
                )
            if self.turbopuffer_region and "{region}" not in self.turbopuffer_base_url:
                raise ConfigError(
                    "GATEWAY_TURBOPUFFER_REGION: set either the region or a base URL "
                    "without {region}, not both"
                )
        if self.turbopuffer_max_retries < 0:
            raise ConfigError("GATEWAY_TURBOPUFFER_MAX_RETRIES: must be >= 0")
        if self.timeout_seconds <= 0:
            raise ConfigError("GATEWAY_SINK_TIMEOUT_SECONDS: must be > 0")
        self.validate_for(self.default_sink)

    def validate_for(self, kind: SinkKind) -> None:
        """Raise ConfigError naming the variable that ``kind`` needs and lacks."""
        if kind is SinkKind.MILVUS and not self.milvus_uri:
            raise ConfigError("GATEWAY_MILVUS_URI: required by the milvus sink")
        if kind is SinkKind.TURBOPUFFER:
            if not self.turbopuffer_api_key:
                raise ConfigError("GATEWAY_TURBOPUFFER_API_KEY: required by the turbopuffer sink")
            if not self.turbopuffer_region and (
                not self.turbopuffer_base_url or "{region}" in self.turbopuffer_base_url
            ):
                raise ConfigError(
                    "GATEWAY_TURBOPUFFER_REGION: required by the turbopuffer sink unless "
                    "GATEWAY_TURBOPUFFER_BASE_URL names the endpoint"
                )

    def __repr__(self) -> str:
        """Settings with the secrets masked."""
        return (
            f"SinkSettings(default_sink={self.default_sink.value!r}, "
            f"milvus_lite_path={self.milvus_lite_path!r}, milvus_uri={self.milvus_uri!r}, "
            f"milvus_token={'***' if self.milvus_token else ''!r}, milvus_db_name={self.milvus_db_name!r}, "
            f"turbopuffer_api_key={'***' if self.turbopuffer_api_key else ''!r}, "
            f"turbopuffer_region={self.turbopuffer_region!r}, "
            f"turbopuffer_base_url={self.turbopuffer_base_url!r}, "
            f"turbopuffer_max_retries={self.turbopuffer_max_retries}, timeout_seconds={self.timeout_seconds})"
        )
