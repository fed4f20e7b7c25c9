"""The manifests: deploy/k8s, the Pipeline CRD, and what the operator renders.

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
import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from hypothesis import given, settings
from hypothesis import strategies as st

from hevlayer.common.config import describe_settings, settings_classes
from hevlayer.common.errors import InvalidArgument
from hevlayer.common.server import ServerSettings
from hevlayer.operator import RenderContext, parse_pipeline, render_deployment, render_scaled_object

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CRD = ROOT / "deploy" / "crds" / "pipeline.yaml"
CTX = RenderContext(
    gateway_address="layer-gateway.layer.svc.cluster.local:50051",
    gateway_http_url="http://layer-gateway.layer.svc.cluster.local:8080",
)
SEED_EXAMPLE = """
apiVersion: hevlayer.com/v1alpha1
kind: Pipeline
metadata:
  name: product-images
  namespace: layer
  uid: 6b3a55a2-3f0e-4d38-9d7e-5c0e1f0a2b11
spec:
  target:
    namespace: products
  worker:
    image: ghcr.io/hev/product-image-worker:latest
    batchSize: 64
    timeoutSeconds: 60
  scaling:
    pool: cpu
    mode: autoscale
    replicas:
      min: 0
      max: 8
"""


def kubernetes_validate(paths: list[Path]) -> None:
    """``kubernetes-validate --strict`` on ``paths``; fail on any error or warning."""
    script = Path(sys.executable).with_name("kubernetes-validate")
    result = subprocess.run(
        [str(script), "--strict", *map(str, paths)], capture_output=True, text=True, timeout=120
    )
    problems = [line for line in result.stdout.splitlines() if not line.startswith("INFO ")]
    assert problems == [], result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> Iterator[dict[str, Any]]:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            yield doc


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


# --------------------------------------------------------------------------- deploy/


def test_deploy_manifests_validate_strictly() -> None:
    kubernetes_validate([*manifest_files(), CRD])


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "layer"
    resources = kustomization["resources"]
    for resource in resources:
        assert (K8S / resource).exists(), resource
    assert sorted(r for r in resources if not r.startswith("..")) == [p.name for p in manifest_files()]
    assert "../crds" in resources
    crds = yaml.safe_load((CRD.parent / "kustomization.yaml").read_text())
    assert crds["resources"] == ["pipeline.yaml"]
    images = {image["name"] for image in kustomization["images"]}
    used = {
        c["image"].rsplit(":", 1)[0]
        for path in manifest_files()
        for doc in documents(path)
        for c in containers(doc)
        if c["image"].startswith("ghcr.io/hev/")
    }
    assert used == images


def test_services_expose_the_documented_ports() -> None:
    services = {
        doc["metadata"]["name"]: {p["name"]: p["port"] for p in doc["spec"]["ports"]}
        for path in manifest_files()
        for doc in documents(path)
        if doc["kind"] == "Service"
    }
    assert services["layer-gateway"] == {"grpc": 50051, "http": 8080}
    assert services["layer-claimer"] == {"grpc": 50052, "http": 9102}
    assert services["layer-embedder"] == {"grpc": 50053, "http": 9103}
    assert services["layer-triton"] == {"http": 8000, "grpc": 8001, "metrics": 8002}


def test_claimer_reads_the_database_url_from_a_secret() -> None:
    [claimer] = [d for d in documents(K8S / "claimer.yaml") if d["kind"] == "Deployment"]
    env = {e["name"]: e for e in containers(claimer)[0]["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "layer-database", "key": "url"}


def test_embedders_use_the_gpu_triton_serving_deploy_triton() -> None:
    [triton] = [d for d in documents(K8S / "triton.yaml") if d["kind"] == "Deployment"]
    [server] = [c for c in containers(triton) if c["name"] == "triton"]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model-repository=/models" in server["args"]
    assert triton["spec"]["template"]["spec"]["nodeSelector"] == {"hevlayer.com/pool": "gpu"}
    models = list((ROOT / "deploy" / "triton" / "model_repository").glob("*/config.pbtxt"))
    assert any(m.parent.name == "minilm" for m in models), "deploy/triton serves the minilm ensemble"
    [embedder] = [d for d in documents(K8S / "embedder.yaml") if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in containers(embedder)[0]["env"]}
    assert env["EMBEDDER_TRITON_URL"] == "layer-triton.layer.svc.cluster.local:8001"
    assert env["EMBEDDER_MODEL_NAME"] == "minilm"


def test_every_variable_in_the_manifests_is_a_setting() -> None:
    """Env names in deploy/k8s are real settings (docs/configuration.md lists them)."""
    known = {row.env for row in describe_settings(ServerSettings)}
    for path in sorted(ROOT.glob("*/*/src/hevlayer/**/settings.py")):
        parts = path.with_suffix("").parts
        module = importlib.import_module(".".join(parts[parts.index("src") + 1 :]))
        for cls in settings_classes(module):
            known |= {row.env for row in describe_settings(cls)}
    used: dict[str, str] = {}
    for path in manifest_files():
        for doc in documents(path):
            if doc["kind"] == "ConfigMap":
                used.update(dict.fromkeys(doc["data"], path.name))
            for container in containers(doc):
                used.update({e["name"]: path.name for e in container.get("env", [])})
    unknown = {name: where for name, where in used.items() if name not in known}
    assert unknown == {}


def test_operator_rbac_covers_its_calls() -> None:
    [role] = [d for d in documents(K8S / "operator.yaml") if d["kind"] == "ClusterRole"]

    def allowed(group: str, resource: str, verb: str) -> bool:
        return any(
            group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
            for rule in role["rules"]
        )

    needed = [("hevlayer.com", "pipelines", v) for v in ("get", "list", "watch", "patch")] + [
        ("hevlayer.com", "pipelines/status", "patch"),
        ("", "events", "create"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    ]
    for group, resource in (("apps", "deployments"), ("keda.sh", "scaledobjects")):
        needed += [(group, resource, v) for v in ("get", "create", "patch", "delete")]
    assert [n for n in needed if not allowed(*n)] == []
    [binding] = [d for d in documents(K8S / "operator.yaml") if d["kind"] == "ClusterRoleBinding"]
    [deployment] = [d for d in documents(K8S / "operator.yaml") if d["kind"] == "Deployment"]
    assert binding["subjects"][0]["name"] == deployment["spec"]["template"]["spec"]["serviceAccountName"]
    probe = containers(deployment)[0]["livenessProbe"]["httpGet"]
    env = {e["name"]: e["value"] for e in containers(deployment)[0]["env"]}
    assert probe["path"] == "/healthz"
    assert env["OPERATOR_HEALTH_ADDRESS"] == "0.0.0.0:8080"


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
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ],
            "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "8Gi"}, "requests": {"cpu": "2"}},
        },
        "scaling": {"pool": "gpu", "replicas": {"min": 1, "max": 4}},
    },
]


def seed_pipeline(extra: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(SEED_EXAMPLE)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(body["spec"].get(key), dict):
            body["spec"][key] = {**body["spec"][key], **value}
        else:
            body["spec"][key] = value
    return body


def test_rendered_deployments_validate_strictly(tmp_path: Path) -> None:
    paths = []
    for index, extra in enumerate(SPECS):
        pipeline = parse_pipeline(seed_pipeline(extra))
        path = tmp_path / f"deployment-{index}.yaml"
        body = render_deployment(pipeline, CTX)
        path.write_text(yaml.safe_dump(_without_nones(body)))
        paths.append(path)
    kubernetes_validate(paths)


@pytest.mark.parametrize("extra", SPECS)
def test_rendered_scaled_objects_match_kedas_model(extra: dict[str, Any]) -> None:
    pipeline = parse_pipeline(seed_pipeline(extra))
    scaled = render_scaled_object(pipeline, CTX)
    assert (scaled is None) == (pipeline.spec.fixed_replicas is not None)
    if scaled is not None:
        model = ScaledObject.model_validate(scaled)
        # The model drops unknown fields: a round trip must give the same object back.
        assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == scaled


def test_seed_example_renders_the_seed_trigger() -> None:
    scaled = render_scaled_object(parse_pipeline(yaml.safe_load(SEED_EXAMPLE)), CTX)
    assert scaled is not None
    assert scaled["spec"]["triggers"] == [
        {
            "type": "prometheus",
            "metadata": {
                "serverAddress": "http://layer-gateway.layer.svc.cluster.local:8080/v2/metrics",
                "metricName": "product_images_pending",
                "query": 'sum(layer_pipeline_stage_count{pipeline_id="product-images",stage="pending"}) '
                "or vector(0)",
                "threshold": "64",
                "activationThreshold": "1",
            },
        }
    ]


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
    assert structural_errors(schema, yaml.safe_load(SEED_EXAMPLE)) == []
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


def test_printer_columns_point_at_schema_fields() -> None:
    crd = yaml.safe_load(CRD.read_text())
    [version] = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    assert version["subresources"] == {"status": {}}
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[:6] == ["Mode", "Min", "Max", "Paused", "Pending", "Ready"]
    for column in version["additionalPrinterColumns"]:
        path = re.sub(r"\[\?.*?\]", "", column["jsonPath"]).strip(".").split(".")
        if path[0] == "metadata":
            continue
        node = schema
        for part in path:
            node = node.get("properties", {}).get(part) or node.get("items", {}).get("properties", {}).get(
                part
            )
            assert node is not None, column
    status = schema["properties"]["status"]["properties"]
    assert {"conditions", "observedGeneration", "pendingCount"} <= set(status)


def _without_nones(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nones(v) for v in value]
    return value
