"""What a Pipeline owns, as Kubernetes manifests (pure functions, no I/O).

For a Pipeline ``<name>`` in namespace ``<ns>`` the operator owns:

- the Deployment ``<name>-worker`` running ``spec.worker.image``;
- in mode ``autoscale`` (and not paused), the KEDA ScaledObject
  ``<name>-worker`` scaling that Deployment on the gateway's pending count.

Both carry an owner reference to the Pipeline (controller, blockOwnerDeletion),
so Kubernetes garbage-collects them with it, and the labels of
:func:`labels`. ``None`` values in a rendered manifest mean "this key must be
absent": :func:`creation_body` drops them, and a JSON merge patch built from
the manifest removes them from the live object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hevlayer.operator.spec import API_VERSION, KIND, Pipeline, PipelineRef, PipelineSpec

MANAGED_BY = "hevlayer-operator"
PIPELINE_LABEL = "hevlayer.com/pipeline"
POOL_LABEL = "hevlayer.com/pool"
COMPONENT = "pipeline-worker"
CONTAINER = "worker"
# Extra seconds a worker gets after SIGTERM beyond its batch timeout.
TERMINATION_MARGIN_SECONDS = 30
DEFAULT_TERMINATION_GRACE_SECONDS = 30

DEPLOYMENT_API = ("apps/v1", "deployments")
SCALED_OBJECT_API = ("keda.sh/v1alpha1", "scaledobjects")


@dataclass(frozen=True)
class RenderContext:
    """Cluster-wide facts the manifests need (from OperatorSettings)."""

    gateway_address: str
    """host:port of the gateway's gRPC server, as workers reach it."""
    gateway_http_url: str
    """Base URL of the gateway's HTTP server, as KEDA and workers reach it."""
    pool_node_label: str = "hevlayer.com/pool"
    """Node label spec.scaling.pool selects; empty: no nodeSelector."""


def worker_name(ref: PipelineRef) -> str:
    """Name of the worker Deployment and of its ScaledObject."""
    return f"{ref.name}-worker"


def selector_labels(ref: PipelineRef) -> dict[str, str]:
    """Labels selecting a pipeline's worker pods (immutable once the Deployment exists)."""
    return {PIPELINE_LABEL: ref.name, "app.kubernetes.io/component": COMPONENT}


def labels(ref: PipelineRef) -> dict[str, str]:
    """Labels of every object the operator creates for a pipeline."""
    return {
        **selector_labels(ref),
        "app.kubernetes.io/name": "hevlayer-worker",
        "app.kubernetes.io/instance": ref.name,
        "app.kubernetes.io/part-of": "hevlayer",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def owner_reference(ref: PipelineRef) -> dict[str, Any]:
    """The owner reference to the Pipeline (garbage collection, kubectl tree)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metrics_url(ctx: RenderContext) -> str:
    """The Prometheus endpoint KEDA queries: the gateway's /v2/metrics."""
    return f"{ctx.gateway_http_url.rstrip('/')}/v2/metrics"


def prometheus_query(pipeline_id: str) -> str:
    """The pending-documents query of one pipeline (0 when the series is absent)."""
    return f'sum(layer_pipeline_stage_count{{pipeline_id="{pipeline_id}",stage="pending"}}) or vector(0)'


def metric_name(pipeline_id: str) -> str:
    """The trigger's metricName: ``product-images`` -> ``product_images_pending``."""
    return f"{pipeline_id.replace('-', '_')}_pending"


def worker_env(pipeline: Pipeline, ctx: RenderContext) -> list[dict[str, Any]]:
    """The worker's environment: the operator's variables, then spec.worker.env
    (which overrides an operator variable of the same name)."""
    spec = pipeline.spec
    injected: list[dict[str, Any]] = [
        {"name": "HEVLAYER_PIPELINE_ID", "value": pipeline.ref.pipeline_id},
        {"name": "HEVLAYER_GATEWAY_ADDRESS", "value": ctx.gateway_address},
        {"name": "HEVLAYER_GATEWAY_URL", "value": ctx.gateway_http_url.rstrip("/")},
    ]
    if spec.worker.batch_size is not None:
        injected.append({"name": "HEVLAYER_BATCH_SIZE", "value": str(spec.worker.batch_size)})
    if spec.worker.timeout_seconds is not None:
        injected.append({"name": "HEVLAYER_TIMEOUT_SECONDS", "value": str(spec.worker.timeout_seconds)})
    overridden = {str(entry["name"]) for entry in spec.worker.env}
    return [e for e in injected if e["name"] not in overridden] + [dict(e) for e in spec.worker.env]


def _metadata(pipeline: Pipeline) -> dict[str, Any]:
    return {
        "name": worker_name(pipeline.ref),
        "namespace": pipeline.ref.namespace,
        "labels": labels(pipeline.ref),
        "ownerReferences": [owner_reference(pipeline.ref)],
    }


def replicas(spec: PipelineSpec) -> int:
    """The Deployment's replica count: pinned in modes fixed/disabled/paused; in mode
    autoscale the initial count (replicas.min), after which KEDA owns it."""
    pinned = spec.fixed_replicas
    return spec.scaling.min_replicas if pinned is None else pinned


def render_deployment(pipeline: Pipeline, ctx: RenderContext) -> dict[str, Any]:
    """The worker Deployment of ``pipeline``."""
    spec = pipeline.spec
    ref = pipeline.ref
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.worker.image,
        "env": worker_env(pipeline, ctx),
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    if spec.worker.resources:
        container["resources"] = {k: dict(v) for k, v in spec.worker.resources.items()}
    pod_labels = labels(ref)
    node_selector: dict[str, str] | None = None
    if spec.scaling.pool is not None:
        pod_labels[POOL_LABEL] = spec.scaling.pool
        if ctx.pool_node_label:
            node_selector = {ctx.pool_node_label: spec.scaling.pool}
    grace = (
        spec.worker.timeout_seconds + TERMINATION_MARGIN_SECONDS
        if spec.worker.timeout_seconds is not None
        else DEFAULT_TERMINATION_GRACE_SECONDS
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(pipeline),
        "spec": {
            "replicas": replicas(spec),
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(ref)},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "containers": [container],
                    "nodeSelector": node_selector,
                    "terminationGracePeriodSeconds": grace,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                },
            },
        },
    }


