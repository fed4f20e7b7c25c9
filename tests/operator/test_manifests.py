"""The manifests: the CRDs of deploy/crds and what the operator renders.

Built-in kinds are validated with ``kubernetes-validate --strict`` (an unknown
kind is only a warning there, so any WARN line fails the test); ScaledObjects
with KEDA's models from ``cloudcoil-models-keda``, round-tripped so that an
unknown or misspelt field fails too. The CRD's openAPIV3Schema is exercised
by a small structural validator below (types, required, enums, patterns,
bounds, defaults; CEL rules are not evaluated here).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from hypothesis import given, settings
from hypothesis import strategies as st
from support.manifests import SEED_PIPELINE, kubernetes_validate, without_nones

from hevlayer.common.config import describe_settings, settings_classes
from hevlayer.common.errors import InvalidArgument
from hevlayer.common.server import ServerSettings
from hevlayer.operator import (
    Admission,
    Refusal,
    RenderContext,
    admit,
    parse_infra_rules,
    parse_pipeline,
    render_deployment,
    render_extract_deployment,
    render_extract_scaled_object,
    render_scaled_object,
)

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "deploy" / "crds" / "pipeline.yaml"
INFRA_CRD = ROOT / "deploy" / "crds" / "infrarules.yaml"
DOCS = ROOT / "docs" / "operator.md"
CTX = RenderContext(
    gateway_address="layer-gateway.layer.svc.cluster.local:50051",
    gateway_http_url="http://layer-gateway.layer.svc.cluster.local:8080",
)


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


# --------------------------------------------------------------------------- deploy/crds
# The suite's own manifests are the Helm chart's (deploy/helm/hevlayer, whose crds/ link to
# deploy/crds), rendered and validated by tests/deploy/test_helm_chart.py.


def test_crds_validate_strictly() -> None:
    kubernetes_validate([CRD, INFRA_CRD])


def test_crds_kustomization_lists_both_crds() -> None:
    crds = yaml.safe_load((CRD.parent / "kustomization.yaml").read_text())
    assert crds["resources"] == ["pipeline.yaml", "infrarules.yaml"]


# --------------------------------------------------------------------------- rendered objects


SPECS: list[dict[str, Any]] = [
    {},
    {"paused": True},
    {"scaling": {"mode": "fixed", "replicas": {"min": 3, "max": 8}}},
    {"scaling": {"mode": "disabled"}},
    {
        "distanceMetric": "euclidean_squared",
        "worker": {
            "image": "ghcr.io/hev/gpu-embed-worker:1.2.3",
            "env": [
                {"name": "MODEL", "value": "minilm"},
                {"name": "HEVLAYER_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ],
            "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "8Gi"}, "requests": {"cpu": "2"}},
        },
        "scaling": {"pool": "gpu", "replicas": {"min": 1, "max": 4}},
    },
    {
        "scaling": {"targetPerReplica": 20, "replicas": {"min": 0, "max": 4}},
        "extract": {"image": "ghcr.io/hev/extract:1", "pool": "cpu", "replicas": {"min": 0, "max": 6}},
    },
    {
        "extract": {
            "image": "ghcr.io/hev/extract:1",
            "trigger": {
                "type": "kafka",
                "metadata": {
                    "bootstrapServers": "kafka:9092",
                    "consumerGroup": "g",
                    "topic": "t",
                    "lagThreshold": "5",
                },
                "authenticationRef": {"name": "kafka-auth"},
            },
        }
    },
    {"scaling": {"mode": "fixed", "replicas": {"min": 2, "max": 2}}, "extract": {"image": "ghcr.io/hev/e:1"}},
]


@functools.cache
def docs_infra_rules() -> dict[str, Any]:
    """The InfraRules/default example of docs/operator.md."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    [example] = [yaml.safe_load(b) for b in blocks if "kind: InfraRules" in b]
    assert isinstance(example, dict)
    return example


def admitted(body: dict[str, Any]) -> Admission:
    admission = admit(parse_pipeline(body), parse_infra_rules(docs_infra_rules()))
    assert isinstance(admission, Admission), admission
    return admission


