"""One reconciliation of a Pipeline: gateway pipeline, worker objects, status.

Independent of kopf: :class:`Reconciler` takes parsed :class:`Pipeline`
values and returns a :class:`Reconciliation` (conditions, pending count, whether a
retry is due); :func:`status_changes` turns it into a status patch. The kopf
handlers (:mod:`hevlayer.operator.handlers`) only glue these to events.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from hevlayer.client import is_transient
from hevlayer.client.naming import NAMESPACE_TAKEN, effective_namespace
from hevlayer.common.errors import AlreadyExists, NotFound, ServiceError
from hevlayer.operator import conditions as cond
from hevlayer.operator.gateway_client import GatewayPipeline, GatewayStatus
from hevlayer.operator.infra import Admission, Refusal
from hevlayer.operator.kube_client import Applied, KubeError
from hevlayer.operator.render import (
    DEPLOYMENT_API,
    SCALED_OBJECT_API,
    RenderContext,
    extract_name,
    render_deployment,
    render_extract_deployment,
    render_extract_scaled_object,
    render_scaled_object,
    update_patch,
    worker_name,
)
from hevlayer.operator.spec import DistanceMetric, Pipeline, PipelineRef

log = logging.getLogger("hevlayer.operator")


class Gateway(Protocol):
    """What the reconciler needs from the gateway (see GatewayClient)."""

    async def get(self, pipeline_id: str) -> GatewayPipeline: ...

    async def create(
        self, pipeline_id: str, *, target_namespace: str, distance_metric: DistanceMetric, paused: bool
    ) -> GatewayPipeline: ...

    async def set_paused(self, pipeline_id: str, paused: bool) -> GatewayPipeline: ...

    async def delete(self, pipeline_id: str) -> None: ...

    async def status(self, pipeline_id: str) -> GatewayStatus: ...


class Kube(Protocol):
    """What the reconciler needs from the Kubernetes API (see KubeClient)."""

    async def get(self, api: tuple[str, str], namespace: str, name: str) -> dict[str, Any] | None: ...

    async def apply(
        self, api: tuple[str, str], manifest: Mapping[str, Any], patch: Mapping[str, Any]
    ) -> Applied: ...

    async def delete_owned(self, api: tuple[str, str], namespace: str, name: str, owner_uid: str) -> bool: ...

    async def patch(
        self, api: tuple[str, str], namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class Reconciliation:
    """The result of one reconciliation."""

    conditions: tuple[cond.Condition, ...]
    retry: bool = False
    """A transient failure happened: reconcile again later."""
    pending_count: int | None = None
    """Pending documents, when the gateway was asked."""
    replicas: tuple[int, int] | None = None
    """The worker Deployment's (desired, ready) replicas, when it was read."""
    extract_replicas: tuple[int, int] | None = None
    """The extract Deployment's (desired, ready) replicas, when it was read."""

    @property
    def message(self) -> str:
        """The failures, for logs and retry errors."""
        return "; ".join(f"{c.type}: {c.message}" for c in self.conditions if not c.status)


def expected_target(pipeline: Pipeline) -> str:
    """The target namespace the gateway uses for this pipeline (its default: the id
    with '-' replaced by '_')."""
    return effective_namespace(pipeline.ref.pipeline_id, pipeline.spec.target_namespace)


def immutable_mismatch(pipeline: Pipeline, current: GatewayPipeline) -> str | None:
    """Why the gateway's pipeline cannot be this Pipeline's (immutable fields differ), or None."""
    problems = []
    target = expected_target(pipeline)
    if current.target_namespace != target:
        problems.append(f"target namespace {current.target_namespace!r}, spec wants {target!r}")
    metric = current.distance_metric or DistanceMetric.COSINE_DISTANCE
    if metric is not pipeline.spec.distance_metric:
        problems.append(f"distance metric {metric.value}, spec wants {pipeline.spec.distance_metric.value}")
    if not problems:
        return None
    return (
        f"gateway pipeline {current.id!r} has " + " and ".join(problems) + " (immutable: recreate the "
        "Pipeline under another name, or delete the gateway pipeline)"
    )


