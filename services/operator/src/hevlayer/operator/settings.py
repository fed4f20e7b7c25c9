"""Settings of the operator (environment variables).

The operator serves no gRPC: of the common server settings it reads only
``HEVLAYER_LOG_LEVEL``, ``HEVLAYER_LOG_FORMAT`` and ``HEVLAYER_TRACES_EXPORTER``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hevlayer.common.config import ConfigError, setting, split_address

# A Kubernetes namespace name (DNS-1123 label).
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A label key: optional DNS-subdomain prefix, then a name of up to 63 characters.
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator needs to reconcile Pipeline resources."""

    gateway_address: str = setting(
        "OPERATOR_GATEWAY_ADDRESS",
        "host:port of the gateway's gRPC server: the operator creates, pauses and deletes pipelines "
        "there, and workers get it as HEVLAYER_GATEWAY_ADDRESS.",
        "127.0.0.1:50051",
    )
    gateway_http_url: str = setting(
        "OPERATOR_GATEWAY_HTTP_URL",
        "Base URL of the gateway's HTTP server as KEDA and workers reach it; the ScaledObject's "
        "serverAddress is this plus /v2/metrics. Empty: http://<host of OPERATOR_GATEWAY_ADDRESS>:8080.",
        "",
    )
    namespaces: tuple[str, ...] = setting(
        "OPERATOR_NAMESPACES",
        "Namespaces whose Pipelines the operator serves (comma-separated); empty serves all namespaces.",
        (),
    )
    status_interval_seconds: float = setting(
        "OPERATOR_STATUS_INTERVAL_SECONDS",
        "How often each Pipeline's status.pendingCount is refreshed from the gateway and its worker "
        "objects are checked for drift.",
        30.0,
    )
    gateway_timeout_seconds: float = setting(
        "OPERATOR_GATEWAY_TIMEOUT_SECONDS", "Deadline of one call to the gateway.", 10.0
    )
    kube_timeout_seconds: float = setting(
        "OPERATOR_KUBE_TIMEOUT_SECONDS", "Timeout of one Kubernetes API request made by the operator.", 30.0
    )
    kubeconfig: str = setting(
        "OPERATOR_KUBECONFIG",
        "Path of a kubeconfig file to use (its current context). Empty: the in-cluster service "
        "account, else KUBECONFIG / ~/.kube/config.",
        "",
    )
    health_address: str = setting(
        "OPERATOR_HEALTH_ADDRESS",
        "host:port of kopf's liveness endpoint (GET /healthz). Empty disables it.",
        "127.0.0.1:9105",
    )
    pool_node_label: str = setting(
        "OPERATOR_POOL_NODE_LABEL",
        "Node label that spec.scaling.pool selects (worker pods get nodeSelector {label: pool}). "
        "Empty: the pool is only recorded as a pod label.",
        "hevlayer.com/pool",
    )

    @property
    def metrics_base_url(self) -> str:
        """The gateway's HTTP base URL, without a trailing slash."""
        if self.gateway_http_url:
            return self.gateway_http_url.rstrip("/")
        host, _ = split_address(self.gateway_address, "OPERATOR_GATEWAY_ADDRESS")
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:8080"

    @property
    def liveness_endpoint(self) -> str | None:
        """The URL kopf serves its liveness probe on, or None."""
        if not self.health_address:
            return None
        host, port = split_address(self.health_address, "OPERATOR_HEALTH_ADDRESS")
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/healthz"

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid variable."""
        split_address(self.gateway_address, "OPERATOR_GATEWAY_ADDRESS")
        if self.gateway_http_url and not re.match(r"^https?://[^/\s]+(/\S*)?$", self.gateway_http_url):
            raise ConfigError(
                f"OPERATOR_GATEWAY_HTTP_URL: expected http://host[:port], got {self.gateway_http_url!r}"
            )
        for namespace in self.namespaces:
            if not _NAMESPACE.match(namespace):
                raise ConfigError(f"OPERATOR_NAMESPACES: {namespace!r} is not a namespace name")
        if self.status_interval_seconds <= 0:
            raise ConfigError("OPERATOR_STATUS_INTERVAL_SECONDS: must be > 0")
        if self.gateway_timeout_seconds <= 0:
            raise ConfigError("OPERATOR_GATEWAY_TIMEOUT_SECONDS: must be > 0")
        if self.kube_timeout_seconds <= 0:
            raise ConfigError("OPERATOR_KUBE_TIMEOUT_SECONDS: must be > 0")
        if self.health_address:
            split_address(self.health_address, "OPERATOR_HEALTH_ADDRESS")
        if self.pool_node_label and not _LABEL_KEY.match(self.pool_node_label):
            raise ConfigError(f"OPERATOR_POOL_NODE_LABEL: {self.pool_node_label!r} is not a label key")