def rendered_objects(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the operator renders for ``body`` under the docs' InfraRules."""
    admission = admitted(body)
    pipeline = admission.pipeline
    found = [
        render_deployment(pipeline, CTX, admission.pool),
        render_scaled_object(pipeline, CTX),
        render_extract_deployment(pipeline, CTX, admission.extract_pool),
        render_extract_scaled_object(pipeline, CTX),
    ]
    return [o for o in found if o is not None]


def seed_pipeline(extra: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(SEED_PIPELINE)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(body["spec"].get(key), dict):
            body["spec"][key] = {**body["spec"][key], **value}
        else:
            body["spec"][key] = value
    return body


def test_rendered_deployments_validate_strictly(tmp_path: Path) -> None:
    """Every Deployment, with and without InfraRules pools, validates (kubernetes-validate --strict)."""
    paths = []
    for index, extra in enumerate(SPECS):
        pipeline = parse_pipeline(seed_pipeline(extra))
        bodies = [render_deployment(pipeline, CTX)]
        bodies += [o for o in rendered_objects(seed_pipeline(extra)) if o["kind"] == "Deployment"]
        for number, body in enumerate(bodies):
            path = tmp_path / f"deployment-{index}-{number}.yaml"
            path.write_text(yaml.safe_dump(without_nones(body)))
            paths.append(path)
    assert len(paths) > 2 * len(SPECS)
    kubernetes_validate(paths)


@pytest.mark.parametrize("extra", SPECS)
def test_rendered_scaled_objects_match_kedas_model(extra: dict[str, Any]) -> None:
    pipeline = parse_pipeline(seed_pipeline(extra))
    scaled = render_scaled_object(pipeline, CTX)
    assert (scaled is None) == (pipeline.spec.fixed_replicas is not None)
    extract = render_extract_scaled_object(pipeline, CTX)
    assert (extract is None) == (pipeline.spec.extract is None or pipeline.spec.extract_replicas is not None)
    for obj in (scaled, extract):
        if obj is not None:
            model = ScaledObject.model_validate(obj)
            # The model drops unknown fields: a round trip must give the same object back.
            assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == obj


def test_extract_workers_scale_on_the_extract_stage_or_the_given_trigger() -> None:
    on_stage = render_extract_scaled_object(parse_pipeline(seed_pipeline(SPECS[5])), CTX)
    assert on_stage is not None
    assert on_stage["metadata"]["name"] == "product-images-extract"
    assert on_stage["spec"]["scaleTargetRef"]["name"] == "product-images-extract"
    assert (on_stage["spec"]["minReplicaCount"], on_stage["spec"]["maxReplicaCount"]) == (0, 6)
    assert on_stage["spec"]["triggers"] == [
        {
            "type": "prometheus",
            "metadata": {
                "serverAddress": "http://layer-gateway.layer.svc.cluster.local:8080/v2/metrics",
                "metricName": "product_images_extract",
                "query": 'sum(layer_pipeline_stage_count{pipeline_id="product-images",stage="extract"}) '
                "or vector(0)",
                "threshold": "50",
                "activationThreshold": "1",
            },
        }
    ]
    kafka = render_extract_scaled_object(parse_pipeline(seed_pipeline(SPECS[6])), CTX)
    assert kafka is not None
    assert kafka["spec"]["triggers"] == [
        {
            "type": "kafka",
            "metadata": {
                "bootstrapServers": "kafka:9092",
                "consumerGroup": "g",
                "topic": "t",
                "lagThreshold": "5",
            },
            "authenticationRef": {"name": "kafka-auth"},
        }
    ]
    fixed = parse_pipeline(seed_pipeline(SPECS[7]))
    deployment = render_extract_deployment(fixed, CTX)
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 0  # extract replicas.min defaults to 0
    worker = render_deployment(fixed, CTX)
    # The two Deployments select disjoint pods.
    assert deployment["spec"]["selector"] != worker["spec"]["selector"]
    assert render_extract_deployment(parse_pipeline(seed_pipeline({})), CTX) is None


# --------------------------------------------------------------------------- InfraRules


def test_docs_infra_rules_match_the_crd_and_give_the_gpu_pool_a_gpu() -> None:
    example = docs_infra_rules()
    crd = yaml.safe_load(INFRA_CRD.read_text())
    assert crd["spec"]["scope"] == "Cluster"
    [version] = crd["spec"]["versions"]
    assert structural_errors(version["schema"]["openAPIV3Schema"], example) == []
    assert example["metadata"]["name"] == "default"
    rules = parse_infra_rules(example)
    gpu = rules.pools["gpu"]
    assert gpu.resources is not None
    assert gpu.resources["requests"]["nvidia.com/gpu"] == gpu.resources["limits"]["nvidia.com/gpu"] == "1"
    assert gpu.tolerations
    assert gpu.max_replicas is not None
    # The GPU pool's worker requests the GPU; its own memory limit is kept.
    body = seed_pipeline(SPECS[4])
    body["spec"]["worker"]["env"] = [{"name": "MODEL", "value": "minilm"}]
    body["spec"]["worker"]["resources"] = {"limits": {"nvidia.com/gpu": 2, "memory": "8Gi"}}
    [deployment, *_] = rendered_objects(body)
    pod = deployment["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"] == {"nvidia.com/gpu": "2", "memory": "8Gi"}  # the Pipeline's entries win
    assert resources["requests"] == {"nvidia.com/gpu": "1"}  # the pool's default
    assert pod["tolerations"] == [dict(t) for t in gpu.tolerations]
    assert pod["nodeSelector"] == dict(gpu.node_selector)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"pools": [{"name": "a"}, {"name": "a"}]}, "spec.pools[1].name"),
        ({"pools": [{"name": "a", "maxReplicas": -1}]}, "spec.pools[0].maxReplicas"),
        ({"pools": [{"name": "a", "tolerations": [{"keys": "x"}]}]}, "spec.pools[0].tolerations[0].keys"),
        ({"pools": [{"name": "a", "nodeSelector": {"bad key!": "x"}}]}, "spec.pools[0].nodeSelector"),
        ({"allowedImages": "ghcr.io/*"}, "spec.allowedImages"),
        ({"allowedEnv": {"valueFrom": ["secretRef"]}}, "spec.allowedEnv.valueFrom[0]"),
    ],
)
def test_invalid_infra_rules_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_infra_rules({"spec": spec})
    assert error.value.message.startswith(field), error.value.message