def render_scaled_object(pipeline: Pipeline, ctx: RenderContext) -> dict[str, Any] | None:
    """The KEDA ScaledObject of ``pipeline``, or None when KEDA must not scale it
    (mode fixed or disabled, or spec.paused)."""
    spec = pipeline.spec
    if not spec.autoscaled:
        return None
    pipeline_id = pipeline.ref.pipeline_id
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(pipeline),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": worker_name(pipeline.ref),
            },
            "minReplicaCount": spec.scaling.min_replicas,
            "maxReplicaCount": spec.scaling.max_replicas,
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": metrics_url(ctx),
                        "metricName": metric_name(pipeline_id),
                        "query": prometheus_query(pipeline_id),
                        "threshold": str(spec.threshold),
                        "activationThreshold": "1",
                    },
                }
            ],
        },
    }


def creation_body(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``manifest`` without its ``None`` values (the body of a create request)."""
    body: dict[str, Any] = strip_nones(manifest)
    return body


def strip_nones(value: Any) -> Any:
    """``value`` with every ``None`` dict value removed, recursively."""
    if isinstance(value, Mapping):
        return {k: strip_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nones(v) for v in value]
    return value


def update_patch(manifest: Mapping[str, Any], spec: PipelineSpec) -> dict[str, Any]:
    """The JSON merge patch that brings a live object to ``manifest``.

    Lists are replaced whole (JSON merge patch semantics), so list items carry
    no ``None`` values; ``None`` map values delete the key. For a Deployment
    scaled by KEDA, ``spec.replicas`` is left to KEDA's HPA.
    """
    body = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind")}
    patch: dict[str, Any] = _patch_value(body)
    if manifest.get("kind") == "Deployment" and spec.autoscaled:
        patch["spec"] = {k: v for k, v in patch["spec"].items() if k != "replicas"}
    return patch


def _patch_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _patch_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_nones(v) for v in value]
    return value


def is_applied(patch: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """Whether ``live`` already matches the merge patch ``patch``.

    Maps match when every patched key matches (``None``: the key is absent);
    lists when they have the same length and their items match pairwise (so
    fields the API server defaults inside list items, such as a container's
    ``imagePullPolicy``, do not count as drift); scalars when equal.
    """
    for key, wanted in patch.items():
        if wanted is None:
            if live.get(key) is not None:
                return False
        elif key not in live or not _matches(wanted, live[key]):
            return False
    return True


def _matches(wanted: Any, live: Any) -> bool:
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and is_applied(wanted, live)
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(wanted) == len(live)
            and all(_matches(w, item) for w, item in zip(wanted, live, strict=True))
        )
    return bool(wanted == live)