class Reconciler:
    """Brings the gateway and the cluster in line with Pipeline objects."""

    def __init__(self, kube: Kube, gateway: Gateway, ctx: RenderContext) -> None:
        self.kube = kube
        self.gateway = gateway
        self.ctx = ctx

    async def reconcile(
        self, pipeline: Pipeline, *, admission: Admission | None = None, refresh_status: bool = True
    ) -> Reconciliation:
        """Sync the gateway pipeline, then apply (or remove) the worker objects.

        ``admission``: the Pipeline as InfraRules admitted it (capped replicas, its
        pools); None renders ``pipeline`` as it is, without pools.
        """
        if admission is None:
            admission = Admission(pipeline=pipeline)
        pipeline = admission.pipeline
        synced, gateway_retry = await self._sync_gateway(pipeline)
        if not synced.status and synced.reason == cond.PIPELINE_CONFLICT:
            workers, kube_retry = await self._remove_workers(pipeline.ref, synced.message)
        else:
            workers, kube_retry = await self._apply_workers(admission)
        replicas = extract_replicas = None
        if workers.status:
            replicas, extract_replicas = await self._read_replicas(pipeline)
        pending = None
        if refresh_status and synced.status:
            try:
                pending = (await self.gateway.status(pipeline.ref.pipeline_id)).pending_count
            except ServiceError as exc:
                log.warning(
                    "pipeline status unavailable: %s",
                    exc.message,
                    extra={"pipeline": pipeline.ref.pipeline_id, "namespace": pipeline.ref.namespace},
                )
        admitted = cond.Condition(cond.ADMITTED, True, cond.ADMITTED_REASON, _admitted_message(admission))
        found = (admitted, synced, workers)
        return Reconciliation(
            conditions=(*found, cond.ready_condition(found)),
            retry=gateway_retry or kube_retry,
            pending_count=pending,
            replicas=replicas,
            extract_replicas=extract_replicas,
        )

    async def refuse(self, ref: PipelineRef, refusal: Refusal) -> Reconciliation:
        """InfraRules refuse the Pipeline: create nothing, and remove the workers an
        earlier admission created. The gateway pipeline (and its data) is left alone."""
        admitted = cond.Condition(cond.ADMITTED, False, refusal.reason, refusal.message)
        workers, retry = await self._remove_workers(ref, "")
        if workers.reason != cond.KUBERNETES_ERROR:
            workers = cond.Condition(
                cond.WORKERS_APPLIED,
                False,
                refusal.reason,
                "no workers: InfraRules/default refuses the Pipeline",
            )
        found = (admitted, workers)
        return Reconciliation(conditions=(*found, cond.ready_condition(found)), retry=retry)

    async def _read_replicas(
        self, pipeline: Pipeline
    ) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        ref = pipeline.ref
        result: list[tuple[int, int] | None] = []
        for name, wanted in (
            (worker_name(ref), True),
            (extract_name(ref), pipeline.spec.extract is not None),
        ):
            if not wanted:
                result.append(None)
                continue
            try:
                live = await self.kube.get(DEPLOYMENT_API, ref.namespace, name)
            except KubeError as exc:
                log.warning("cannot read Deployment %s: %s", name, exc, extra={"pipeline": ref.pipeline_id})
                live = None
            result.append(None if live is None else _replica_counts(live))
        return result[0], result[1]

    async def conflict(self, ref: PipelineRef, owner: str) -> Reconciliation:
        """Another Pipeline of the same name owns the gateway pipeline: run no workers."""
        message = (
            f"pipeline id {ref.pipeline_id!r} belongs to Pipeline {owner}/{ref.name} "
            "(pipeline ids are cluster-wide: rename this Pipeline)"
        )
        synced = cond.Condition(cond.GATEWAY_SYNCED, False, cond.PIPELINE_CONFLICT, message)
        workers, retry = await self._remove_workers(ref, message)
        return Reconciliation(
            conditions=(synced, workers, cond.ready_condition((synced, workers))), retry=retry
        )

    async def finalize(self, ref: PipelineRef, *, delete_gateway_pipeline: bool) -> None:
        """Remove the worker objects and (when this Pipeline owns it) the gateway pipeline.

        Owner references would let Kubernetes collect the workers anyway; deleting
        them first stops the workers before their pipeline disappears. Raises
        KubeError / ServiceError when a retry is due; NotFound is success.
        """
        for name in (extract_name(ref), worker_name(ref)):
            await self.kube.delete_owned(SCALED_OBJECT_API, ref.namespace, name, ref.uid)
            await self.kube.delete_owned(DEPLOYMENT_API, ref.namespace, name, ref.uid)
        if delete_gateway_pipeline:
            try:
                await self.gateway.delete(ref.pipeline_id)
                log.info(
                    "deleted gateway pipeline",
                    extra={"pipeline": ref.pipeline_id, "namespace": ref.namespace},
                )
            except NotFound:
                pass

    async def _sync_gateway(self, pipeline: Pipeline) -> tuple[cond.Condition, bool]:
        pipeline_id = pipeline.ref.pipeline_id
        spec = pipeline.spec
        try:
            try:
                current = await self.gateway.get(pipeline_id)
            except NotFound:
                try:
                    current = await self.gateway.create(
                        pipeline_id,
                        target_namespace=spec.target_namespace,
                        distance_metric=spec.distance_metric,
                        paused=spec.paused,
                    )
                    log.info(
                        "created gateway pipeline",
                        extra={"pipeline": pipeline_id, "namespace": pipeline.ref.namespace},
                    )
                except AlreadyExists as exc:
                    if exc.reason == NAMESPACE_TAKEN:  # another pipeline owns the target namespace
                        return cond.Condition(
                            cond.GATEWAY_SYNCED, False, cond.PIPELINE_CONFLICT, exc.message
                        ), False
                    # created concurrently (or by an earlier attempt)
                    current = await self.gateway.get(pipeline_id)
            mismatch = immutable_mismatch(pipeline, current)
            if mismatch is not None:
                return cond.Condition(cond.GATEWAY_SYNCED, False, cond.PIPELINE_CONFLICT, mismatch), False
            if current.paused != spec.paused:
                await self.gateway.set_paused(pipeline_id, spec.paused)
            state = "paused" if spec.paused else "active"
            return cond.Condition(
                cond.GATEWAY_SYNCED, True, cond.SYNCED, f"gateway pipeline {pipeline_id!r} is {state}"
            ), False
        except ServiceError as exc:
            retry = is_transient(exc)
            reason = cond.GATEWAY_UNAVAILABLE if retry else cond.GATEWAY_REJECTED
            message = f"{exc.code.name}: {exc.message}"
            return cond.Condition(cond.GATEWAY_SYNCED, False, reason, message), retry

    async def _apply_workers(self, admission: Admission) -> tuple[cond.Condition, bool]:
        pipeline = admission.pipeline
        spec = pipeline.spec
        ref = pipeline.ref
        objects = (
            (
                worker_name(ref),
                render_deployment(pipeline, self.ctx, admission.pool),
                render_scaled_object(pipeline, self.ctx),
                spec.autoscaled,
            ),
            (
                extract_name(ref),
                render_extract_deployment(pipeline, self.ctx, admission.extract_pool),
                render_extract_scaled_object(pipeline, self.ctx),
                spec.extract is not None and spec.extract_replicas is None,
            ),
        )
        try:
            for name, deployment, scaled_object, autoscaled in objects:
                if scaled_object is None:
                    # KEDA must let go before the replica count is pinned.
                    await self.kube.delete_owned(SCALED_OBJECT_API, ref.namespace, name, ref.uid)
                if deployment is None:
                    await self.kube.delete_owned(DEPLOYMENT_API, ref.namespace, name, ref.uid)
                    continue
                applied = await self.kube.apply(
                    DEPLOYMENT_API, deployment, update_patch(deployment, spec, autoscaled=autoscaled)
                )
                self._log_applied(ref, "Deployment", name, applied)
                if scaled_object is not None:
                    applied = await self.kube.apply(
                        SCALED_OBJECT_API, scaled_object, update_patch(scaled_object, spec)
                    )
                    self._log_applied(ref, "ScaledObject", name, applied)
        except KubeError as exc:
            return cond.Condition(cond.WORKERS_APPLIED, False, cond.KUBERNETES_ERROR, str(exc)), exc.retryable
        return cond.Condition(cond.WORKERS_APPLIED, True, cond.APPLIED, _describe(admission)), False

    async def _remove_workers(self, ref: PipelineRef, message: str) -> tuple[cond.Condition, bool]:
        try:
            for name in (extract_name(ref), worker_name(ref)):
                await self.kube.delete_owned(SCALED_OBJECT_API, ref.namespace, name, ref.uid)
                await self.kube.delete_owned(DEPLOYMENT_API, ref.namespace, name, ref.uid)
        except KubeError as exc:
            return cond.Condition(cond.WORKERS_APPLIED, False, cond.KUBERNETES_ERROR, str(exc)), exc.retryable
        return cond.Condition(cond.WORKERS_APPLIED, False, cond.PIPELINE_CONFLICT, message), False

    @staticmethod
    def _log_applied(ref: PipelineRef, kind: str, name: str, applied: Applied) -> None:
        if applied is not Applied.UNCHANGED:
            log.info(
                "%s %s %s",
                kind,
                name,
                applied.value,
                extra={"pipeline": ref.pipeline_id, "namespace": ref.namespace},
            )