def test_admission_caps_replicas_at_the_pool_ceiling() -> None:
    rules = parse_infra_rules(
        {"spec": {"pools": [{"name": "cpu", "maxReplicas": 3}], "allowedImages": ["ghcr.io/hev/*"]}}
    )
    fixed = seed_pipeline({"scaling": {"pool": "cpu", "mode": "fixed", "replicas": {"min": 5, "max": 8}}})
    admission = admit(parse_pipeline(fixed), rules)
    assert isinstance(admission, Admission)
    assert (admission.pipeline.spec.scaling.min_replicas, admission.pipeline.spec.scaling.max_replicas) == (
        3,
        3,
    )
    assert admission.notes == ("worker replicas capped at 3 (pool 'cpu' ceiling)",)
    assert render_deployment(admission.pipeline, CTX, admission.pool)["spec"]["replicas"] == 3
    within = admit(parse_pipeline(seed_pipeline({"scaling": {"replicas": {"min": 0, "max": 2}}})), rules)
    assert isinstance(within, Admission)
    assert within.notes == ()
    refused = admit(
        parse_pipeline(seed_pipeline({"extract": {"image": "ghcr.io/hev/e:1", "pool": "gpu"}})), rules
    )
    assert refused == Refusal(
        "UnknownPool", "spec.extract.pool: pool 'gpu' is not in InfraRules/default (pools: cpu)"
    )


# --------------------------------------------------------------------------- env the services read


def embedder_settings_env() -> dict[str, type[Any]]:
    """Every variable the embedder process reads, with the settings class reading it."""
    from hevlayer.client.settings import ClientTLSSettings
    from hevlayer.embedder import settings as embedder_settings

    read: dict[str, type[Any]] = {}
    for cls in [*settings_classes(embedder_settings), ServerSettings, ClientTLSSettings]:
        read.update(dict.fromkeys((row.env for row in describe_settings(cls)), cls))
    return read


@pytest.mark.parametrize("extra", SPECS)
def test_every_variable_a_rendered_worker_sets_is_read_by_the_embedder(extra: dict[str, Any]) -> None:
    """Workers run hevlayer-embedder (or a worker speaking its settings): every variable the
    operator sets on a worker or extract container is one the embedder's settings read.
    (Variables the Pipeline itself lists in env are the user's, checked by InfraRules.)"""
    read = embedder_settings_env()
    body = seed_pipeline(extra)
    user = {e["name"] for key in ("worker", "extract") for e in body["spec"].get(key, {}).get("env", [])}
    pipeline = parse_pipeline(body)
    objects = [render_deployment(pipeline, CTX), render_extract_deployment(pipeline, CTX)]
    names = {
        e["name"] for obj in objects if obj is not None for c in containers(obj) for e in c["env"]
    } - user
    assert names, "the operator sets the pipeline id and the gateway address at least"
    assert sorted(n for n in names if n not in read) == []


