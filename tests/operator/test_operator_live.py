"""The operator end to end: kopf + the real handlers against a fake API server.

No kube-apiserver can run here. The Kubernetes side is kmock's
``KubernetesEmulator`` (an in-memory, HTTP-level fake API server by kopf's
author), extended below with what a real API server adds to objects (uid,
resourceVersion, generation, creationTimestamp, a name from generateName) and with HTTP 422 on failed
JSON-patch tests, as kopf expects. It does not apply CRD defaults or
validation, and it does not garbage-collect by owner references.

The gateway is an in-test ``grpc.aio`` PipelineService that keeps pipelines
in memory and records every call (``test_real_gateway`` runs the real claimer
and gateway instead). The operator runs in a thread with its own event loop
(``run_operator`` with stop/ready flags, as ``kopf.testing.KopfRunner`` does),
served cluster-wide (``-A``) with an explicit kubeconfig pointing at kmock.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import attrs
import grpc
import kmock
import pytest
from grpc import aio
from kmock._internal import dicts as kmock_dicts

from hevlayer.api.pipeline.v1 import pipeline_pb2 as pb
from hevlayer.api.pipeline.v1 import pipeline_pb2_grpc
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.ports import free_port
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.devstack.testing import ServiceFactory
from hevlayer.operator import OperatorSettings, run_operator

PIPELINES = "hevlayer.com/v1alpha1/pipelines"
INFRA_RULES = "hevlayer.com/v1alpha1/infrarules"
INFRA_RULES_PATH = "/apis/hevlayer.com/v1alpha1/infrarules"
DEPLOYMENTS = "apps/v1/deployments"
SCALED_OBJECTS = "keda.sh/v1alpha1/scaledobjects"
GATEWAY_HTTP = "http://layer-gateway.layer.svc.cluster.local:8080"
WAIT = 60.0  # upper bound of every wait (a guard, not a timing check: they normally hold within seconds)


# --------------------------------------------------------------------------- fakes


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator plus the metadata a real API server maintains."""

    _revision: int = attrs.field(default=0, init=False)
    namespaces: tuple[str, ...] = attrs.field(default=())
    """What ``GET /api/v1/namespaces`` lists (a namespaced kopf lists them at start). kmock
    cannot parse that path (it takes "namespaces" for the start of a namespaced path), so it
    is answered here, before kmock parses the request; watching namespaces is refused (403),
    which kopf tolerates (it then refreshes namespaces only on restarts)."""

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.path == "/api/v1/namespaces":
            if raw_request.query.get("watch") in ("true", "1"):
                status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403}
                return aiohttp.web.json_response({**status, "reason": "Forbidden"}, status=403)
            items = [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in self.namespaces
            ]
            listing = {"apiVersion": "v1", "kind": "NamespaceList", "metadata": {"resourceVersion": "1"}}
            return aiohttp.web.json_response({**listing, "items": items})
        return await super().__call__(raw_request)

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None and request.action == kmock.action.CREATE:
            if isinstance(request.data, dict):
                meta = request.data.setdefault("metadata", {})
                if not meta.get("name") and meta.get("generateName"):  # kopf's Events
                    meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:8]}"
                meta.setdefault("namespace", request.namespace)
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("generation", 1)
                meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                meta["resourceVersion"] = self._next_revision()
        elif request.resource is not None and request.action == kmock.action.UPDATE and request.name:
            self._stamp_update(request)
        return await super()._handle(request)

    def _stamp_update(self, request: kmock.Request) -> None:
        assert request.resource is not None
        assert request.name is not None
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return
        live: dict[str, Any] = copy.deepcopy(self.objects[key].raw)
        data = request.data
        if isinstance(data, list):
            for op in data:
                if op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion":
                    current = live.get("metadata", {}).get("resourceVersion")
                    if op.get("value") != current:
                        raise kmock.KubernetesError(
                            status=422, reason="Invalid", message=f"resourceVersion is {current}"
                        )
        new = kmock_dicts.patch_dict(live, data)
        revision = self._next_revision()
        generation = live.get("metadata", {}).get("generation", 1)
        if request.subresource != "status" and new.get("spec") != live.get("spec"):
            generation += 1
        if isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            meta["resourceVersion"] = revision
            meta["generation"] = generation
        elif isinstance(data, list):
            data.append({"op": "add", "path": "/metadata/resourceVersion", "value": revision})
            data.append({"op": "add", "path": "/metadata/generation", "value": generation})


