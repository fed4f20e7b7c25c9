"""The pure layer of the operator: spec parsing, manifests, patches, conditions, status."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hevlayer.common.config import ConfigError, load_settings
from hevlayer.common.errors import InvalidArgument
from hevlayer.operator import (
    Condition,
    OperatorSettings,
    PipelineRef,
    Reconciliation,
    RenderContext,
    ScalingMode,
    desired_status,
    merge_conditions,
    parse_pipeline,
    prometheus_query,
    render_deployment,
    render_scaled_object,
    status_changes,
    update_patch,
)
from hevlayer.operator.conditions import ready_condition
from hevlayer.operator.handlers import backoff, claim_owner
from hevlayer.operator.kube_client import LoginError, connection_from_kubeconfig, login
from hevlayer.operator.reconcile import immutable_mismatch
from hevlayer.operator.render import creation_body, is_applied, strip_nones
from hevlayer.operator.spec import DistanceMetric

CTX = RenderContext(
    gateway_address="layer-gateway.layer.svc.cluster.local:50051",
    gateway_http_url="http://layer-gateway.layer.svc.cluster.local:8080/",
)

names = st.from_regex(r"\A[a-z]([a-z0-9-]{0,20}[a-z0-9])?\Z")
modes = st.sampled_from(["autoscale", "fixed", "disabled"])


@st.composite
def pipeline_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Valid Pipeline objects, with optional fields present or not."""
    low = draw(st.integers(0, 20))
    high = draw(st.integers(max(low, 1), 40))
    worker: dict[str, Any] = {"image": draw(st.sampled_from(["worker:1", "ghcr.io/hev/w@sha256:abc"]))}
    if draw(st.booleans()):
        worker["batchSize"] = draw(st.integers(1, 5000))
    if draw(st.booleans()):
        worker["timeoutSeconds"] = draw(st.integers(1, 3600))
    if draw(st.booleans()):
        worker["env"] = [
            {"name": "EMBEDDER_WORKER_MAX_DOCUMENTS", "value": "7"},
            {"name": "EXTRA", "value": "x"},
        ]
    if draw(st.booleans()):
        worker["resources"] = {"limits": {"nvidia.com/gpu": 1, "memory": "2Gi"}, "requests": {"cpu": "500m"}}
    scaling: dict[str, Any] = {"replicas": {"min": low, "max": high}}
    if draw(st.booleans()):
        scaling["mode"] = draw(modes)
    if draw(st.booleans()):
        scaling["pool"] = draw(st.sampled_from(["cpu", "gpu", "a100.large"]))
    if draw(st.booleans()):
        scaling["targetPerReplica"] = draw(st.integers(1, 500))
    spec: dict[str, Any] = {"worker": worker, "scaling": scaling}
    if draw(st.booleans()):
        spec["paused"] = draw(st.booleans())
    if draw(st.booleans()):
        spec["distanceMetric"] = draw(st.sampled_from(["cosine_distance", "euclidean_squared"]))
    return {
        "apiVersion": "hevlayer.com/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": draw(names), "namespace": "layer", "uid": "0f1e2d3c", "generation": 3},
        "spec": spec,
    }


@given(pipeline_bodies())
@settings(max_examples=150, deadline=None)
def test_replicas_follow_the_mode(body: dict[str, Any]) -> None:
    pipeline = parse_pipeline(body)
    spec = pipeline.spec
    deployment = render_deployment(pipeline, CTX)
    scaled = render_scaled_object(pipeline, CTX)
    replicas = deployment["spec"]["replicas"]
    if spec.paused or spec.scaling.mode is ScalingMode.DISABLED:
        assert replicas == 0
        assert scaled is None
    elif spec.scaling.mode is ScalingMode.FIXED:
        assert replicas == spec.scaling.min_replicas
        assert scaled is None
    else:
        assert scaled is not None
        assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (
            spec.scaling.min_replicas,
            spec.scaling.max_replicas,
        )
        assert replicas == spec.scaling.min_replicas
        # After creation the replica count is KEDA's: updates never touch it.
        assert "replicas" not in update_patch(deployment, spec)["spec"]
    if scaled is None:
        assert update_patch(deployment, spec)["spec"]["replicas"] == replicas