def invalid_outcome(message: str) -> Reconciliation:
    """The spec is invalid: Ready is False and nothing else is touched."""
    return Reconciliation(conditions=(cond.Condition(cond.READY, False, cond.INVALID_SPEC, message),))


def _replica_counts(deployment: Mapping[str, Any]) -> tuple[int, int]:
    """(desired, ready) replicas of a live Deployment."""
    desired = deployment.get("spec", {}).get("replicas")
    ready = deployment.get("status", {}).get("readyReplicas")
    return (desired if isinstance(desired, int) else 1, ready if isinstance(ready, int) else 0)


def _admitted_message(admission: Admission) -> str:
    pools = [
        f"{what} in pool {pool.name!r}"
        for what, pool in (("workers", admission.pool), ("extract workers", admission.extract_pool))
        if pool is not None
    ]
    return "; ".join(pools) or "no pool"


def _describe(admission: Admission) -> str:
    spec = admission.pipeline.spec
    pinned = spec.fixed_replicas
    if pinned is None:
        text = (
            f"autoscaled by KEDA between {spec.scaling.min_replicas} and {spec.scaling.max_replicas} "
            f"replicas ({spec.threshold} pending documents per replica)"
        )
    else:
        why = "paused" if spec.paused else spec.scaling.mode.value
        text = f"{pinned} replicas ({why})"
    if spec.extract is not None:
        extract = spec.extract
        if spec.extract_replicas is not None:
            text += f"; extract: {spec.extract_replicas} replicas"
        else:
            on = extract.trigger.type if extract.trigger is not None else "the extract stage"
            text += f"; extract: {extract.min_replicas} to {extract.max_replicas} replicas on {on}"
    if admission.notes:
        text += "; " + "; ".join(admission.notes)
    return text


def desired_status(
    current: Mapping[str, Any],
    outcome: Reconciliation,
    *,
    ref: PipelineRef | None,
    now: str,
) -> dict[str, Any]:
    """The Pipeline's status after ``outcome`` (from its ``current`` status)."""
    generation = ref.generation if ref is not None else None
    status: dict[str, Any] = {
        "conditions": cond.merge_conditions(
            current.get("conditions"), outcome.conditions, now=now, generation=generation
        )
    }
    if generation is not None:
        status["observedGeneration"] = generation
    if ref is not None:
        status["pipelineId"] = ref.pipeline_id
    if outcome.pending_count is not None:
        status["pendingCount"] = outcome.pending_count
    if outcome.replicas is not None:
        status["replicas"], status["readyReplicas"] = outcome.replicas
    if outcome.extract_replicas is not None:
        status["extractReplicas"], status["extractReadyReplicas"] = outcome.extract_replicas
    return status


def status_changes(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``desired`` whose values differ from ``current`` (an empty dict
    when the status is up to date, so that no patch is sent)."""
    return {k: v for k, v in desired.items() if current.get(k) != v}