def test_the_rendered_worker_environment_configures_the_embedder_worker() -> None:
    """batchSize and timeoutSeconds of the seed's example, loaded by the embedder's own
    settings from the rendered container's environment."""
    from hevlayer.common.config import load_settings
    from hevlayer.embedder.settings import WorkerSettings

    pipeline = parse_pipeline(yaml.safe_load(SEED_PIPELINE))
    [container] = containers(render_deployment(pipeline, CTX))
    environ = {e["name"]: e["value"] for e in container["env"]}
    settings = load_settings(WorkerSettings, environ=environ)
    settings.validate()
    assert settings.pipeline_ids == ("product-images",)
    assert settings.gateway == "layer-gateway.layer.svc.cluster.local:50051"
    assert settings.max_documents == 64  # spec.worker.batchSize
    assert settings.lease_seconds == 60  # spec.worker.timeoutSeconds
    assert settings.drain_seconds == 60.0
    grace = render_deployment(pipeline, CTX)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.drain_seconds
    # Without batchSize / timeoutSeconds the worker keeps its own defaults.
    bare = seed_pipeline({})
    bare["spec"]["worker"] = {"image": "ghcr.io/hev/product-image-worker:latest"}
    [container] = containers(render_deployment(parse_pipeline(bare), CTX))
    environ = {e["name"]: e["value"] for e in container["env"]}
    defaults = load_settings(WorkerSettings, environ={})
    loaded = load_settings(WorkerSettings, environ=environ)
    assert (loaded.max_documents, loaded.lease_seconds) == (defaults.max_documents, defaults.lease_seconds)


def test_seed_example_renders_the_seed_trigger() -> None:
    scaled = render_scaled_object(parse_pipeline(yaml.safe_load(SEED_PIPELINE)), CTX)
    assert scaled is not None
    assert scaled["spec"]["triggers"] == [
        {
            "type": "prometheus",
            "metadata": {
                "serverAddress": "http://layer-gateway.layer.svc.cluster.local:8080/v2/metrics",
                "metricName": "product_images_pending",
                "query": 'sum(layer_pipeline_stage_count{pipeline_id="product-images",stage="pending"}) '
                "or vector(0)",
                "threshold": "50",
                "activationThreshold": "1",
            },
        }
    ]
    # Exactly the seed's ScaledObject (its name and target are the operator's, as documented).
    assert scaled["spec"]["minReplicaCount"] == 0
    assert scaled["spec"]["maxReplicaCount"] == 8
    # Another target per replica only when the resource asks for one.
    other = seed_pipeline({"scaling": {"targetPerReplica": 64, "activationThreshold": 5}})
    asked = render_scaled_object(parse_pipeline(other), CTX)
    assert asked is not None
    assert asked["spec"]["triggers"][0]["metadata"]["threshold"] == "64"
    assert asked["spec"]["triggers"][0]["metadata"]["activationThreshold"] == "5"


# --------------------------------------------------------------------------- the CRD


@functools.cache
def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    [version] = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def structural_errors(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Errors of ``value`` against an OpenAPI v3 (structural) schema, CEL rules aside."""
    if "anyOf" in schema:
        if all(structural_errors(option, value, path) for option in schema["anyOf"]):
            return [f"{path}: matches no anyOf option"]
        return []
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    if kind is not None and not checks[kind](value):
        return [f"{path}: expected {kind}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if kind == "string":
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: too short")
    if kind == "integer" and not schema.get("minimum", value) <= value <= schema.get("maximum", value):
        errors.append(f"{path}: out of bounds")
    if kind == "object" and isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}.{key}: required")
        properties = schema.get("properties")
        for key, item in value.items():
            if properties is not None and key in properties:
                errors += structural_errors(properties[key], item, f"{path}.{key}")
            elif "additionalProperties" in schema:
                errors += structural_errors(schema["additionalProperties"], item, f"{path}.{key}")
            elif properties is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{key}: unknown field (pruned by the API server)")
    if kind == "array" and isinstance(value, list):
        for index, item in enumerate(value):
            errors += structural_errors(schema["items"], item, f"{path}[{index}]")
    return errors


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it (absent fields with a default)."""
    if not isinstance(value, dict) or schema.get("type") != "object":
        return value
    result = dict(value)
    for key, sub in schema.get("properties", {}).items():
        if key not in result and "default" in sub:
            result[key] = copy.deepcopy(sub["default"])
        if key in result:
            result[key] = apply_defaults(sub, result[key])
    return result


def test_crd_accepts_the_seed_example() -> None:
    schema = crd_schema()
    assert structural_errors(schema, yaml.safe_load(SEED_PIPELINE)) == []
    for extra in SPECS:
        assert structural_errors(schema, seed_pipeline(extra)) == [], extra


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"worker": {"batchSize": 0}}, ".spec.worker.batchSize: out of bounds"),
        ({"distanceMetric": "dot"}, ".spec.distanceMetric: 'dot' not in"),
        ({"scaling": {"mode": "auto"}}, ".spec.scaling.mode: 'auto' not in"),
        ({"target": {"namespace": "has-dash"}}, ".spec.target.namespace: does not match"),
        ({"paused": "yes"}, ".spec.paused: expected boolean"),
        ({"workers": {}}, ".spec.workers: unknown field"),
        ({"deletionPolicy": "purge"}, ".spec.deletionPolicy: 'purge' not in"),
        ({"worker": {"batchSize": 10_001}}, ".spec.worker.batchSize: out of bounds"),
        (
            {"extract": {"image": "x:1", "trigger": {"type": "cron", "metadata": {}}}},
            ".spec.extract.trigger.type",
        ),
        ({"extract": {"pool": "cpu"}}, ".spec.extract.image: required"),
        ({"scaling": {"targetPerReplica": 0}}, ".spec.scaling.targetPerReplica: out of bounds"),
    ],
)
def test_crd_rejects_invalid_specs(extra: dict[str, Any], error: str) -> None:
    errors = structural_errors(crd_schema(), seed_pipeline(extra))
    assert any(e.startswith(error) for e in errors), errors


