"""What a Pipeline owns, as Kubernetes manifests (pure functions, no I/O).

For a Pipeline ``<name>`` in namespace ``<ns>`` the operator owns:

- the Deployment ``<name>-worker`` running ``spec.worker.image``;
- in mode ``autoscale`` (and not paused), the KEDA ScaledObject
  ``<name>-worker`` scaling that Deployment on the gateway's pending count;
- with ``spec.extract``, the CPU worker Deployment ``<name>-extract`` and (in
  mode autoscale) its ScaledObject ``<name>-extract``, scaled on the
  pipeline's documents in stage ``extract`` or on a trigger passed through.

The pool of InfraRules a Deployment runs in gives its node selector,
tolerations and default resources. All carry an owner reference to the
Pipeline (controller, blockOwnerDeletion), so Kubernetes garbage-collects them with it, and the labels of
:func:`labels`. ``None`` values in a rendered manifest mean "this key must be
absent": :func:`creation_body` drops them, and a JSON merge patch built from
the manifest removes them from the live object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hevlayer.operator.infra import Pool
from hevlayer.operator.spec import API_VERSION, KIND, Pipeline, PipelineRef, PipelineSpec

MANAGED_BY = "hevlayer-operator"
PIPELINE_LABEL = "hevlayer.com/pipeline"
POOL_LABEL = "hevlayer.com/pool"
COMPONENT = "pipeline-worker"
CONTAINER = "worker"
EXTRACT_COMPONENT = "pipeline-extract"
EXTRACT_CONTAINER = "extract"
EXTRACT_STAGE = "extract"
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


def extract_name(ref: PipelineRef) -> str:
    """Name of the extract (CPU) worker Deployment and of its ScaledObject."""
    return f"{ref.name}-extract"


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


def prometheus_query(pipeline_id: str, stage: str = "pending") -> str:
    """The query of one pipeline's documents in ``stage`` (0 when the series is absent)."""
    return f'sum(layer_pipeline_stage_count{{pipeline_id="{pipeline_id}",stage="{stage}"}}) or vector(0)'


def metric_name(pipeline_id: str, stage: str = "pending") -> str:
    """The trigger's metricName: ``product-images`` -> ``product_images_pending``."""
    return f"{pipeline_id.replace('-', '_')}_{stage}"


# The embedder worker's settings (services/embedder, WorkerSettings) the operator sets.
PIPELINE_ID_ENV = "HEVLAYER_PIPELINE_ID"
GATEWAY_ADDRESS_ENV = "HEVLAYER_GATEWAY_ADDRESS"
BATCH_SIZE_ENV = "EMBEDDER_WORKER_MAX_DOCUMENTS"
LEASE_SECONDS_ENV = "EMBEDDER_WORKER_LEASE_SECONDS"
DRAIN_SECONDS_ENV = "EMBEDDER_WORKER_DRAIN_SECONDS"


