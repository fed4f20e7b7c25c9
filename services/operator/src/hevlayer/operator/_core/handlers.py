"""Kopf handlers of Pipeline objects, registered on a fresh registry.

- create / update (spec) / resume: reconcile (gateway pipeline, workers, status);
  transient failures are retried by kopf with exponential backoff.
- timer (OPERATOR_STATUS_INTERVAL_SECONDS): reconcile again (repairs drift of
  the worker objects and of the gateway's paused flag) and refresh
  status.pendingCount from GetPipelineStatus.
- delete (with the finalizer ``hevlayer.com/pipeline``): remove the worker
  objects and DeletePipeline in the gateway.
- index ``pipeline_claims``: which Pipelines use each name, so that two
  Pipelines of the same name in different namespaces do not share (and then
  delete) one gateway pipeline: the oldest one owns the id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import kopf

from hevlayer.client import is_transient
from hevlayer.common.errors import InvalidArgument, ServiceError
from hevlayer.operator import conditions as cond
from hevlayer.operator._cogs.kube import KubeError
from hevlayer.operator._core.reconcile import (
    Reconciler,
    Reconciliation,
    desired_status,
    invalid_outcome,
    status_changes,
)
from hevlayer.operator.spec import GROUP, PLURAL, VERSION, Pipeline, PipelineRef, parse_pipeline, parse_ref

FINALIZER = "hevlayer.com/pipeline"
ANNOTATION_PREFIX = "operator.hevlayer.com"
MAX_BACKOFF_SECONDS = 60.0
# The index of Pipeline names (kopf passes it to handlers under this keyword).
CLAIMS_INDEX = "pipeline_claims"


def backoff(retry: int) -> float:
    """Seconds before kopf retries a handler for the ``retry``-th time (1, 2, 4, ... 60)."""
    return float(min(MAX_BACKOFF_SECONDS, 2 ** min(retry, 6)))


def claim_owner(claims: Iterable[tuple[str, str]], namespace: str) -> str:
    """The namespace whose Pipeline owns a name: the oldest claim
    (creationTimestamp, then namespace); ``namespace`` when there is none."""
    ordered = sorted(claims)
    return ordered[0][1] if ordered else namespace


def kopf_settings() -> kopf.OperatorSettings:
    """Kopf's settings: our finalizer, handler state in our annotations (not in
    status, whose schema the CRD keeps strict), events for warnings only."""
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    return settings


def build_registry(
    reconciler: Reconciler,
    *,
    status_interval: float,
    credentials: Callable[[], kopf.ConnectionInfo],
) -> kopf.OperatorRegistry:
    """A registry with every handler of the operator."""
    registry = kopf.OperatorRegistry()
    # One reconciliation at a time per Pipeline: the timer must not apply a spec
    # while a change handler applies a newer one (or retries an older one).
    locks: dict[str, asyncio.Lock] = {}

    def lock(uid: str) -> asyncio.Lock:
        return locks.setdefault(uid, asyncio.Lock())

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return credentials()

    @kopf.index(GROUP, VERSION, PLURAL, registry=registry, id=CLAIMS_INDEX)
    def pipeline_claims(
        name: str, namespace: str | None, meta: kopf.Meta, **_: Any
    ) -> dict[str, tuple[str, str]]:
        return {name: (str(meta.get("creationTimestamp") or ""), namespace or "")}

    def owner_of(ref: PipelineRef, kwargs: Mapping[str, Any]) -> str:
        # Kopf passes each index as a keyword argument named after its handler.
        claims: kopf.Index[str, tuple[str, str]] = kwargs[CLAIMS_INDEX]
        return claim_owner(claims.get(ref.name, ()), ref.namespace)

    def write_status(
        body: kopf.Body, patch: kopf.Patch, outcome: Reconciliation, ref: PipelineRef | None
    ) -> None:
        current: Mapping[str, Any] = body.get("status") or {}
        desired = desired_status(current, outcome, ref=ref, now=cond.now_rfc3339())
        for key, value in status_changes(current, desired).items():
            patch.status[key] = value

    async def run(body: kopf.Body, patch: kopf.Patch, kwargs: Mapping[str, Any]) -> Reconciliation:
        try:
            pipeline: Pipeline = parse_pipeline(body)
        except InvalidArgument as exc:
            ref = None
            with contextlib.suppress(InvalidArgument):
                ref = parse_ref(body)
            outcome = invalid_outcome(exc.message)
            write_status(body, patch, outcome, ref)
            raise kopf.PermanentError(f"invalid Pipeline: {exc.message}") from None
        owner = owner_of(pipeline.ref, kwargs)
        if owner != pipeline.ref.namespace:
            outcome = await reconciler.conflict(pipeline.ref, owner)
        else:
            outcome = await reconciler.reconcile(pipeline)
        write_status(body, patch, outcome, pipeline.ref)
        return outcome

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="reconcile")
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="reconcile")
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, id="reconcile", field="spec")
    async def reconcile(
        body: kopf.Body,
        patch: kopf.Patch,
        uid: str,
        retry: int,
        logger: kopf.Logger,
        **kwargs: Any,
    ) -> None:
        async with lock(uid):
            outcome = await run(body, patch, kwargs)
        if outcome.retry:
            raise kopf.TemporaryError(outcome.message, delay=backoff(retry))
        if outcome.message:
            logger.warning("Pipeline is not ready: %s", outcome.message)

    @kopf.timer(
        GROUP, VERSION, PLURAL, registry=registry, interval=status_interval, initial_delay=status_interval
    )
    async def refresh(
        body: kopf.Body,
        meta: kopf.Meta,
        patch: kopf.Patch,
        uid: str,
        logger: kopf.Logger,
        **kwargs: Any,
    ) -> None:
        # Timers get live views: after waiting for the lock, body is the latest state.
        async with lock(uid):
            if meta.get("deletionTimestamp"):
                return
            try:
                outcome = await run(body, patch, kwargs)
            except kopf.PermanentError:
                return  # reported in status; the next spec change is handled by `reconcile`
        if outcome.message:
            logger.debug("Pipeline is not ready: %s", outcome.message)

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, id="finalize")
    async def finalize(
        body: kopf.Body,
        status: kopf.Status,
        uid: str,
        retry: int,
        logger: kopf.Logger,
        **kwargs: Any,
    ) -> None:
        async with lock(uid):
            await remove(body, status, retry, logger, kwargs)
        locks.pop(uid, None)

    async def remove(
        body: kopf.Body, status: kopf.Status, retry: int, logger: kopf.Logger, kwargs: Mapping[str, Any]
    ) -> None:
        try:
            ref = parse_ref(body)
        except InvalidArgument:
            return  # never reconciled: nothing of ours exists
        synced = cond.find(status.get("conditions"), cond.GATEWAY_SYNCED)
        owned = owner_of(ref, kwargs) == ref.namespace and (
            synced is None or synced.get("reason") != cond.PIPELINE_CONFLICT
        )
        try:
            await reconciler.finalize(ref, delete_gateway_pipeline=owned)
        except KubeError as exc:
            if exc.retryable:
                raise kopf.TemporaryError(str(exc), delay=backoff(retry)) from exc
            raise kopf.PermanentError(str(exc)) from exc
        except ServiceError as exc:
            if is_transient(exc):
                raise kopf.TemporaryError(f"{exc.code.name}: {exc.message}", delay=backoff(retry)) from exc
            logger.error("gateway refused to delete pipeline %s: %s", ref.pipeline_id, exc.message)

    return registry