@dataclass
class FakePipelineService(pipeline_pb2_grpc.PipelineServiceServicer):
    """PipelineService in memory, recording calls; ``fail`` queues errors per method."""

    pipelines: dict[str, pb.Pipeline] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    failures: dict[str, list[grpc.StatusCode]] = field(default_factory=dict)

    def fail(self, method: str, code: grpc.StatusCode, times: int = 1) -> None:
        self.failures.setdefault(method, []).extend([code] * times)

    def called(self, method: str) -> list[Any]:
        return [request for name, request in self.calls if name == method]

    async def _enter(self, method: str, request: Any, context: aio.ServicerContext[Any, Any]) -> None:
        self.calls.append((method, request))
        queued = self.failures.get(method)
        if queued:
            code = queued.pop(0)
            await context.abort(code, f"injected {code.name}")

    async def _known(self, pipeline_id: str, context: aio.ServicerContext[Any, Any]) -> pb.Pipeline:
        if pipeline_id not in self.pipelines:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"pipeline {pipeline_id!r} not found")
        return self.pipelines[pipeline_id]

    async def CreatePipeline(
        self, request: pb.CreatePipelineRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.CreatePipelineResponse:
        await self._enter("CreatePipeline", request, context)
        pipeline = pb.Pipeline()
        pipeline.CopyFrom(request.pipeline)
        if pipeline.id in self.pipelines:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"pipeline {pipeline.id!r} exists")
        if not pipeline.target_namespace:
            pipeline.target_namespace = pipeline.id.replace("-", "_")
        if not pipeline.distance_metric:
            pipeline.distance_metric = pb.DISTANCE_METRIC_COSINE_DISTANCE
        self.pipelines[pipeline.id] = pipeline
        return pb.CreatePipelineResponse(pipeline=pipeline)

    async def GetPipeline(
        self, request: pb.GetPipelineRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetPipelineResponse:
        await self._enter("GetPipeline", request, context)
        return pb.GetPipelineResponse(pipeline=await self._known(request.pipeline_id, context))

    async def UpdatePipeline(
        self, request: pb.UpdatePipelineRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.UpdatePipelineResponse:
        await self._enter("UpdatePipeline", request, context)
        pipeline = await self._known(request.pipeline.id, context)
        if "paused" in request.update_mask.paths:
            pipeline.paused = request.pipeline.paused
        return pb.UpdatePipelineResponse(pipeline=pipeline)

    async def DeletePipeline(
        self, request: pb.DeletePipelineRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.DeletePipelineResponse:
        await self._enter("DeletePipeline", request, context)
        await self._known(request.pipeline_id, context)
        del self.pipelines[request.pipeline_id]
        return pb.DeletePipelineResponse()

    async def ListPipelines(
        self, request: pb.ListPipelinesRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ListPipelinesResponse:
        await self._enter("ListPipelines", request, context)
        return pb.ListPipelinesResponse(pipelines=sorted(self.pipelines.values(), key=lambda p: p.id))

    async def WatchPipelineStatus(
        self, request: pb.WatchPipelineStatusRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchPipelineStatusResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by the operator")
        yield pb.WatchPipelineStatusResponse()  # pragma: no cover

    async def GetPipelineStatus(
        self, request: pb.GetPipelineStatusRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetPipelineStatusResponse:
        await self._enter("GetPipelineStatus", request, context)
        await self._known(request.pipeline_id, context)
        pending = self.pending.get(request.pipeline_id, 0)
        status = pb.PipelineStatus(pipeline_id=request.pipeline_id, pending_count=pending)
        status.counts["pending"] = pending
        return pb.GetPipelineStatusResponse(status=status)


# --------------------------------------------------------------------------- helpers


async def eventually(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``check`` until it returns a truthy value (returned); fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "kmock",
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "operator"}}],
                "clusters": [{"name": "kmock", "cluster": {"server": server}}],
                "users": [{"name": "operator", "user": {"token": "test-token"}}],
            }
        )
    )
    return path


def infra_rules_body(**spec: Any) -> dict[str, Any]:
    """InfraRules/default: pools cpu and gpu, images of ghcr.io/hev, EXTRA_* and MODEL variables."""
    body: dict[str, Any] = {
        "apiVersion": "hevlayer.com/v1alpha1",
        "kind": "InfraRules",
        "metadata": {"name": "default"},
        "spec": {
            "pools": [
                {"name": "cpu", "resources": {"requests": {"cpu": "1"}}},
                {
                    "name": "gpu",
                    "nodeSelector": {"cloud.example.com/accelerator": "h100"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}},
                    "maxReplicas": 4,
                },
            ],
            "allowedImages": ["ghcr.io/hev/*"],
            "allowedEnv": {"names": ["EXTRA_*", "MODEL"], "valueFrom": ["configMapKeyRef"]},
        },
    }
    body["spec"].update(spec)
    return body


def pipeline_body(name: str, namespace: str = "layer", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "hevlayer.com/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "target": {"namespace": name.replace("-", "_")},
            "worker": {
                "image": "ghcr.io/hev/product-image-worker:latest",
                "batchSize": 64,
                "timeoutSeconds": 60,
            },
            "scaling": {"pool": "cpu", "mode": "autoscale", "replicas": {"min": 0, "max": 8}},
        },
    }
    body["spec"].update(spec)
    return body