def _with_user_env(injected: list[dict[str, Any]], user: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    overridden = {str(entry["name"]) for entry in user}
    return [e for e in injected if e["name"] not in overridden] + [dict(e) for e in user]


def worker_env(pipeline: Pipeline, ctx: RenderContext) -> list[dict[str, Any]]:
    """The worker's environment: the operator's variables, then spec.worker.env
    (which overrides an operator variable of the same name).

    Every variable is one the embedder worker reads (``WorkerSettings``):
    batchSize is the most documents it holds at once (EMBEDDER_WORKER_MAX_DOCUMENTS),
    timeoutSeconds the lease it takes on them (EMBEDDER_WORKER_LEASE_SECONDS) and
    the time it gets to finish them on SIGTERM (EMBEDDER_WORKER_DRAIN_SECONDS).
    """
    spec = pipeline.spec
    injected: list[dict[str, Any]] = [
        {"name": PIPELINE_ID_ENV, "value": pipeline.ref.pipeline_id},
        {"name": GATEWAY_ADDRESS_ENV, "value": ctx.gateway_address},
    ]
    if spec.worker.batch_size is not None:
        injected.append({"name": BATCH_SIZE_ENV, "value": str(spec.worker.batch_size)})
    if spec.worker.timeout_seconds is not None:
        injected.append({"name": LEASE_SECONDS_ENV, "value": str(spec.worker.timeout_seconds)})
        injected.append({"name": DRAIN_SECONDS_ENV, "value": str(spec.worker.timeout_seconds)})
    return _with_user_env(injected, spec.worker.env)


def extract_env(pipeline: Pipeline, ctx: RenderContext) -> list[dict[str, Any]]:
    """The extract worker's environment: the pipeline id and the gateway address
    (the same variables an embedder worker reads), then spec.extract.env."""
    assert pipeline.spec.extract is not None
    injected: list[dict[str, Any]] = [
        {"name": PIPELINE_ID_ENV, "value": pipeline.ref.pipeline_id},
        {"name": GATEWAY_ADDRESS_ENV, "value": ctx.gateway_address},
    ]
    return _with_user_env(injected, pipeline.spec.extract.env)


def _metadata(pipeline: Pipeline, name: str | None = None) -> dict[str, Any]:
    return {
        "name": name or worker_name(pipeline.ref),
        "namespace": pipeline.ref.namespace,
        "labels": labels(pipeline.ref),
        "ownerReferences": [owner_reference(pipeline.ref)],
    }


def replicas(spec: PipelineSpec) -> int:
    """The Deployment's replica count: pinned in modes fixed/disabled/paused; in mode
    autoscale the initial count (replicas.min), after which KEDA owns it."""
    pinned = spec.fixed_replicas
    return spec.scaling.min_replicas if pinned is None else pinned


def _resources(
    pool: Pool | None, own: Mapping[str, Mapping[str, str]] | None
) -> dict[str, dict[str, str]] | None:
    """The pool's default resources with the container's own entries on top."""
    merged: dict[str, dict[str, str]] = {}
    for source in (pool.resources if pool is not None else None, own):
        for section, quantities in (source or {}).items():
            merged.setdefault(section, {}).update(quantities)
    return merged or None


def _pod_spec(
    container: dict[str, Any], pool_name: str | None, pool: Pool | None, ctx: RenderContext, grace: int
) -> tuple[dict[str, Any], dict[str, str]]:
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = None
    extra_labels: dict[str, str] = {}
    if pool_name is not None:
        extra_labels[POOL_LABEL] = pool_name
        if pool is not None and pool.node_selector:
            node_selector = dict(pool.node_selector)
        elif ctx.pool_node_label:
            node_selector = {ctx.pool_node_label: pool_name}
        if pool is not None and pool.tolerations:
            tolerations = [dict(t) for t in pool.tolerations]
    spec = {
        "containers": [container],
        "nodeSelector": node_selector,
        "tolerations": tolerations,
        "terminationGracePeriodSeconds": grace,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    return spec, extra_labels


def _deployment(
    pipeline: Pipeline,
    name: str,
    component: str,
    count: int,
    pod: dict[str, Any],
    pool_labels: dict[str, str],
) -> dict[str, Any]:
    ref = pipeline.ref
    selector = {**selector_labels(ref), "app.kubernetes.io/component": component}
    metadata = _metadata(pipeline, name)
    metadata["labels"] = {**metadata["labels"], "app.kubernetes.io/component": component}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": count,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**metadata["labels"], **pool_labels}},
                "spec": pod,
            },
        },
    }


def render_deployment(pipeline: Pipeline, ctx: RenderContext, pool: Pool | None = None) -> dict[str, Any]:
    """The worker Deployment of ``pipeline`` (``pool``: its spec.scaling.pool in InfraRules)."""
    spec = pipeline.spec
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.worker.image,
        "env": worker_env(pipeline, ctx),
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    resources = _resources(pool, spec.worker.resources)
    if resources:
        container["resources"] = resources
    grace = (
        spec.worker.timeout_seconds + TERMINATION_MARGIN_SECONDS
        if spec.worker.timeout_seconds is not None
        else DEFAULT_TERMINATION_GRACE_SECONDS
    )
    pod, pool_labels = _pod_spec(container, spec.scaling.pool, pool, ctx, grace)
    return _deployment(pipeline, worker_name(pipeline.ref), COMPONENT, replicas(spec), pod, pool_labels)


