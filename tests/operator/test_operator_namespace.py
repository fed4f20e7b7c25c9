"""A Pipeline whose target namespace another gateway pipeline owns: the gateway refuses the
create (ALREADY_EXISTS, reason NAMESPACE_TAKEN); the operator reports a conflict naming the
owner, runs no workers and does not retry (the spec must change)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hevlayer.client.naming import NAMESPACE_TAKEN
from hevlayer.common.errors import AlreadyExists, NotFound, Violation
from hevlayer.operator import RenderContext, parse_pipeline
from hevlayer.operator.conditions import GATEWAY_SYNCED, PIPELINE_CONFLICT, WORKERS_APPLIED
from hevlayer.operator.gateway_client import GatewayPipeline, GatewayStatus
from hevlayer.operator.kube_client import Applied
from hevlayer.operator.reconcile import Reconciler
from hevlayer.operator.spec import DistanceMetric

CTX = RenderContext(gateway_address="gw:50051", gateway_http_url="http://gw:8080/")
REFUSAL = (
    "pipeline.target_namespace: namespace 'products' of sink milvus_lite belongs to pipeline "
    "'catalog'; each pipeline needs a namespace of its own (name another target_namespace)"
)


class NamespaceTakenGateway:
    """A gateway where the Pipeline's id is free but its namespace is not."""

    def __init__(self) -> None:
        self.creates: list[tuple[str, str]] = []

    async def get(self, pipeline_id: str) -> GatewayPipeline:
        raise NotFound(f"pipeline {pipeline_id!r} not found")

    async def create(
        self, pipeline_id: str, *, target_namespace: str, distance_metric: DistanceMetric, paused: bool
    ) -> GatewayPipeline:
        self.creates.append((pipeline_id, target_namespace))
        raise AlreadyExists(
            REFUSAL,
            reason=NAMESPACE_TAKEN,
            violations=[Violation("pipeline.target_namespace", REFUSAL.split(": ", 1)[1])],
            metadata={"owner_pipeline_id": "catalog"},
        )

    async def set_paused(self, pipeline_id: str, paused: bool) -> GatewayPipeline:
        raise AssertionError("no pipeline to pause")

    async def delete(self, pipeline_id: str) -> None:
        raise AssertionError("the pipeline was never created")

    async def status(self, pipeline_id: str) -> GatewayStatus:
        raise AssertionError("no pipeline to ask")


class RecordingKube:
    def __init__(self) -> None:
        self.applied: list[str] = []
        self.deleted: list[tuple[str, str]] = []

    async def apply(
        self, api: tuple[str, str], manifest: Mapping[str, Any], patch: Mapping[str, Any]
    ) -> Applied:
        self.applied.append(manifest["kind"])
        return Applied.CREATED

    async def delete_owned(self, api: tuple[str, str], namespace: str, name: str, owner_uid: str) -> bool:
        self.deleted.append((api[1], name))
        return False

    async def get(self, api: tuple[str, str], namespace: str, name: str) -> dict[str, Any] | None:
        raise AssertionError("no workers to read")

    async def patch(
        self, api: tuple[str, str], namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        raise AssertionError("nothing to patch")


async def test_a_taken_namespace_is_a_conflict_without_workers() -> None:
    pipeline = parse_pipeline(
        {
            "apiVersion": "hevlayer.com/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": "shop", "namespace": "layer", "uid": "0f1e2d3c", "generation": 1},
            "spec": {
                "target": {"namespace": "products"},
                "worker": {"image": "worker:1"},
                "scaling": {"replicas": {"min": 0, "max": 2}},
            },
        }
    )
    gateway = NamespaceTakenGateway()
    kube = RecordingKube()
    outcome = await Reconciler(kube, gateway, CTX).reconcile(pipeline)

    assert gateway.creates == [("shop", "products")]
    conditions = {c.type: c for c in outcome.conditions}
    synced = conditions[GATEWAY_SYNCED]
    assert (synced.status, synced.reason, synced.message) == (False, PIPELINE_CONFLICT, REFUSAL)
    assert "'catalog'" in synced.message
    assert (conditions[WORKERS_APPLIED].status, conditions[WORKERS_APPLIED].reason) == (
        False,
        PIPELINE_CONFLICT,
    )
    assert kube.applied == []
    # Both the worker and the (absent) extract objects are removed.
    assert sorted(kube.deleted) == [
        ("deployments", "shop-extract"),
        ("deployments", "shop-worker"),
        ("scaledobjects", "shop-extract"),
        ("scaledobjects", "shop-worker"),
    ]
    assert outcome.retry is False