@dataclass
class Cluster:
    """The fake API server and a client of it."""

    api: ApiServer
    url: str
    session: aiohttp.ClientSession

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object (``namespace`` None: cluster-scoped), None if absent."""
        key = (kmock.resource(resource), namespace, name)
        if key not in self.api.objects or self.api.objects[key].deleted:
            return None
        return copy.deepcopy(self.api.objects[key].raw)

    def history(self, resource: str, namespace: str, name: str) -> list[dict[str, Any] | None]:
        key = (kmock.resource(resource), namespace, name)
        if key not in self.api.objects:
            return []
        return [None if v is None else dict(v.raw) for v in self.api.objects[key].history]

    async def create_pipeline(self, body: dict[str, Any]) -> None:
        ns = body["metadata"]["namespace"]
        async with self.session.post(
            f"/apis/hevlayer.com/v1alpha1/namespaces/{ns}/pipelines", json=body
        ) as r:
            assert r.status < 300, await r.text()

    async def patch_pipeline(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        async with self.session.patch(
            f"/apis/hevlayer.com/v1alpha1/namespaces/{namespace}/pipelines/{name}",
            data=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
        ) as r:
            assert r.status < 300, await r.text()

    async def delete(self, path: str) -> None:
        async with self.session.delete(path) as r:
            assert r.status < 300, await r.text()

    async def put_infra_rules(self, body: dict[str, Any]) -> None:
        """Create InfraRules/default, or replace its spec."""
        if self.get(INFRA_RULES, None, "default") is None:
            async with self.session.post(INFRA_RULES_PATH, json=body) as r:
                assert r.status < 300, await r.text()
            return
        async with self.session.patch(
            f"{INFRA_RULES_PATH}/default",
            data=json.dumps(body),
            headers={"Content-Type": "application/merge-patch+json"},
        ) as r:
            assert r.status < 300, await r.text()

    def events_about(self, namespace: str, reason: str, name: str) -> list[dict[str, Any]]:
        """The Events in ``namespace`` with ``reason`` about the object ``name``."""
        return [e for e in self.events(namespace, reason) if e["involvedObject"]["name"] == name]

    def events(self, namespace: str, reason: str) -> list[dict[str, Any]]:
        """The Events in ``namespace`` with ``reason``."""
        return [
            dict(obj.raw)
            for (resource, ns, _), obj in list(self.api.objects.items())
            if resource.plural == "events" and ns == namespace and not obj.deleted
            if obj.raw.get("reason") == reason
        ]

    async def wait_watching(self) -> None:
        """Wait until the operator watches Pipelines. kmock replays every existing object
        as ADDED when a watch opens, even one the preceding LIST returned (a real API
        server resumes from the list's resourceVersion): objects created before the watch
        would reach kopf twice, so tests create them after."""
        pipelines = kmock.resource(PIPELINES)
        await eventually(
            lambda: any(r.action == kmock.action.WATCH and r.resource == pipelines for r in list(self.api)),
            "the operator watching Pipelines",
        )

    def condition(self, namespace: str, name: str, kind: str) -> dict[str, Any] | None:
        body = self.get(PIPELINES, namespace, name) or {}
        for condition in body.get("status", {}).get("conditions", []):
            if condition["type"] == kind:
                return dict(condition)
        return None


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with ApiServer() as api, kmock.Server(api) as server:
        api.resources.load_bundled()  # built-in kinds: namespaces, events, CRDs, deployments, ...
        api.resources[PIPELINES] = kmock.ResourceInfo(
            kind="Pipeline",
            singular="pipeline",
            namespaced=True,
            subresources={"status"},
            verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        )
        api.resources[INFRA_RULES] = kmock.ResourceInfo(
            kind="InfraRules",
            singular="infrarules",
            namespaced=False,
            verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        )
        api.resources[SCALED_OBJECTS] = kmock.ResourceInfo(
            kind="ScaledObject",
            singular="scaledobject",
            namespaced=True,
            subresources={"status"},
            verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        )
        url = str(server.url).rstrip("/")
        async with aiohttp.ClientSession(url) as session:
            cluster = Cluster(api, url, session)
            await cluster.put_infra_rules(infra_rules_body())
            yield cluster


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[FakePipelineService, str]]:
    service = FakePipelineService()
    server = aio.server()
    pipeline_pb2_grpc.add_PipelineServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def running_operator(cluster: Cluster, settings: OperatorSettings) -> AsyncIterator[None]:
    """The operator in a thread with its own event loop, watching; stopped on exit."""
    stop = threading.Event()
    ready = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(run_operator(settings, stop_flag=stop, ready_flag=ready))
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="operator", daemon=True)
    thread.start()
    try:
        if not await asyncio.to_thread(ready.wait, WAIT):
            pytest.fail(f"operator did not start: {errors!r}")
        await cluster.wait_watching()
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, WAIT)
        assert not thread.is_alive(), "operator did not stop"
        assert not errors, errors


def settings_for(cluster: Cluster, gateway_address: str, tmp_path: Path, **extra: Any) -> OperatorSettings:
    values: dict[str, Any] = {
        "gateway_address": gateway_address,
        "gateway_http_url": GATEWAY_HTTP,
        "kubeconfig": str(write_kubeconfig(tmp_path / "kubeconfig", cluster.url)),
        "status_interval_seconds": 1.0,
        "health_address": "",
        **extra,
    }
    return OperatorSettings(**values)


# --------------------------------------------------------------------------- tests


async def test_pipeline_lifecycle(
    cluster: Cluster, gateway: tuple[FakePipelineService, str], tmp_path: Path
) -> None:
    service, address = gateway
    async with running_operator(cluster, settings_for(cluster, address, tmp_path)):
        await cluster.create_pipeline(pipeline_body("product-images"))

        # Created: the gateway pipeline, the Deployment and the ScaledObject.
        deployment = await eventually(
            lambda: cluster.get(DEPLOYMENTS, "layer", "product-images-worker"), "the worker Deployment"
        )
        scaled = await eventually(
            lambda: cluster.get(SCALED_OBJECTS, "layer", "product-images-worker"), "the ScaledObject"
        )
        created = service.called("CreatePipeline")
        assert [c.pipeline.id for c in created] == ["product-images"]
        assert created[0].pipeline.target_namespace == "product_images"
        assert created[0].pipeline.distance_metric == pb.DISTANCE_METRIC_COSINE_DISTANCE
        assert created[0].pipeline.paused is False

        pipeline = cluster.get(PIPELINES, "layer", "product-images")
        assert pipeline is not None
        owner = {
            "apiVersion": "hevlayer.com/v1alpha1",
            "kind": "Pipeline",
            "name": "product-images",
            "uid": pipeline["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert deployment["metadata"]["ownerReferences"] == [owner]
        assert scaled["metadata"]["ownerReferences"] == [owner]
        assert deployment["spec"]["replicas"] == 0
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "ghcr.io/hev/product-image-worker:latest"
        assert {"name": "HEVLAYER_PIPELINE_ID", "value": "product-images"} in container["env"]
        assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"hevlayer.com/pool": "cpu"}
        trigger = scaled["spec"]["triggers"][0]
        assert trigger == {
            "type": "prometheus",
            "metadata": {
                "serverAddress": f"{GATEWAY_HTTP}/v2/metrics",
                "metricName": "product_images_pending",
                "query": 'sum(layer_pipeline_stage_count{pipeline_id="product-images",stage="pending"})'
                " or vector(0)",
                "threshold": "50",
                "activationThreshold": "1",
            },
        }
        assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 8)
        assert pipeline["metadata"]["finalizers"] == ["hevlayer.com/pipeline"]

        ready = await eventually(
            lambda: cluster.condition("layer", "product-images", "Ready"), "the Ready condition"
        )
        assert ready["status"] == "True", ready

        # The timer refreshes the pending count from GetPipelineStatus.
        service.pending["product-images"] = 7
        await eventually(
            lambda: (
                (cluster.get(PIPELINES, "layer", "product-images") or {})
                .get("status", {})
                .get("pendingCount")
                == 7
            ),
            "status.pendingCount = 7",
        )
        status = cluster.get(PIPELINES, "layer", "product-images")["status"]  # type: ignore[index]
        assert status["pipelineId"] == "product-images"
        assert status["observedGeneration"] == 1
        assert (status["replicas"], status["readyReplicas"]) == (0, 0)
        admitted = cluster.condition("layer", "product-images", "Admitted")
        assert admitted is not None
        assert admitted["status"] == "True", admitted
        # The cpu pool's default resources; batchSize and timeoutSeconds as the embedder reads them.
        assert container["resources"] == {"requests": {"cpu": "1"}}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["EMBEDDER_WORKER_MAX_DOCUMENTS"] == "64"
        assert env["EMBEDDER_WORKER_LEASE_SECONDS"] == "60"

        # Paused: the gateway pipeline is paused, KEDA lets go, the workers go to 0.
        await cluster.patch_pipeline("layer", "product-images", {"spec": {"paused": True}})
        await eventually(
            lambda: cluster.get(SCALED_OBJECTS, "layer", "product-images-worker") is None,
            "the ScaledObject deleted",
        )
        assert service.pipelines["product-images"].paused is True
        assert [u.pipeline.paused for u in service.called("UpdatePipeline")] == [True]
        assert service.called("UpdatePipeline")[0].update_mask.paths == ["paused"]
        assert cluster.get(DEPLOYMENTS, "layer", "product-images-worker")["spec"]["replicas"] == 0  # type: ignore[index]

        # Fixed: replicas pinned to min, no autoscaling, the pipeline resumed.
        await cluster.patch_pipeline(
            "layer",
            "product-images",
            {"spec": {"paused": False, "scaling": {"mode": "fixed", "replicas": {"min": 2, "max": 8}}}},
        )
        await eventually(
            lambda: (
                (cluster.get(DEPLOYMENTS, "layer", "product-images-worker") or {})["spec"]["replicas"] == 2
            ),
            "2 fixed replicas",
        )
        await eventually(lambda: not service.pipelines["product-images"].paused, "the pipeline resumed")
        assert cluster.get(SCALED_OBJECTS, "layer", "product-images-worker") is None

        # Autoscale again: the ScaledObject is back; the Deployment's replica count is KEDA's.
        await cluster.patch_pipeline("layer", "product-images", {"spec": {"scaling": {"mode": "autoscale"}}})
        await eventually(
            lambda: cluster.get(SCALED_OBJECTS, "layer", "product-images-worker"), "the ScaledObject back"
        )
        assert cluster.get(DEPLOYMENTS, "layer", "product-images-worker")["spec"]["replicas"] == 2  # type: ignore[index]
        await eventually(
            lambda: (
                (cluster.condition("layer", "product-images", "Ready") or {}).get("observedGeneration") == 4
            ),
            "Ready for generation 4",
        )

        # Deleted (deletionPolicy keep, the default): the finalizer removes the worker
        # objects; the gateway pipeline and its data stay.
        await cluster.delete("/apis/hevlayer.com/v1alpha1/namespaces/layer/pipelines/product-images")
        await eventually(
            lambda: cluster.get(PIPELINES, "layer", "product-images") is None, "the Pipeline gone"
        )
        assert service.called("DeletePipeline") == []
        assert "product-images" in service.pipelines
        assert cluster.get(DEPLOYMENTS, "layer", "product-images-worker") is None
        assert cluster.get(SCALED_OBJECTS, "layer", "product-images-worker") is None
        # Created once, patched (paused, fixed) and deleted: the Deployment's history in kmock.
        history = cluster.history(DEPLOYMENTS, "layer", "product-images-worker")
        assert history[-1] is None
        replicas = [v["spec"]["replicas"] for v in history if v is not None]
        assert replicas[0] == 0
        assert 2 in replicas


async def test_drift_is_repaired_and_already_exists_adopted(
    cluster: Cluster, gateway: tuple[FakePipelineService, str], tmp_path: Path
) -> None:
    service, address = gateway
    # The pipeline exists in the gateway, but the first GetPipeline misses it (as if it
    # was created concurrently): CreatePipeline answers ALREADY_EXISTS, which is fine.
    service.pipelines["reviews"] = pb.Pipeline(
        id="reviews", target_namespace="reviews", distance_metric=pb.DISTANCE_METRIC_COSINE_DISTANCE
    )
    service.fail("GetPipeline", grpc.StatusCode.NOT_FOUND)
    async with running_operator(cluster, settings_for(cluster, address, tmp_path)):
        await cluster.create_pipeline(pipeline_body("reviews", target={"namespace": "reviews"}))
        ready = await eventually(lambda: cluster.condition("layer", "reviews", "Ready"), "Ready")
        assert ready["status"] == "True", ready
        assert [c.pipeline.id for c in service.called("CreatePipeline")] == ["reviews"]

        # Someone deletes the worker Deployment and edits the ScaledObject: the timer repairs both.
        await cluster.delete("/apis/apps/v1/namespaces/layer/deployments/reviews-worker")
        async with cluster.session.patch(
            "/apis/keda.sh/v1alpha1/namespaces/layer/scaledobjects/reviews-worker",
            data=json.dumps({"spec": {"maxReplicaCount": 100}}),
            headers={"Content-Type": "application/merge-patch+json"},
        ) as r:
            assert r.status == 200
        await eventually(lambda: cluster.get(DEPLOYMENTS, "layer", "reviews-worker"), "the Deployment back")
        await eventually(
            lambda: (
                (cluster.get(SCALED_OBJECTS, "layer", "reviews-worker") or {})["spec"]["maxReplicaCount"] == 8
            ),
            "maxReplicaCount repaired",
        )


async def test_gateway_outage_is_retried(
    cluster: Cluster, gateway: tuple[FakePipelineService, str], tmp_path: Path
) -> None:
    service, address = gateway
    # More UNAVAILABLE answers than the channel's own retries (5 attempts): kopf retries.
    service.fail("GetPipeline", grpc.StatusCode.UNAVAILABLE, times=5)
    async with running_operator(cluster, settings_for(cluster, address, tmp_path)):
        await cluster.create_pipeline(pipeline_body("outage"))
        await eventually(
            lambda: (cluster.condition("layer", "outage", "Ready") or {}).get("status") == "True",
            "Ready after the outage",
        )
        synced = [
            c
            for v in cluster.history(PIPELINES, "layer", "outage")
            if v is not None
            for c in v.get("status", {}).get("conditions", [])
            if c["type"] == "GatewaySynced"
        ]
        assert (synced[0]["status"], synced[0]["reason"]) == ("False", "GatewayUnavailable"), synced
        # The workers were applied while the gateway was down.
        applied = [
            c
            for v in cluster.history(PIPELINES, "layer", "outage")
            if v is not None
            for c in v.get("status", {}).get("conditions", [])
            if c["type"] == "WorkersApplied"
        ]
        assert applied[0]["status"] == "True", applied
        assert service.pipelines["outage"].id == "outage"


async def test_invalid_spec_and_name_conflict(
    cluster: Cluster, gateway: tuple[FakePipelineService, str], tmp_path: Path
) -> None:
    service, address = gateway
    async with running_operator(cluster, settings_for(cluster, address, tmp_path)):
        # min > max: reported, nothing created.
        bad = pipeline_body("bad", scaling={"mode": "fixed", "replicas": {"min": 5, "max": 2}})
        await cluster.create_pipeline(bad)
        ready = await eventually(lambda: cluster.condition("layer", "bad", "Ready"), "Ready on bad")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
        assert "spec.scaling.replicas" in ready["message"]

        # Two Pipelines named "dup": the older one owns the gateway pipeline.
        await cluster.create_pipeline(pipeline_body("dup", namespace="team-a"))
        await eventually(
            lambda: (cluster.condition("team-a", "dup", "Ready") or {}).get("status") == "True",
            "team-a ready",
        )
        await cluster.create_pipeline(pipeline_body("dup", namespace="team-b"))
        synced = await eventually(
            lambda: cluster.condition("team-b", "dup", "GatewaySynced"), "team-b GatewaySynced"
        )
        assert (synced["status"], synced["reason"]) == ("False", "PipelineConflict"), synced
        assert "team-a/dup" in synced["message"]
        assert cluster.get(DEPLOYMENTS, "team-b", "dup-worker") is None

        # Deleting the loser leaves the owner's gateway pipeline alone.
        await cluster.delete("/apis/hevlayer.com/v1alpha1/namespaces/team-b/pipelines/dup")
        await eventually(lambda: cluster.get(PIPELINES, "team-b", "dup") is None, "team-b/dup gone")
        assert service.called("DeletePipeline") == []
        assert "dup" in service.pipelines
        assert cluster.get(DEPLOYMENTS, "team-a", "dup-worker") is not None
        assert [c.pipeline.id for c in service.called("CreatePipeline")] == ["dup"]
        assert cluster.get(DEPLOYMENTS, "layer", "bad-worker") is None
        assert "bad" not in service.pipelines

        # A Deployment of the worker's name that another controller owns is left alone.
        foreign = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "taken-worker",
                "namespace": "layer",
                "ownerReferences": [
                    {
                        "apiVersion": "example.com/v1",
                        "kind": "Other",
                        "name": "x",
                        "uid": "x",
                        "controller": True,
                    }
                ],
            },
            "spec": {"replicas": 5},
        }
        async with cluster.session.post("/apis/apps/v1/namespaces/layer/deployments", json=foreign) as r:
            assert r.status == 200
        await cluster.create_pipeline(pipeline_body("taken"))
        applied = await eventually(
            lambda: cluster.condition("layer", "taken", "WorkersApplied"), "WorkersApplied on taken"
        )
        assert (applied["status"], applied["reason"]) == ("False", "KubernetesError"), applied
        assert "controlled by Other/x" in applied["message"]
        await cluster.delete("/apis/hevlayer.com/v1alpha1/namespaces/layer/pipelines/taken")
        await eventually(lambda: cluster.get(PIPELINES, "layer", "taken") is None, "taken gone")
        assert cluster.get(DEPLOYMENTS, "layer", "taken-worker")["spec"] == {"replicas": 5}  # type: ignore[index]


async def test_infra_rules_pools_are_resolved_and_changes_rerender(
    cluster: Cluster, gateway: tuple[FakePipelineService, str], tmp_path: Path
) -> None:
    """An unknown pool is refused (Ready=False, an Event, nothing created); adding the pool
    to InfraRules/default, then changing it, re-renders the Pipeline. The status timer is
    slowed down so that only the InfraRules handler can cause these re-renders. The operator
    serves one namespace, as the Helm chart does by default (InfraRules are cluster-scoped all the same)."""
    service, address = gateway
    cluster.api.namespaces = ("layer", "team-a")
    settings = settings_for(cluster, address, tmp_path, status_interval_seconds=3600.0, namespaces=("layer",))
    async with running_operator(cluster, settings):
        body = pipeline_body("tpu-embed")
        body["spec"]["scaling"] = {"pool": "tpu", "mode": "autoscale", "replicas": {"min": 0, "max": 8}}
        await cluster.create_pipeline(body)
        ready = await eventually(
            lambda: cluster.condition("layer", "tpu-embed", "Ready"), "Ready on tpu-embed"
        )
        assert (ready["status"], ready["reason"]) == ("False", "UnknownPool"), ready
        assert (
            "spec.scaling.pool: pool 'tpu' is not in InfraRules/default (pools: cpu, gpu)" in ready["message"]
        )
        events = await eventually(lambda: cluster.events("layer", "UnknownPool"), "an UnknownPool Event")
        assert events[0]["type"] == "Warning"
        assert events[0]["involvedObject"]["name"] == "tpu-embed"
        assert cluster.get(DEPLOYMENTS, "layer", "tpu-embed-worker") is None
        assert cluster.get(SCALED_OBJECTS, "layer", "tpu-embed-worker") is None
        assert service.called("CreatePipeline") == []

        # The admin adds the pool, with a ceiling of 3 replicas: the Pipeline is re-rendered.
        rules = infra_rules_body()
        tpu = {
            "name": "tpu",
            "nodeSelector": {"cloud.example.com/accelerator": "tpu-v5"},
            "tolerations": [{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}],
            "resources": {"limits": {"google.com/tpu": "4"}, "requests": {"google.com/tpu": "4"}},
            "maxReplicas": 3,
        }
        rules["spec"]["pools"].append(tpu)
        await cluster.put_infra_rules(rules)
        deployment = await eventually(
            lambda: cluster.get(DEPLOYMENTS, "layer", "tpu-embed-worker"), "the Deployment after the pool"
        )
        pod = deployment["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"cloud.example.com/accelerator": "tpu-v5"}
        assert pod["tolerations"] == tpu["tolerations"]
        assert pod["containers"][0]["resources"] == tpu["resources"]
        scaled = await eventually(
            lambda: cluster.get(SCALED_OBJECTS, "layer", "tpu-embed-worker"), "ScaledObject"
        )
        assert scaled["spec"]["maxReplicaCount"] == 3
        ready = await eventually(
            lambda: (cluster.condition("layer", "tpu-embed", "Ready") or {}).get("status") == "True" or None,
            "Ready once the pool exists",
        )
        applied = cluster.condition("layer", "tpu-embed", "WorkersApplied")
        assert applied is not None
        assert "capped at 3" in applied["message"], applied

        # The pool moves to other nodes: the Deployment follows.
        tpu["nodeSelector"] = {"cloud.example.com/accelerator": "tpu-v6"}
        await cluster.put_infra_rules(rules)
        await eventually(
            lambda: (
                (cluster.get(DEPLOYMENTS, "layer", "tpu-embed-worker") or {})["spec"]["template"]["spec"][
                    "nodeSelector"
                ]
                == {"cloud.example.com/accelerator": "tpu-v6"}
            ),
            "the Deployment on the new nodes",
        )
        annotations = cluster.get(PIPELINES, "layer", "tpu-embed")["metadata"]["annotations"]  # type: ignore[index]
        assert "hevlayer.com/infra-rules" in annotations

        # The pool is removed again: refused, and the workers it ran are removed.
        rules["spec"]["pools"] = [p for p in rules["spec"]["pools"] if p["name"] != "tpu"]
        await cluster.put_infra_rules(rules)
        await eventually(
            lambda: cluster.get(DEPLOYMENTS, "layer", "tpu-embed-worker") is None, "the workers removed"
        )
        assert cluster.get(SCALED_OBJECTS, "layer", "tpu-embed-worker") is None
        ready = await eventually(
            lambda: (cluster.condition("layer", "tpu-embed", "Ready") or {}).get("reason") == "UnknownPool",
            "UnknownPool again",
        )
        # The gateway pipeline (and its data) is left alone by a refusal.
        assert "tpu-embed" in service.pipelines


async def test_images_and_env_outside_the_allow_list_are_refused(
    cluster: Cluster, gateway: tuple[FakePipelineService, str], tmp_path: Path
) -> None:
    service, address = gateway
    async with running_operator(cluster, settings_for(cluster, address, tmp_path)):
        foreign = pipeline_body("foreign")
        foreign["spec"]["worker"]["image"] = "docker.io/someone/miner:latest"
        await cluster.create_pipeline(foreign)
        secret = pipeline_body("secret-env")
        secret["spec"]["worker"]["env"] = [
            {"name": "EXTRA_TOKEN", "valueFrom": {"secretKeyRef": {"name": "layer-s3", "key": "secret"}}}
        ]
        await cluster.create_pipeline(secret)
        unlisted = pipeline_body("unlisted-env")
        unlisted["spec"]["worker"]["env"] = [{"name": "LD_PRELOAD", "value": "/tmp/x.so"}]
        await cluster.create_pipeline(unlisted)
        allowed = pipeline_body("allowed-env")
        allowed["spec"]["worker"]["env"] = [
            {"name": "MODEL", "value": "minilm"},
            {"name": "EXTRA_CONFIG", "valueFrom": {"configMapKeyRef": {"name": "worker", "key": "config"}}},
        ]
        await cluster.create_pipeline(allowed)

        for name, reason, text in (
            (
                "foreign",
                "ImageNotAllowed",
                "spec.worker.image: 'docker.io/someone/miner:latest' is not allowed",
            ),
            ("secret-env", "EnvNotAllowed", "spec.worker.env[0].valueFrom: secretKeyRef is not allowed"),
            ("unlisted-env", "EnvNotAllowed", "spec.worker.env[0].name: 'LD_PRELOAD' is not allowed"),
        ):
            ready = await eventually(
                functools.partial(cluster.condition, "layer", name, "Ready"), f"Ready on {name}"
            )
            assert (ready["status"], ready["reason"]) == ("False", reason), ready
            assert text in ready["message"], ready
            await eventually(
                functools.partial(cluster.events_about, "layer", reason, name),
                f"a {reason} Event about {name}",
            )
            assert cluster.get(DEPLOYMENTS, "layer", f"{name}-worker") is None
        ready = await eventually(
            lambda: (
                (cluster.condition("layer", "allowed-env", "Ready") or {}).get("status") == "True" or None
            ),
            "allowed-env ready",
        )
        assert cluster.get(DEPLOYMENTS, "layer", "allowed-env-worker") is not None
        assert sorted(c.pipeline.id for c in service.called("CreatePipeline")) == ["allowed-env"]

        # The admin allows secrets: the refused Pipeline is re-rendered and runs.
        rules = infra_rules_body()
        rules["spec"]["allowedEnv"] = {"names": ["EXTRA_*"], "valueFrom": ["configMapKeyRef", "secretKeyRef"]}
        await cluster.put_infra_rules(rules)
        await eventually(lambda: cluster.get(DEPLOYMENTS, "layer", "secret-env-worker"), "secret-env workers")
        # ... and allowed-env, whose MODEL is no longer listed, is refused and its workers removed.
        await eventually(
            lambda: cluster.get(DEPLOYMENTS, "layer", "allowed-env-worker") is None,
            "allowed-env workers removed",
        )


async def test_without_infra_rules_nothing_is_created(
    cluster: Cluster, gateway: tuple[FakePipelineService, str], tmp_path: Path
) -> None:
    service, address = gateway
    await cluster.delete(f"{INFRA_RULES_PATH}/default")
    async with running_operator(cluster, settings_for(cluster, address, tmp_path)):
        await cluster.create_pipeline(pipeline_body("early"))
        ready = await eventually(lambda: cluster.condition("layer", "early", "Ready"), "Ready on early")
        assert (ready["status"], ready["reason"]) == ("False", "NoInfraRules"), ready
        assert cluster.get(DEPLOYMENTS, "layer", "early-worker") is None
        assert service.called("CreatePipeline") == []
        await cluster.put_infra_rules(infra_rules_body())
        await eventually(
            lambda: cluster.get(DEPLOYMENTS, "layer", "early-worker"), "workers once InfraRules exist"
        )


async def test_extract_workers_status_and_deletion_policy(
    cluster: Cluster, gateway: tuple[FakePipelineService, str], tmp_path: Path
) -> None:
    service, address = gateway
    async with running_operator(cluster, settings_for(cluster, address, tmp_path)):
        body = pipeline_body(
            "catalog",
            deletionPolicy="delete",
            extract={
                "image": "ghcr.io/hev/catalog-extract:1.0",
                "pool": "cpu",
                "replicas": {"min": 0, "max": 4},
                "trigger": {
                    "type": "aws-sqs-queue",
                    "metadata": {
                        "queueURL": "https://sqs.us-east-1.amazonaws.com/123456789/product-images",
                        "queueLength": "10",
                        "awsRegion": "us-east-1",
                    },
                    "authenticationRef": {"name": "sqs-auth"},
                },
            },
        )
        body["spec"]["scaling"]["targetPerReplica"] = 20
        await cluster.create_pipeline(body)
        extract = await eventually(
            lambda: cluster.get(DEPLOYMENTS, "layer", "catalog-extract"), "extract workers"
        )
        container = extract["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "ghcr.io/hev/catalog-extract:1.0"
        assert {"name": "HEVLAYER_PIPELINE_ID", "value": "catalog"} in container["env"]
        assert extract["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "pipeline-extract"
        scaled = await eventually(
            lambda: cluster.get(SCALED_OBJECTS, "layer", "catalog-extract"), "extract KEDA"
        )
        assert scaled["spec"]["triggers"] == [
            {
                "type": "aws-sqs-queue",
                "metadata": {
                    "queueURL": "https://sqs.us-east-1.amazonaws.com/123456789/product-images",
                    "queueLength": "10",
                    "awsRegion": "us-east-1",
                },
                "authenticationRef": {"name": "sqs-auth"},
            }
        ]
        worker = await eventually(
            lambda: cluster.get(SCALED_OBJECTS, "layer", "catalog-worker"), "worker KEDA"
        )
        assert worker["spec"]["triggers"][0]["metadata"]["threshold"] == "20"

        # KEDA scales the workers and pods become ready: the status follows (status timer).
        for name, count, ready_count in (("catalog-worker", 3, 2), ("catalog-extract", 2, 1)):
            async with cluster.session.patch(
                f"/apis/apps/v1/namespaces/layer/deployments/{name}",
                data=json.dumps({"spec": {"replicas": count}, "status": {"readyReplicas": ready_count}}),
                headers={"Content-Type": "application/merge-patch+json"},
            ) as r:
                assert r.status == 200, await r.text()

        def replicas() -> tuple[Any, ...]:
            status = (cluster.get(PIPELINES, "layer", "catalog") or {}).get("status", {})
            keys = ("replicas", "readyReplicas", "extractReplicas", "extractReadyReplicas")
            return tuple(status.get(k) for k in keys)

        await eventually(lambda: replicas() == (3, 2, 2, 1), "status replicas (3, 2, 2, 1)")

        # Paused: both Deployments pinned to 0, both ScaledObjects gone.
        await cluster.patch_pipeline("layer", "catalog", {"spec": {"paused": True}})
        await eventually(
            lambda: cluster.get(SCALED_OBJECTS, "layer", "catalog-extract") is None, "extract KEDA removed"
        )
        await eventually(
            lambda: (cluster.get(DEPLOYMENTS, "layer", "catalog-extract") or {})["spec"]["replicas"] == 0,
            "extract pinned to 0",
        )
        # Without spec.extract the extract workers go.
        await cluster.patch_pipeline("layer", "catalog", {"spec": {"paused": False, "extract": None}})
        await eventually(
            lambda: cluster.get(DEPLOYMENTS, "layer", "catalog-extract") is None, "extract Deployment removed"
        )

        # deletionPolicy delete: the finalizer deletes the gateway pipeline with its data.
        await cluster.delete("/apis/hevlayer.com/v1alpha1/namespaces/layer/pipelines/catalog")
        await eventually(lambda: cluster.get(PIPELINES, "layer", "catalog") is None, "catalog gone")
        assert [d.pipeline_id for d in service.called("DeletePipeline")] == ["catalog"]
        assert "catalog" not in service.pipelines
        assert cluster.get(DEPLOYMENTS, "layer", "catalog-worker") is None


async def test_real_gateway(
    cluster: Cluster,
    database_url: str,
    s3: SeaweedS3,
    s3_bucket: str,
    service_factory: ServiceFactory,
    tmp_path: Path,
) -> None:
    """The operator against the real claimer and gateway processes."""
    claimer = service_factory("hevlayer-claimer", env={"DATABASE_URL": database_url}, ready_timeout=60)
    assert claimer.grpc_address is not None
    gateway_process = service_factory(
        "hevlayer-gateway",
        # The operator's pipeline sync is under test here; authentication is in tests/gateway/test_auth.py.
        env={
            "CLAIMER_ADDRESS": claimer.grpc_address,
            "GATEWAY_MILVUS_LITE_PATH": str(tmp_path / "vectors.db"),
            "GATEWAY_CACHE_DIR": str(tmp_path / "cache"),
            "GATEWAY_AUTH": "off",
            **s3.client_env(s3_bucket),
        },
        ready_timeout=60,
    )
    address = gateway_process.grpc_address
    assert address is not None
    channel = aio.insecure_channel(address)
    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
    try:
        async with running_operator(cluster, settings_for(cluster, address, tmp_path)):
            await cluster.create_pipeline(
                pipeline_body("e2e-pipeline", distanceMetric="euclidean_squared", deletionPolicy="delete")
            )
            await eventually(
                lambda: (cluster.condition("layer", "e2e-pipeline", "Ready") or {}).get("status") == "True",
                "Ready against the real gateway",
            )
            got = await stub.GetPipeline(pb.GetPipelineRequest(pipeline_id="e2e-pipeline"))
            assert got.pipeline.target_namespace == "e2e_pipeline"
            assert got.pipeline.distance_metric == pb.DISTANCE_METRIC_EUCLIDEAN_SQUARED
            assert got.pipeline.paused is False

            await cluster.patch_pipeline("layer", "e2e-pipeline", {"spec": {"paused": True}})

            async def paused() -> bool:
                reply = await stub.GetPipeline(pb.GetPipelineRequest(pipeline_id="e2e-pipeline"))
                return bool(reply.pipeline.paused)

            await eventually(paused, "the gateway pipeline paused")
            await cluster.delete("/apis/hevlayer.com/v1alpha1/namespaces/layer/pipelines/e2e-pipeline")
            await eventually(lambda: cluster.get(PIPELINES, "layer", "e2e-pipeline") is None, "deleted")
            with pytest.raises(aio.AioRpcError) as missing:
                await stub.GetPipeline(pb.GetPipelineRequest(pipeline_id="e2e-pipeline"))
            assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    finally:
        await channel.close()


async def test_console_script_serves_liveness_and_stops_on_sigterm(
    cluster: Cluster, gateway: tuple[FakePipelineService, str], tmp_path: Path
) -> None:
    """``hevlayer-operator`` as a process: env settings, JSON logs, /healthz, SIGTERM."""
    _, address = gateway
    health = f"127.0.0.1:{free_port()}"
    env = {
        "OPERATOR_GATEWAY_ADDRESS": address,
        "OPERATOR_KUBECONFIG": str(write_kubeconfig(tmp_path / "kubeconfig", cluster.url)),
        "OPERATOR_HEALTH_ADDRESS": health,
        "HEVLAYER_LOG_FORMAT": "json",
    }
    log_path = tmp_path / "operator.log"
    process = ServiceProcess("hevlayer-operator", env=env, log_path=log_path).start()
    try:
        async with aiohttp.ClientSession() as session:

            async def alive() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://{health}/healthz") as response:
                        return response.status == 200
                assert process.running, log_path.read_text()
                return False

            await eventually(alive, "GET /healthz = 200")
        await cluster.wait_watching()
        await cluster.create_pipeline(pipeline_body("from-process"))
        await eventually(lambda: cluster.get(DEPLOYMENTS, "layer", "from-process-worker"), "the Deployment")
        # SIGTERM: kopf stops gracefully and the process exits 0.
        assert await asyncio.to_thread(process.stop, WAIT) == 0, log_path.read_text()
    finally:
        await asyncio.to_thread(process.kill)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(line["message"] == "operator starting" and line["service"] == "operator" for line in lines)


def test_missing_credentials_exit_2(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("hevlayer-operator")
    env = {**os.environ, "OPERATOR_KUBECONFIG": str(tmp_path / "missing")}
    result = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 2
    assert "kubeconfig" in result.stderr