def render_extract_deployment(
    pipeline: Pipeline, ctx: RenderContext, pool: Pool | None = None
) -> dict[str, Any] | None:
    """The extract (CPU) worker Deployment of ``pipeline``, or None without spec.extract."""
    spec = pipeline.spec
    extract = spec.extract
    if extract is None:
        return None
    container: dict[str, Any] = {
        "name": EXTRACT_CONTAINER,
        "image": extract.image,
        "env": extract_env(pipeline, ctx),
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    resources = _resources(pool, extract.resources)
    if resources:
        container["resources"] = resources
    pod, pool_labels = _pod_spec(container, extract.pool, pool, ctx, DEFAULT_TERMINATION_GRACE_SECONDS)
    pinned = spec.extract_replicas
    count = extract.min_replicas if pinned is None else pinned
    return _deployment(pipeline, extract_name(pipeline.ref), EXTRACT_COMPONENT, count, pod, pool_labels)


def _scaled_object(
    pipeline: Pipeline, name: str, low: int, high: int, trigger: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(pipeline, name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": low,
            "maxReplicaCount": high,
            "triggers": [trigger],
        },
    }


def render_scaled_object(pipeline: Pipeline, ctx: RenderContext) -> dict[str, Any] | None:
    """The KEDA ScaledObject of ``pipeline``, or None when KEDA must not scale it
    (mode fixed or disabled, or spec.paused)."""
    spec = pipeline.spec
    if not spec.autoscaled:
        return None
    pipeline_id = pipeline.ref.pipeline_id
    trigger = {
        "type": "prometheus",
        "metadata": {
            "serverAddress": metrics_url(ctx),
            "metricName": metric_name(pipeline_id),
            "query": prometheus_query(pipeline_id),
            "threshold": str(spec.threshold),
            "activationThreshold": str(spec.scaling.activation_threshold),
        },
    }
    return _scaled_object(
        pipeline, worker_name(pipeline.ref), spec.scaling.min_replicas, spec.scaling.max_replicas, trigger
    )


def render_extract_scaled_object(pipeline: Pipeline, ctx: RenderContext) -> dict[str, Any] | None:
    """The extract workers' ScaledObject: on the pipeline's documents in stage
    ``extract``, or on the trigger spec.extract.trigger passes through (SQS, Kafka).
    None without spec.extract or when the extract workers are pinned."""
    spec = pipeline.spec
    extract = spec.extract
    if extract is None or spec.extract_replicas is not None:
        return None
    pipeline_id = pipeline.ref.pipeline_id
    trigger: dict[str, Any]
    if extract.trigger is None:
        trigger = {
            "type": "prometheus",
            "metadata": {
                "serverAddress": metrics_url(ctx),
                "metricName": metric_name(pipeline_id, EXTRACT_STAGE),
                "query": prometheus_query(pipeline_id, EXTRACT_STAGE),
                "threshold": str(extract.target_per_replica),
                "activationThreshold": str(spec.scaling.activation_threshold),
            },
        }
    else:
        trigger = {"type": extract.trigger.type, "metadata": dict(extract.trigger.metadata)}
        if extract.trigger.authentication_ref is not None:
            trigger["authenticationRef"] = {"name": extract.trigger.authentication_ref}
    return _scaled_object(
        pipeline, extract_name(pipeline.ref), extract.min_replicas, extract.max_replicas, trigger
    )


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


def update_patch(
    manifest: Mapping[str, Any], spec: PipelineSpec, *, autoscaled: bool | None = None
) -> dict[str, Any]:
    """The JSON merge patch that brings a live object to ``manifest``.

    Lists are replaced whole (JSON merge patch semantics), so list items carry
    no ``None`` values; ``None`` map values delete the key. For a Deployment
    scaled by KEDA, ``spec.replicas`` is left to KEDA's HPA.
    """
    body = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind")}
    patch: dict[str, Any] = _patch_value(body)
    if autoscaled is None:
        autoscaled = spec.autoscaled
    if manifest.get("kind") == "Deployment" and autoscaled:
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