@given(pipeline_bodies())
@settings(max_examples=150, deadline=None)
def test_scaled_object_scales_the_workers_on_the_pipelines_pending_count(body: dict[str, Any]) -> None:
    body["spec"]["scaling"]["mode"] = "autoscale"
    body["spec"]["paused"] = False
    pipeline = parse_pipeline(body)
    name = pipeline.ref.name
    scaled = render_scaled_object(pipeline, CTX)
    assert scaled is not None
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{name}-worker",
    }
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert meta["query"] == (
        f'sum(layer_pipeline_stage_count{{pipeline_id="{name}",stage="pending"}}) or vector(0)'
    )
    assert meta["serverAddress"] == "http://layer-gateway.layer.svc.cluster.local:8080/v2/metrics"
    # The seed's 50 per replica unless the resource asks for another target (not the batch size).
    assert meta["threshold"] == str(body["spec"]["scaling"].get("targetPerReplica", 50))
    assert meta["activationThreshold"] == "1"
    assert meta["metricName"] == f"{name.replace('-', '_')}_pending"
    assert all(isinstance(v, str) for v in meta.values())


@given(pipeline_bodies())
@settings(max_examples=100, deadline=None)
def test_owned_objects_point_at_their_pipeline(body: dict[str, Any]) -> None:
    body["spec"]["scaling"]["mode"] = "autoscale"
    body["spec"]["paused"] = False
    pipeline = parse_pipeline(body)
    name = pipeline.ref.name
    deployment = render_deployment(pipeline, CTX)
    scaled = render_scaled_object(pipeline, CTX)
    assert scaled is not None
    for manifest in (deployment, scaled):
        meta = manifest["metadata"]
        assert (meta["name"], meta["namespace"]) == (f"{name}-worker", "layer")
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "hevlayer.com/v1alpha1",
                "kind": "Pipeline",
                "name": name,
                "uid": "0f1e2d3c",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["hevlayer.com/pipeline"] == name
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "hevlayer-operator"
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()


@given(pipeline_bodies())
@settings(max_examples=100, deadline=None)
def test_worker_environment(body: dict[str, Any]) -> None:
    pipeline = parse_pipeline(body)
    container = render_deployment(pipeline, CTX)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert len(env) == len(container["env"]), "duplicate variables"
    assert env["HEVLAYER_PIPELINE_ID"] == pipeline.ref.name
    assert env["HEVLAYER_GATEWAY_ADDRESS"] == CTX.gateway_address
    user = {e["name"]: e["value"] for e in body["spec"]["worker"].get("env", [])}
    for key, value in user.items():
        assert env[key] == value  # spec.worker.env wins
    worker = body["spec"]["worker"]
    if "EMBEDDER_WORKER_MAX_DOCUMENTS" not in user and "batchSize" in worker:
        assert env["EMBEDDER_WORKER_MAX_DOCUMENTS"] == str(worker["batchSize"])
    if "timeoutSeconds" in worker:
        assert env["EMBEDDER_WORKER_LEASE_SECONDS"] == str(worker["timeoutSeconds"])
        assert env["EMBEDDER_WORKER_DRAIN_SECONDS"] == str(worker["timeoutSeconds"])
    else:
        assert "EMBEDDER_WORKER_LEASE_SECONDS" not in env


@given(pipeline_bodies(), pipeline_bodies())
@settings(max_examples=100, deadline=None)
def test_patches_converge(first: dict[str, Any], second: dict[str, Any]) -> None:
    """Applying the update patch of any spec to the object of any other spec yields
    an object that matches the patch (so a second pass patches nothing)."""
    second["metadata"] = first["metadata"]
    old = parse_pipeline(first)
    new = parse_pipeline(second)
    live = creation_body(render_deployment(old, CTX))
    desired = render_deployment(new, CTX)
    patch = update_patch(desired, new.spec)
    assert not any(v is None for v in _list_items(patch)), "no nulls inside lists"
    merged = _merge_patch(live, patch)
    assert is_applied(patch, merged)
    if old.spec.scaling.pool is not None and new.spec.scaling.pool is None:
        assert "nodeSelector" not in merged["spec"]["template"]["spec"]