@given(
    mode=st.none() | st.sampled_from(["autoscale", "fixed", "disabled"]),
    low=st.none() | st.integers(0, 5),
    high=st.none() | st.integers(5, 10),
    paused=st.none() | st.booleans(),
    metric=st.none() | st.sampled_from(["cosine_distance", "euclidean_squared"]),
    pool=st.none() | st.just("gpu"),
)
@settings(max_examples=100, deadline=None)
def test_operator_defaults_are_the_crds(
    mode: str | None,
    low: int | None,
    high: int | None,
    paused: bool | None,
    metric: str | None,
    pool: str | None,
) -> None:
    """A spec the API server defaulted parses exactly like the raw spec (the operator
    applies the CRD's defaults itself, so it behaves the same on either)."""
    replicas = {k: v for k, v in (("min", low), ("max", high)) if v is not None}
    scaling: dict[str, Any] = {k: v for k, v in (("mode", mode), ("pool", pool)) if v is not None}
    if replicas:
        scaling["replicas"] = replicas
    spec: dict[str, Any] = {"worker": {"image": "w:1"}}
    for key, value in (("scaling", scaling or None), ("paused", paused), ("distanceMetric", metric)):
        if value is not None:
            spec[key] = value
    body = {
        "apiVersion": "hevlayer.com/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "p"},
        "spec": spec,
    }
    schema = crd_schema()
    defaulted = apply_defaults(schema, body)
    assert structural_errors(schema, defaulted) == []
    if (low or 0) > (high or 1):  # the CRD's CEL rule rejects it; so does the operator
        for candidate in (body, defaulted):
            with pytest.raises(InvalidArgument, match=r"spec\.scaling\.replicas"):
                parse_pipeline(candidate)
        return
    assert dataclasses.asdict(parse_pipeline(defaulted).spec) == dataclasses.asdict(parse_pipeline(body).spec)


@pytest.mark.parametrize("path", [CRD, INFRA_CRD], ids=["pipeline", "infrarules"])
def test_printer_columns_point_at_schema_fields(path: Path) -> None:
    crd = yaml.safe_load(path.read_text())
    [version] = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    for column in version["additionalPrinterColumns"]:
        parts = re.sub(r"\[[?*].*?\]", "", column["jsonPath"]).strip(".").split(".")
        if parts[0] == "metadata":
            continue
        node = schema
        for part in parts:
            node = node.get("properties", {}).get(part) or node.get("items", {}).get("properties", {}).get(
                part
            )
            assert node is not None, column
    if path == INFRA_CRD:
        return
    assert version["subresources"] == {"status": {}}
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[:8] == ["Mode", "Min", "Max", "Paused", "Pending", "Ready", "Replicas", "Pool"]
    status = schema["properties"]["status"]["properties"]
    assert {"conditions", "observedGeneration", "pendingCount", "replicas", "readyReplicas"} <= set(status)
    assert {"extractReplicas", "extractReadyReplicas"} <= set(status)
