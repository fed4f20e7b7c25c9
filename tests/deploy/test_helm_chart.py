"""The Helm chart deploy/helm/hevlayer, rendered and checked without a cluster.

No kube-apiserver, kubelet or Docker daemon runs here, so nothing is applied: the chart is
rendered by Helm's own engine (``helm_render``, helm-python-sdk, no helm binary) for the
default values and the values files of ``deploy/helm/hevlayer/ci`` (production: external
PostgreSQL, S3, Milvus, three gateways, TLS; gpu: Turbopuffer, the embedded PostgreSQL and a
GPU Pipeline), then:

- every built-in object passes ``kubernetes-validate --strict`` (any WARN line, such as an
  unknown kind, fails); InfraRules and Pipelines validate against the chart's own CRDs (unknown
  fields fail); a ServiceMonitor against Prometheus Operator's model; no other kind may appear;
- what the operator would render from the chart's InfraRules and Pipelines (the chart itself
  renders no KEDA object) validates too, the ScaledObject against KEDA's model;
- values that would deploy something broken fail at template time with the reason (Milvus Lite
  behind more than one gateway replica first);
- every variable set on a hevlayer container is one its service's settings read (the settings
  classes its ``main`` loads), and with the default values each service's settings load from
  the rendered environment;
- NetworkPolicies admit exactly the documented peers; replicated Deployments have a
  PodDisruptionBudget; probes, security contexts, RBAC, tokens and images are as documented.
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from deploy.helm_render import CHART, NAMESPACE, ROOT, RenderError, chart_crds, lint, render
from support.manifests import SEED_PIPELINE, kubernetes_validate, without_nones

from hevlayer.common.auth import SeedToken, token_hash, token_id_of
from hevlayer.common.config import load_settings
from hevlayer.operator import (
    Admission,
    admit,
    parse_infra_rules,
    parse_pipeline,
    render_context,
    render_deployment,
    render_extract_deployment,
    render_extract_scaled_object,
    render_scaled_object,
)
from hevlayer.operator.render import labels as worker_labels
from hevlayer.operator.settings import OperatorSettings

CI = CHART / "ci"
VALUES = {
    "default": {},
    "production": yaml.safe_load((CI / "production-values.yaml").read_text()),
    "gpu": yaml.safe_load((CI / "gpu-values.yaml").read_text()),
    "milvus-lite": {"sink": {"kind": "milvus_lite"}, "gateway": {"replicas": 1}},
}
BUILT_IN = {
    "ConfigMap",
    "Secret",
    "Service",
    "Deployment",
    "PersistentVolumeClaim",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
}
# The containers that run a hevlayer service, and the module whose main() loads its settings.
SERVICES = {
    "gateway": "hevlayer.gateway.main",
    "claimer": "hevlayer.claimer.main",
    "embedder": "hevlayer.embedder.main",
    "summarizer": "hevlayer.summarizer.main",
    "operator": "hevlayer.operator.main",
    "extractor": "hevlayer.extractor.main",
}
# Containers of other images, with exactly the variables those images read.
THIRD_PARTY_ENV = {
    "postgresql": {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD", "PGDATA"},
    "triton": set(),
}


@functools.cache
def rendered(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(VALUES[name]))


def objects(name: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(rendered(name)))


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(deployment)
    return [*spec.get("initContainers", []), *spec["containers"]]


def secret_data(objs: list[dict[str, Any]], name: str) -> dict[str, str]:
    secret = named(objs, "Secret", name)
    data: dict[str, str] = dict(secret.get("stringData", {}))
    return data


def environment(objs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str | None]:
    """The container's variables: its ConfigMaps' keys, then env; a value read from a Secret
    the chart renders is resolved, one from a Secret it does not render is None."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, "variables come from the chart's ConfigMaps only"
        env.update(named(objs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        secrets = [s for s in of_kind(objs, "Secret") if s["metadata"]["name"] == ref["name"]]
        env[entry["name"]] = secrets[0]["stringData"][ref["key"]] if secrets else None
    return env


# --------------------------------------------------------------------------- validation


def closed(schema: Any) -> Any:
    """A CRD's openAPIV3Schema as JSON Schema that refuses unknown fields (the API server
    prunes them; here they are errors)."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {k: closed(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


@functools.cache
def crd_validators() -> dict[str, jsonschema.Draft7Validator]:
    validators = {}
    for crd in chart_crds().values():
        [version] = crd["spec"]["versions"]
        kind = crd["spec"]["names"]["kind"]
        validators[kind] = jsonschema.Draft7Validator(closed(version["schema"]["openAPIV3Schema"]))
    return validators


def service_monitor_model() -> Any:
    module = pytest.importorskip(
        "cloudcoil.models.prometheus_operator.v1",
        reason="ServiceMonitor model: cloudcoil-models-prometheus-operator (PyPI), not a dependency yet",
    )
    return module.ServiceMonitor


def validate_all(objs: list[dict[str, Any]], tmp_path: Path) -> None:
    built_in = [o for o in objs if o["kind"] in BUILT_IN]
    others = [o for o in objs if o["kind"] not in BUILT_IN]
    assert {o["kind"] for o in others} <= {"InfraRules", "Pipeline", "ServiceMonitor"}
    paths = []
    for index, obj in enumerate(built_in):
        path = tmp_path / f"{index:03d}-{obj['kind']}-{obj['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(obj))
        paths.append(path)
    kubernetes_validate(paths)
    for obj in others:
        if obj["kind"] == "ServiceMonitor":
            model = service_monitor_model().model_validate(obj)
            assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == obj
            continue
        errors = [e.message for e in crd_validators()[obj["kind"]].iter_errors(obj)]
        assert errors == [], (obj["metadata"]["name"], errors)


@pytest.mark.parametrize("name", list(VALUES))
def test_every_rendered_object_validates(name: str, tmp_path: Path) -> None:
    objs = objects(name)
    validate_all(objs, tmp_path)
    assert not of_kind(objs, "ScaledObject"), "KEDA objects are the operator's, per Pipeline"
    assert {o["metadata"].get("namespace", NAMESPACE) for o in objs if o["kind"] == "Deployment"} == {
        NAMESPACE
    }


def test_the_chart_lints_clean() -> None:
    for values in VALUES.values():
        report = lint(values)
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_chart_crds_are_deploy_crds() -> None:
    """crds/ links to deploy/crds: one copy, installed by Helm before the templates."""
    crds = chart_crds()
    assert sorted(crds) == ["crds/infrarules.yaml", "crds/pipeline.yaml"]
    for name, crd in crds.items():
        assert crd == yaml.safe_load((ROOT / "deploy" / name).read_text())
        assert (CHART / name).resolve() == (ROOT / "deploy" / name).resolve()


# --------------------------------------------------------------------------- refused values


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"sink": {"kind": "milvus_lite"}},
            "sink.kind=milvus_lite with gateway.replicas=2: one process owns a Milvus Lite file",
        ),
        (
            {"sink": {"kind": "milvus_lite"}, "gateway": {"replicas": 3}},
            "gateway.replicas=3: one process owns a Milvus Lite file, so each gateway replica would "
            "write its own index",
        ),
        ({"sink": {"kind": "milvus", "milvus": {"uri": ""}}}, "sink.milvus.uri: required"),
        ({"sink": {"kind": "turbopuffer", "turbopuffer": {"region": "r"}}}, "sink.turbopuffer.apiKey"),
        # values.schema.json refuses unknown keys and bad types before any template runs.
        ({"sink": {"kind": "faiss"}}, "at '/sink/kind': value must be one of 'milvus', 'turbopuffer'"),
        ({"gatway": {"replicas": 1}}, "at '': additional properties 'gatway' not allowed"),
        ({"gateway": {"replica": 3}}, "at '/gateway': additional properties 'replica' not allowed"),
        ({"pipeline": {"segmentSize": "10k"}}, "at '/pipeline/segmentSize': got string, want integer"),
        ({"claimer": {"replicas": 2}}, "postgresql.mode=embedded with claimer.replicas=2"),
        ({"postgresql": {"mode": "external"}}, "postgresql.external.existingSecret or"),
        ({"pipeline": {"segmentSize": 0}}, "at '/pipeline/segmentSize': minimum: got 0, want 1"),
        ({"s3": {"accessKeyId": "AKIA"}}, "s3.secretAccessKey: required with s3.accessKeyId"),
        ({"operator": {"clusterWide": True, "namespaces": ["a"]}}, "operator.namespaces: leave empty"),
    ],
)
def test_broken_values_fail_at_template_time(values: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError) as error:
        render(values)
    assert message in str(error.value)


def test_milvus_lite_runs_one_gateway_on_a_volume() -> None:
    objs = objects("milvus-lite")
    gateway = named(objs, "Deployment", "layer-gateway")
    assert gateway["spec"]["replicas"] == 1
    assert gateway["spec"]["strategy"] == {"type": "Recreate"}
    [container] = containers(gateway)
    env = environment(objs, container)
    path = env["GATEWAY_MILVUS_LITE_PATH"]
    assert path is not None
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "vectors"]
    assert Path(path).parent == Path(mount["mountPath"])
    [volume] = [v for v in pod_spec(gateway)["volumes"] if v["name"] == "vectors"]
    claim = named(objs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert not [p for p in of_kind(objs, "PodDisruptionBudget") if p["metadata"]["name"] == "layer-gateway"]


@pytest.mark.parametrize("name", list(VALUES))
def test_no_two_gateway_replicas_share_a_milvus_lite_file(name: str) -> None:
    objs = objects(name)
    gateway = named(objs, "Deployment", "layer-gateway")
    env = environment(objs, containers(gateway)[0])
    if env["GATEWAY_DEFAULT_SINK"] == "milvus_lite" or "GATEWAY_MILVUS_LITE_PATH" in env:
        assert gateway["spec"]["replicas"] == 1
    else:
        assert env["GATEWAY_DEFAULT_SINK"] in ("milvus", "turbopuffer")


# --------------------------------------------------------------------------- variables


def settings_read_by(module_name: str) -> list[type[Any]]:
    """The settings classes a service's main module loads (``load_or_exit(Cls)``), found in
    its source and resolved through its imports, without importing the main module."""
    spec = importlib.util.find_spec(module_name)
    assert spec is not None, module_name
    assert spec.origin is not None, module_name
    tree = ast.parse(Path(spec.origin).read_text())
    imported: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                imported[alias.asname or alias.name] = node.module
    classes = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "load_or_exit"
            and node.args
            and isinstance(node.args[0], ast.Name)
        ):
            name = node.args[0].id
            classes.append(getattr(importlib.import_module(imported[name]), name))
    assert classes, f"{module_name} loads no settings"
    return classes


def variables_read_by(module_name: str) -> set[str]:
    import dataclasses

    return {
        str(field.metadata["env"])
        for cls in settings_read_by(module_name)
        for field in dataclasses.fields(cls)
        if "env" in field.metadata
    }


def hevlayer_containers(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for deployment in of_kind(objs, "Deployment"):
        for container in containers(deployment):
            yield container["name"], container


@pytest.mark.parametrize("name", list(VALUES))
def test_every_variable_set_is_one_its_service_reads(name: str) -> None:
    objs = objects(name)
    seen = set()
    for container_name, container in hevlayer_containers(objs):
        seen.add(container_name)
        env = set(environment(objs, container))
        if container_name in THIRD_PARTY_ENV:
            assert env == THIRD_PARTY_ENV[container_name], container_name
            continue
        assert container_name in SERVICES, f"container {container_name!r} runs no known service"
        unknown = env - variables_read_by(SERVICES[container_name])
        assert sorted(unknown) == [], container_name
    assert {"gateway", "claimer", "embedder", "operator", "extractor"} <= seen


def test_default_values_give_settings_every_service_loads(tmp_path: Path) -> None:
    """The rendered environment of each service, loaded by that service's own settings classes
    (their validate() included): addresses, the sink, the DSN, the token files."""
    objs = objects("default")
    tokens = secret_data(objs, "layer-tokens")
    for key, content in tokens.items():
        (tmp_path / key).write_text(content)
    for container_name, container in hevlayer_containers(objs):
        if container_name in THIRD_PARTY_ENV:
            continue
        raw = environment(objs, container)
        assert None not in raw.values(), "default values read only Secrets the chart renders"
        environ = {
            k: str(v).replace("/etc/hevlayer/token/", f"{tmp_path}/") for k, v in raw.items() if v is not None
        }
        loaded = {
            cls.__name__: load_settings(cls, environ=environ)
            for cls in settings_read_by(SERVICES[container_name])
        }
        if container_name == "claimer":
            claimer = loaded["ClaimerSettings"]
            assert claimer.segment_size == 10000
            assert claimer.database_url.startswith("postgres://hevlayer:")
            assert claimer.database_url.endswith("@127.0.0.1:5432/hevlayer")
            assert claimer.internal_token == tokens["internal.token"]
        if container_name == "gateway":
            assert loaded["GatewaySettings"].claimer_address == "layer-claimer.layer.svc.cluster.local:50052"
            assert loaded["GatewaySettings"].internal_token == tokens["internal.token"]
            assert loaded["SinkSettings"].milvus_uri == "http://milvus:19530"
        if container_name == "embedder":
            worker = loaded["WorkerSettings"]
            assert worker.pipeline_ids == ("*",)
            assert worker.gateway == "layer-gateway.layer.svc.cluster.local:50051"
            assert loaded["EmbedderSettings"].triton_url == "layer-triton.layer.svc.cluster.local:8001"
            assert loaded["ClientTLSSettings"].api_token() == tokens["embedder-worker.token"]
        if container_name == "operator":
            assert loaded["OperatorSettings"].namespaces == (NAMESPACE,)
            assert loaded["ClientTLSSettings"].api_token() == tokens["admin.token"]
        if container_name == "summarizer":
            assert loaded["ClientTLSSettings"].api_token() == tokens["summarizer.token"]
        if container_name == "extractor":
            assert loaded["ExtractorSettings"].gateway == "layer-gateway.layer.svc.cluster.local:50051"
            assert loaded["ExtractorSettings"].pipelines == ("*",)
            assert loaded["ClientTLSSettings"].api_token() == tokens["extractor.token"]


def test_segment_size_defaults_to_the_seeds_ten_thousand() -> None:
    for name in VALUES:
        objs = objects(name)
        env = environment(objs, containers(named(objs, "Deployment", "layer-claimer"))[-1])
        assert env["PIPELINE_SEGMENT_SIZE"] == "10000", name
    custom = render({"pipeline": {"segmentSize": 2500}})
    assert named(custom, "ConfigMap", "layer-claimer")["data"]["PIPELINE_SEGMENT_SIZE"] == "2500"


# --------------------------------------------------------------------------- tokens and secrets


def test_generated_tokens_match_the_claimers_bootstrap_file() -> None:
    tokens = secret_data(objects("default"), "layer-tokens")
    entries = [
        SeedToken.from_json(entry, f"tokens[{i}]")
        for i, entry in enumerate(json.loads(tokens["bootstrap.json"])["tokens"])
    ]
    roles = {
        "admin.token": "admin",
        "embedder-worker.token": "worker",
        "summarizer.token": "stager",
        "extractor.token": "stager",
    }
    by_id = {entry.id: entry for entry in entries}
    assert len(by_id) == len(roles)
    for key, role in roles.items():
        secret = tokens[key]
        token_id = token_id_of(secret)
        assert token_id is not None, f"{key} is not a well-formed token"
        assert by_id[token_id].role == role
        assert by_id[token_id].hash == token_hash(secret)
        assert by_id[token_id].all_pipelines
    assert len(tokens["internal.token"]) >= 16
    # A second rendering (an upgrade without a cluster to look up) makes new secrets; on a
    # cluster, lookup reuses the existing Secret, and the Secret is kept on uninstall.
    tokens_secret = named(objects("default"), "Secret", "layer-tokens")
    assert tokens_secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_existing_secrets_replace_the_generated_ones() -> None:
    objs = objects("production")
    names = {s["metadata"]["name"] for s in of_kind(objs, "Secret")}
    assert names == {"layer-tokens"}, "production reads S3, Milvus and PostgreSQL from existing Secrets"
    gateway = environment(objs, containers(named(objs, "Deployment", "layer-gateway"))[0])
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in containers(named(objs, "Deployment", "layer-gateway"))[0]["env"]
        if "valueFrom" in e
    }
    assert refs["S3_ACCESS_KEY_ID"] == {"name": "hevlayer-s3", "key": "access-key-id"}
    assert refs["GATEWAY_MILVUS_TOKEN"] == {"name": "hevlayer-milvus", "key": "milvus-token"}
    assert gateway["GATEWAY_MILVUS_URI"] == "https://milvus.vectors.svc.cluster.local:19530"
    claimer = containers(named(objs, "Deployment", "layer-claimer"))
    assert [c["name"] for c in claimer] == ["claimer"], "no embedded PostgreSQL with an external one"
    [database] = [e for e in claimer[0]["env"] if e["name"] == "DATABASE_URL"]
    assert database["valueFrom"]["secretKeyRef"] == {"name": "hevlayer-database", "key": "url"}
    mine = render({"auth": {"existingSecret": "my-tokens"}})
    assert "layer-tokens" not in {s["metadata"]["name"] for s in of_kind(mine, "Secret")}
    [internal] = [
        e
        for e in containers(named(mine, "Deployment", "layer-claimer"))[-1]["env"]
        if e["name"] == "CLAIMER_INTERNAL_TOKEN"
    ]
    assert internal["valueFrom"]["secretKeyRef"]["name"] == "my-tokens"


def test_tls_mounts_each_components_certificate_and_makes_the_claimer_mutual() -> None:
    objs = objects("production")
    for deployment in of_kind(objs, "Deployment"):
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        if component == "triton":
            continue
        [container] = [c for c in containers(deployment) if c["name"] == component]
        env = environment(objs, container)
        assert [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "tls"] == [
            "/etc/hevlayer/tls"
        ]
        [volume] = [v for v in pod_spec(deployment)["volumes"] if v["name"] == "tls"]
        assert volume["secret"]["secretName"] == f"layer-{component}-tls"
        if component != "operator":
            assert env["HEVLAYER_TLS_CERT"] == "/etc/hevlayer/tls/tls.crt"
            # The kubelet's gRPC probe speaks no TLS: readiness is /readyz (same state).
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        if component in ("gateway", "embedder", "summarizer", "operator"):
            assert env["HEVLAYER_CLIENT_TLS_CA"] == "/etc/hevlayer/tls/ca.crt"
            assert env["HEVLAYER_CLIENT_TLS_CERT"] == "/etc/hevlayer/tls/tls.crt"
    claimer = environment(objs, containers(named(objs, "Deployment", "layer-claimer"))[0])
    assert claimer["HEVLAYER_TLS_CLIENT_CA"] == "/etc/hevlayer/tls/ca.crt"


# --------------------------------------------------------------------------- pods


@pytest.mark.parametrize("name", list(VALUES))
def test_every_container_is_non_root_with_a_read_only_root(name: str) -> None:
    for deployment in of_kind(objects(name), "Deployment"):
        pod = pod_spec(deployment)["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers(deployment):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context.get("runAsUser", pod.get("runAsUser", 0)) != 0
            assert container["resources"]["requests"], container["name"]


@pytest.mark.parametrize("name", ["default", "gpu"])
def test_readiness_is_the_grpc_health_service_and_liveness_the_process(name: str) -> None:
    for deployment in of_kind(objects(name), "Deployment"):
        for container in containers(deployment):
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            if container["name"] in SERVICES and "grpc" in ports:
                assert container["readinessProbe"]["grpc"] == {"port": ports["grpc"]}
                assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
            elif container["name"] == "operator":
                assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
            elif container["name"] == "triton":
                assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
            else:
                assert container["name"] == "postgresql"
                assert container["startupProbe"]["exec"]["command"][0] == "pg_isready"


def test_images_are_the_deployables_images() -> None:
    expected_tag = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    dockerfiles = {
        p.name.removesuffix(".Dockerfile") for p in (ROOT / "deploy" / "docker").glob("*.Dockerfile")
    }
    for name, registry in (("default", ""), ("production", "registry.example.com/platform/")):
        for container_name, container in hevlayer_containers(objects(name)):
            if container_name == "postgresql":
                continue
            image = container["image"]
            assert image == f"{registry}hevlayer/{container_name}:{expected_tag}", image
            assert container_name in dockerfiles, f"no deploy/docker/{container_name}.Dockerfile"


def test_triton_gets_the_gpu_and_the_embedders_point_at_it() -> None:
    objs = objects("gpu")
    triton = named(objs, "Deployment", "layer-triton")
    assert triton["spec"]["replicas"] == 2
    [server] = containers(triton)
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model-repository=/models" in server["args"]
    assert pod_spec(triton)["nodeSelector"] == {"hevlayer.com/pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(triton)[
        "tolerations"
    ]
    embedder = environment(objs, containers(named(objs, "Deployment", "layer-embedder"))[0])
    assert embedder["EMBEDDER_TRITON_URL"] == "layer-triton.layer.svc.cluster.local:8001"
    assert embedder["EMBEDDER_WORKER_EXCLUDE_PIPELINES"] == "product-images"


def test_services_expose_the_documented_ports() -> None:
    objs = objects("default")
    services = {
        s["metadata"]["name"]: {p["name"]: p["port"] for p in s["spec"]["ports"]}
        for s in of_kind(objs, "Service")
    }
    assert services == {
        "layer-gateway": {"grpc": 50051, "http": 8080},
        "layer-claimer": {"grpc": 50052, "http": 9102},
        "layer-embedder": {"grpc": 50053, "http": 9103},
        "layer-summarizer": {"grpc": 50054, "http": 9104},
        "layer-extractor": {"http": 9105},
        "layer-triton": {"http": 8000, "grpc": 8001, "metrics": 8002},
    }
    for service in of_kind(objs, "Service"):
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        deployment = named(objs, "Deployment", f"layer-{component}")
        assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(objs, component))
        declared = {p["name"] for c in containers(deployment) for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= declared
    models = {p.parent.name for p in (ROOT / "deploy" / "triton" / "model_repository").glob("*/config.pbtxt")}
    embedder = environment(objs, containers(named(objs, "Deployment", "layer-embedder"))[0])
    assert embedder["EMBEDDER_MODEL_NAME"] in models


# --------------------------------------------------------------------------- disruption budgets


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


@pytest.mark.parametrize("name", list(VALUES))
def test_replicated_deployments_have_a_disruption_budget(name: str) -> None:
    objs = objects(name)
    budgets = of_kind(objs, "PodDisruptionBudget")
    covered = set()
    for deployment in of_kind(objs, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        mine = [b for b in budgets if selects(b["spec"]["selector"], labels)]
        if deployment["spec"]["replicas"] > 1:
            assert len(mine) == 1, deployment["metadata"]["name"]
            assert mine[0]["spec"]["minAvailable"] < deployment["spec"]["replicas"]
            covered.add(mine[0]["metadata"]["name"])
        else:
            assert mine == [], "a budget on a single replica would block every node drain"
    assert covered == {b["metadata"]["name"] for b in budgets}
    if name == "production":
        assert covered == {"layer-gateway", "layer-claimer", "layer-embedder", "layer-triton"}


# --------------------------------------------------------------------------- network policies


def peer_admits(peer: dict[str, Any], labels: dict[str, str], namespace: str, own_namespace: str) -> bool:
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif namespace != own_namespace:
        return False
    return selects(peer.get("podSelector", {}), labels)


def admitted(
    objs: list[dict[str, Any]],
    target: dict[str, str],
    port: str,
    labels: dict[str, str],
    namespace: str = NAMESPACE,
) -> bool:
    """Whether the release's NetworkPolicies let a pod (labels, namespace) reach ``port`` of a
    pod labelled ``target``. A pod selected by no policy would be open: that fails here."""
    policies = [p for p in of_kind(objs, "NetworkPolicy") if selects(p["spec"]["podSelector"], target)]
    assert policies, f"no NetworkPolicy selects {target}"
    for policy in policies:
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for rule in policy["spec"].get("ingress", []):
            if "ports" in rule and port not in [p["port"] for p in rule["ports"]]:
                continue
            peers = rule.get("from")
            if not peers or any(peer_admits(p, labels, namespace, NAMESPACE) for p in peers):
                return True
    return False


def pod_labels(objs: list[dict[str, Any]], component: str) -> dict[str, str]:
    labels: dict[str, str] = named(objs, "Deployment", f"layer-{component}")["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


@pytest.mark.parametrize("name", ["default", "production", "gpu"])
def test_network_policies_admit_only_the_documented_peers(name: str) -> None:
    objs = objects(name)
    pods = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: pod_labels(
            objs, d["metadata"]["labels"]["app.kubernetes.io/component"]
        )
        for d in of_kind(objs, "Deployment")
    }
    stranger = {"app": "curious"}
    worker = worker_labels(parse_pipeline(yaml.safe_load(SEED_PIPELINE)).ref)
    client = {"hevlayer.com/summarizer-client": "true"}
    # The gateway is public: anyone, from any namespace.
    for port in ("grpc", "http"):
        assert admitted(objs, pods["gateway"], port, stranger, "elsewhere")
    # The claimer answers only the gateway; so do the embedders.
    for component in ("claimer", "embedder"):
        assert admitted(objs, pods[component], "grpc", pods["gateway"])
        for other in [*(c for c in pods if c not in ("gateway", component)), "stranger"]:
            assert not admitted(objs, pods[component], "grpc", pods.get(other, stranger)), (component, other)
        assert not admitted(objs, pods[component], "grpc", pods["gateway"], "elsewhere")
    # Triton: the embedders and the operator's workers (any namespace), nobody else.
    assert admitted(objs, pods["triton"], "grpc", pods["embedder"])
    assert admitted(objs, pods["triton"], "grpc", worker, "products")
    for other in ("gateway", "claimer", "operator"):
        assert not admitted(objs, pods["triton"], "grpc", pods[other])
    assert not admitted(objs, pods["triton"], "grpc", stranger)
    # The summarizer: labelled ingest clients of the namespace.
    assert admitted(objs, pods["summarizer"], "grpc", client)
    assert not admitted(objs, pods["summarizer"], "grpc", stranger)
    assert not admitted(objs, pods["summarizer"], "grpc", client, "elsewhere")
    # The operator serves nothing; the extractor only its metrics.
    for port in ("health", "grpc", "http"):
        assert not admitted(objs, pods["operator"], port, stranger)
    assert not admitted(objs, pods["extractor"], "grpc", pods["gateway"])
    # Metrics: anyone by default, the monitoring namespace in production.
    monitoring = {"app.kubernetes.io/name": "prometheus"}
    assert admitted(objs, pods["claimer"], "http", monitoring, "monitoring")
    assert admitted(objs, pods["claimer"], "http", stranger) == (name != "production")


def test_postgresql_is_reachable_only_inside_the_claimers_pod() -> None:
    objs = objects("default")
    claimer = named(objs, "Deployment", "layer-claimer")
    [postgres] = [c for c in containers(claimer) if c["name"] == "postgresql"]
    assert postgres["restartPolicy"] == "Always", "a native sidecar, up before the claimer"
    assert "ports" not in postgres
    assert postgres["args"] == ["-c", "listen_addresses=127.0.0.1"]
    for service in of_kind(objs, "Service"):
        assert 5432 not in [p["port"] for p in service["spec"]["ports"]]
    assert claimer["spec"]["strategy"] == {"type": "Recreate"}
    volume = [v for v in pod_spec(claimer)["volumes"] if v["name"] == "postgresql"]
    assert named(objs, "PersistentVolumeClaim", volume[0]["persistentVolumeClaim"]["claimName"])


# --------------------------------------------------------------------------- the operator


def rbac_grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


OPERATOR_GRANTS = rbac_grants(
    [
        {
            "apiGroups": ["hevlayer.com"],
            "resources": ["pipelines"],
            "verbs": ["get", "list", "watch", "patch"],
        },
        {"apiGroups": ["hevlayer.com"], "resources": ["pipelines/status"], "verbs": ["get", "patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "create", "patch", "delete"]},
        {
            "apiGroups": ["keda.sh"],
            "resources": ["scaledobjects"],
            "verbs": ["get", "create", "patch", "delete"],
        },
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
)
READ_INFRA = rbac_grants(
    [
        {"apiGroups": ["hevlayer.com"], "resources": ["infrarules"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    ]
)


def test_operator_rbac_is_namespaced_unless_asked() -> None:
    objs = objects("production")
    roles = of_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["layer", "team-a"]
    for role in roles:
        assert rbac_grants(role["rules"]) == OPERATOR_GRANTS
    bindings = of_kind(objs, "RoleBinding")
    assert {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in bindings} == {
        ("layer", "layer-operator"),
        ("team-a", "layer-operator"),
    }
    [cluster_role] = of_kind(objs, "ClusterRole")
    assert rbac_grants(cluster_role["rules"]) == READ_INFRA
    env = environment(objs, containers(named(objs, "Deployment", "layer-operator"))[0])
    assert env["OPERATOR_NAMESPACES"] == "layer,team-a"
    for binding in [*bindings, *of_kind(objs, "ClusterRoleBinding")]:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "layer-operator", "namespace": "layer"}
        ]
    wide = objects("gpu")
    assert of_kind(wide, "Role") == []
    grants = {r["metadata"]["name"]: rbac_grants(r["rules"]) for r in of_kind(wide, "ClusterRole")}
    assert grants == {
        "layer-layer-operator-workers": OPERATOR_GRANTS,
        "layer-layer-operator-infrarules": READ_INFRA,
    }
    assert (
        environment(wide, containers(named(wide, "Deployment", "layer-operator"))[0])["OPERATOR_NAMESPACES"]
        == ""
    )


def test_the_gpu_pipeline_the_chart_declares_becomes_a_keda_scaled_gpu_worker(tmp_path: Path) -> None:
    """What the operator would create from the chart's InfraRules and Pipeline, rendered by the
    operator's own functions with the settings the chart gives it, validated like the chart."""
    objs = objects("gpu")
    [rules] = of_kind(objs, "InfraRules")
    assert rules["metadata"]["name"] == "default"
    [pipeline_body] = of_kind(objs, "Pipeline")
    pipeline_body["metadata"]["uid"] = "6b3a55a2-3f0e-4d38-9d7e-5c0e1f0a2b11"  # the API server's
    operator_env = environment(objs, containers(named(objs, "Deployment", "layer-operator"))[0])
    settings = load_settings(
        OperatorSettings, environ={k: v for k, v in operator_env.items() if v is not None}
    )
    admission = admit(parse_pipeline(pipeline_body), parse_infra_rules(rules))
    assert isinstance(admission, Admission), admission
    ctx = render_context(settings)
    worker = render_deployment(admission.pipeline, ctx, admission.pool)
    scaled = render_scaled_object(admission.pipeline, ctx)
    assert scaled is not None
    assert render_extract_deployment(admission.pipeline, ctx) is None
    assert render_extract_scaled_object(admission.pipeline, ctx) is None
    # The GPU pool's worker requests the GPU and tolerates the GPU nodes' taint.
    pod = worker["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"hevlayer.com/pool": "gpu"}
    # Scaling from zero on pending documents, the seed's trigger on the chart's gateway.
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 8)
    [trigger] = scaled["spec"]["triggers"]
    assert (
        trigger["metadata"]["serverAddress"] == "http://layer-gateway.layer.svc.cluster.local:8080/v2/metrics"
    )
    assert (trigger["metadata"]["threshold"], trigger["metadata"]["activationThreshold"]) == ("50", "1")
    gateway_service = named(objs, "Service", "layer-gateway")
    assert {"name": "http", "port": 8080, "targetPort": "http", "appProtocol": "http"} in gateway_service[
        "spec"
    ]["ports"]
    model = ScaledObject.model_validate(scaled)
    assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == scaled
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(without_nones(worker)))
    kubernetes_validate([path])
    # The worker's token is the chart's worker token, allowed by the chart's InfraRules.
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["HEVLAYER_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "layer-tokens",
        "key": "embedder-worker.token",
    }


def test_default_infra_rules_allow_the_charts_images_and_a_gpu_pool() -> None:
    [rules] = of_kind(objects("default"), "InfraRules")
    parsed = parse_infra_rules(rules)
    assert rules["spec"]["allowedImages"] == ["hevlayer/*"]
    gpu = parsed.pools["gpu"]
    assert gpu.resources is not None
    assert gpu.resources["requests"]["nvidia.com/gpu"] == "1"
    [production] = of_kind(objects("production"), "InfraRules")
    assert production["spec"]["allowedImages"] == ["registry.example.com/platform/hevlayer/*"]
    assert of_kind(render({"infraRules": {"create": False}}), "InfraRules") == []


def test_service_monitors_scrape_each_services_metrics() -> None:
    objs = objects("production")
    monitors = {m["metadata"]["name"]: m for m in of_kind(objs, "ServiceMonitor")}
    components = ("gateway", "claimer", "embedder", "summarizer", "extractor", "triton")
    assert set(monitors) == {f"layer-{c}" for c in components}
    for name, monitor in monitors.items():
        service = named(objs, "Service", name)
        assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
        [endpoint] = monitor["spec"]["endpoints"]
        assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitors["layer-gateway"]["spec"]["endpoints"][0]["path"] == "/v2/metrics"
    assert of_kind(objects("default"), "ServiceMonitor") == []


def test_checksum_annotations_roll_pods_when_their_config_changes() -> None:
    before = named(objects("default"), "Deployment", "layer-claimer")
    after = named(render({"pipeline": {"segmentSize": 5000}}), "Deployment", "layer-claimer")
    key = "checksum/config"
    assert (
        before["spec"]["template"]["metadata"]["annotations"][key]
        != after["spec"]["template"]["metadata"]["annotations"][key]
    )
    unchanged = named(render({"pipeline": {"segmentSize": 5000}}), "Deployment", "layer-gateway")
    assert (
        unchanged["spec"]["template"]["metadata"]["annotations"][key]
        == named(objects("default"), "Deployment", "layer-gateway")["spec"]["template"]["metadata"][
            "annotations"
        ][key]
    )
    assert hashlib.sha256(b"").hexdigest() not in {
        d["spec"]["template"]["metadata"]["annotations"][key]
        for d in of_kind(objects("default"), "Deployment")
        if "annotations" in d["spec"]["template"]["metadata"]
    }