def test_is_applied_ignores_server_defaults_but_not_drift() -> None:
    pipeline = parse_pipeline(
        {"metadata": {"name": "p", "namespace": "n", "uid": "u"}, "spec": {"worker": {"image": "w:1"}}}
    )
    desired = render_deployment(pipeline, CTX)
    patch = update_patch(desired, pipeline.spec)
    live = creation_body(desired)
    live["metadata"]["resourceVersion"] = "9"
    live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    live["spec"]["replicas"] = 5  # KEDA's business in mode autoscale
    assert is_applied(patch, live)
    drifted = copy.deepcopy(live)
    drifted["spec"]["template"]["spec"]["containers"][0]["image"] = "w:2"
    assert not is_applied(patch, drifted)
    drifted = copy.deepcopy(live)
    drifted["spec"]["template"]["spec"]["nodeSelector"] = {"x": "y"}
    assert not is_applied(patch, drifted)
    drifted = copy.deepcopy(live)
    drifted["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "s"})
    assert not is_applied(patch, drifted)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "spec.worker"),
        ({"worker": {}}, "spec.worker.image"),
        ({"worker": {"image": "w", "batchSize": 0}}, "spec.worker.batchSize"),
        ({"worker": {"image": "w", "timeoutSeconds": "60"}}, "spec.worker.timeoutSeconds"),
        ({"worker": {"image": "w"}, "distanceMetric": "dot"}, "spec.distanceMetric"),
        ({"worker": {"image": "w"}, "scaling": {"mode": "auto"}}, "spec.scaling.mode"),
        ({"worker": {"image": "w"}, "scaling": {"replicas": {"min": 3, "max": 2}}}, "spec.scaling.replicas"),
        ({"worker": {"image": "w"}, "scaling": {"replicas": {"max": 0}}}, "spec.scaling.replicas.max"),
        ({"worker": {"image": "w"}, "scaling": {"pool": "no spaces"}}, "spec.scaling.pool"),
        ({"worker": {"image": "w"}, "target": {"namespace": "has-dash"}}, "spec.target.namespace"),
        ({"worker": {"image": "w"}, "paused": "yes"}, "spec.paused"),
        ({"worker": {"image": "w", "env": [{"name": "A"}, {"name": "A"}]}}, "spec.worker.env[1].name"),
        (
            {"worker": {"image": "w", "resources": {"limits": {"cpu": "lots"}}}},
            "spec.worker.resources.limits.cpu",
        ),
    ],
)
def test_invalid_specs_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_pipeline({"metadata": {"name": "p", "namespace": "n"}, "spec": spec})
    assert [v.field for v in caught.value.violations] == [field]


@pytest.mark.parametrize("name", ["Upper", "1starts-with-digit", "ends-", "a" * 64, "under_score"])
def test_names_must_be_pipeline_ids(name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_pipeline({"metadata": {"name": name}, "spec": {"worker": {"image": "w"}}})
    assert caught.value.violations[0].field == "metadata.name"


def test_defaults_match_the_crd() -> None:
    pipeline = parse_pipeline({"metadata": {"name": "p"}, "spec": {"worker": {"image": "w"}}})
    spec = pipeline.spec
    assert spec.distance_metric is DistanceMetric.COSINE_DISTANCE
    assert spec.scaling.mode is ScalingMode.AUTOSCALE
    assert (spec.scaling.min_replicas, spec.scaling.max_replicas) == (0, 1)
    assert spec.paused is False
    assert spec.target_namespace == ""
    assert spec.threshold == 50


def test_gateway_pipeline_mismatch() -> None:
    from hevlayer.operator import GatewayPipeline

    pipeline = parse_pipeline({"metadata": {"name": "my-docs"}, "spec": {"worker": {"image": "w"}}})
    same = GatewayPipeline("my-docs", "my_docs", DistanceMetric.COSINE_DISTANCE, paused=True)
    assert immutable_mismatch(pipeline, same) is None
    other = GatewayPipeline("my-docs", "elsewhere", DistanceMetric.EUCLIDEAN_SQUARED, paused=False)
    message = immutable_mismatch(pipeline, other)
    assert message is not None
    assert "elsewhere" in message
    assert "euclidean_squared" in message


def test_conditions_keep_transition_times() -> None:
    first = merge_conditions(
        None,
        [Condition("GatewaySynced", True, "Synced"), Condition("Ready", True, "Ready")],
        now="T1",
        generation=1,
    )
    assert [c["lastTransitionTime"] for c in first] == ["T1", "T1"]
    foreign = {"type": "Other", "status": "True", "reason": "X", "message": "", "lastTransitionTime": "T0"}
    second = merge_conditions(
        [*first, foreign],
        [Condition("GatewaySynced", True, "Synced", "again"), Condition("Ready", False, "NotReady")],
        now="T2",
        generation=2,
    )
    by_type = {c["type"]: c for c in second}
    assert by_type["GatewaySynced"]["lastTransitionTime"] == "T1"
    assert by_type["GatewaySynced"]["message"] == "again"
    assert by_type["GatewaySynced"]["observedGeneration"] == 2
    assert by_type["Ready"]["lastTransitionTime"] == "T2"
    assert by_type["Other"] == foreign


def test_ready_names_the_first_failure() -> None:
    ready = ready_condition(
        [
            Condition("GatewaySynced", False, "GatewayUnavailable", "down"),
            Condition("WorkersApplied", True, ""),
        ]
    )
    assert (ready.status, ready.reason, ready.message) == (False, "GatewayUnavailable", "GatewaySynced: down")


def test_status_is_only_patched_when_it_changes() -> None:
    ref = PipelineRef("p", "n", "u", generation=4)
    outcome = Reconciliation(
        conditions=(Condition("GatewaySynced", True, "Synced"), Condition("Ready", True, "Ready")),
        pending_count=3,
    )
    desired = desired_status({}, outcome, ref=ref, now="T1")
    assert desired["pendingCount"] == 3
    assert desired["observedGeneration"] == 4
    assert desired["pipelineId"] == "p"
    assert status_changes(desired, desired_status(desired, outcome, ref=ref, now="T2")) == {}
    moved = Reconciliation(conditions=outcome.conditions, pending_count=4)
    assert status_changes(desired, desired_status(desired, moved, ref=ref, now="T3")) == {"pendingCount": 4}


def test_claims_and_backoff() -> None:
    claims = [("2026-01-02T00:00:00Z", "b"), ("2026-01-01T00:00:00Z", "c"), ("2026-01-01T00:00:00Z", "a")]
    assert claim_owner(claims, "b") == "a"
    assert claim_owner([], "b") == "b"
    assert [backoff(n) for n in (0, 1, 2, 5, 6, 50)] == [1, 2, 4, 32, 60, 60]


def test_query_and_settings() -> None:
    assert prometheus_query("product-images") == (
        'sum(layer_pipeline_stage_count{pipeline_id="product-images",stage="pending"}) or vector(0)'
    )
    settings = load_settings(OperatorSettings, environ={"OPERATOR_GATEWAY_ADDRESS": "gw.layer:50051"})
    assert settings.metrics_base_url == "http://gw.layer:8080"
    assert settings.liveness_endpoint == "http://127.0.0.1:9105/healthz"
    settings = load_settings(
        OperatorSettings,
        environ={"OPERATOR_GATEWAY_HTTP_URL": "http://gw:8080/", "OPERATOR_NAMESPACES": "a, b"},
    )
    assert settings.metrics_base_url == "http://gw:8080"
    assert settings.namespaces == ("a", "b")
    for env, value in [
        ("OPERATOR_GATEWAY_ADDRESS", "no-port"),
        ("OPERATOR_GATEWAY_HTTP_URL", "gw:8080"),
        ("OPERATOR_NAMESPACES", "Bad_NS"),
        ("OPERATOR_STATUS_INTERVAL_SECONDS", "0"),
        ("OPERATOR_POOL_NODE_LABEL", "bad label"),
    ]:
        with pytest.raises(ConfigError, match=env):
            load_settings(OperatorSettings, environ={env: value})


def _list_items(value: Any) -> list[Any]:
    found: list[Any] = []
    if isinstance(value, dict):
        for item in value.values():
            found.extend(_list_items(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(_nested(item))
    return found


def _nested(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [v for item in value.values() for v in [item, *_nested(item)]]
    if isinstance(value, list):
        return [v for item in value for v in [item, *_nested(item)]]
    return []


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what the API server does with merge-patch+json)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return strip_nones(result)


def test_kubeconfig_current_context(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "token").write_text("secret-token\n")
    config = {
        "current-context": "prod",
        "contexts": [
            {"name": "dev", "context": {"cluster": "dev", "user": "dev"}},
            {"name": "prod", "context": {"cluster": "prod", "user": "robot", "namespace": "layer"}},
        ],
        "clusters": [
            {"name": "dev", "cluster": {"server": "http://127.0.0.1:1"}},
            {
                "name": "prod",
                "cluster": {"server": "https://k8s.example:6443/", "certificate-authority": "ca.crt"},
            },
        ],
        "users": [{"name": "robot", "user": {"tokenFile": "token"}}],
    }
    path = tmp_path / "config"
    path.write_text(json.dumps(config))
    info = connection_from_kubeconfig(path)
    assert info.server == "https://k8s.example:6443"
    assert info.ca_path == str(tmp_path / "ca.crt")
    assert info.token == "secret-token"
    assert info.default_namespace == "layer"
    assert info.as_http_headers() == {"Authorization": "Bearer secret-token"}
    config["current-context"] = "staging"
    path.write_text(json.dumps(config))
    with pytest.raises(LoginError, match="staging"):
        connection_from_kubeconfig(path)
    with pytest.raises(LoginError, match="cannot read"):
        login(str(tmp_path / "missing"))
