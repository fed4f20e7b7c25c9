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
- index ``infra_rules``: the InfraRules objects; every reconciliation first
  admits the Pipeline against ``InfraRules/default`` (unknown pool, forbidden
  image or env: Ready=False, a Warning Event, nothing created).
- event handler on InfraRules: every Pipeline whose rules changed (the pools
  it uses, the allow-lists) gets the annotation ``hevlayer.com/infra-rules``
  set to the new rules' fingerprint, which re-reconciles it (handler
  ``rerender``) with the new rules.
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
from hevlayer.operator.infra import (
    INVALID_INFRA_RULES,
    InfraRules,
    Refusal,
    admit,
    fingerprint,
    parse_infra_rules,
)
from hevlayer.operator.infra import NAME as RULES_NAME
from hevlayer.operator.infra import PLURAL as RULES_PLURAL
from hevlayer.operator.kube_client import KubeError
from hevlayer.operator.reconcile import (
    Reconciler,
    Reconciliation,
    desired_status,
    invalid_outcome,
    status_changes,
)
from hevlayer.operator.spec import (
    API_VERSION,
    GROUP,
    PLURAL,
    VERSION,
    Pipeline,
    PipelineRef,
    parse_pipeline,
    parse_ref,
)

FINALIZER = "hevlayer.com/pipeline"
ANNOTATION_PREFIX = "operator.hevlayer.com"
MAX_BACKOFF_SECONDS = 60.0
# The index of Pipeline names (kopf passes it to handlers under this keyword).
CLAIMS_INDEX = "pipeline_claims"
# The index of InfraRules objects by name.
RULES_INDEX = "infra_rules"
# The index of Pipelines by (namespace, name): the pools they use and their rules annotation.
POOLS_INDEX = "pipeline_pools"
RULES_ANNOTATION = "hevlayer.com/infra-rules"
PIPELINE_API = (API_VERSION, PLURAL)


def pipeline_pools(spec: Mapping[str, Any]) -> tuple[str | None, ...]:
    """The pools a Pipeline's raw spec names (spec.scaling.pool, spec.extract.pool)."""

    def pool(section: Any) -> str | None:
        value = section.get("pool") if isinstance(section, Mapping) else None
        return value if isinstance(value, str) and value else None

    return (pool(spec.get("scaling")), pool(spec.get("extract")))


def rules_fingerprint(body: Mapping[str, Any] | None, pools: Iterable[str | None]) -> str:
    """The fingerprint of InfraRules ``body`` (None: absent) for a Pipeline using ``pools``."""
    if body is None:
        return fingerprint(None, list(pools))
    try:
        rules = parse_infra_rules(body)
    except InvalidArgument as exc:
        return "invalid-" + fingerprint(None, [exc.message])
    return fingerprint(rules, list(pools))


def current_rules(bodies: Iterable[Mapping[str, Any]]) -> InfraRules | Refusal | None:
    """InfraRules/default from the index's bodies: None when absent, a Refusal when invalid."""
    found = list(bodies)
    if not found:
        return None
    try:
        return parse_infra_rules(found[-1])
    except InvalidArgument as exc:
        return Refusal(INVALID_INFRA_RULES, f"InfraRules/{RULES_NAME} is invalid: {exc.message}")


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

    @kopf.index(GROUP, VERSION, RULES_PLURAL, registry=registry, id=RULES_INDEX)
    def infra_rules(name: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
        return {name: {"spec": dict(body.get("spec") or {})}}

    @kopf.index(GROUP, VERSION, PLURAL, registry=registry, id=POOLS_INDEX)
    def pipeline_pools_index(
        name: str, namespace: str | None, spec: kopf.Spec, annotations: kopf.Annotations, **_: Any
    ) -> dict[tuple[str, str], tuple[tuple[str | None, ...], str]]:
        return {(namespace or "", name): (pipeline_pools(spec), annotations.get(RULES_ANNOTATION, ""))}

    @kopf.on.event(GROUP, VERSION, RULES_PLURAL, registry=registry, id="infra-rules-changed")
    async def infra_rules_changed(
        name: str, type: str | None, body: kopf.Body, logger: kopf.Logger, **kwargs: Any
    ) -> None:
        if name != RULES_NAME:
            return
        rules_body = None if type == "DELETED" else {"spec": dict(body.get("spec") or {})}
        pipelines: kopf.Index[tuple[str, str], tuple[tuple[str | None, ...], str]] = kwargs[POOLS_INDEX]
        for (namespace, pipeline_name), entries in list(pipelines.items()):
            for pools, recorded in list(entries):
                wanted = rules_fingerprint(rules_body, pools)
                if wanted == recorded:
                    continue
                try:
                    await reconciler.kube.patch(
                        PIPELINE_API,
                        namespace,
                        pipeline_name,
                        {"metadata": {"annotations": {RULES_ANNOTATION: wanted}}},
                    )
                except KubeError as exc:
                    # The Pipeline's timer re-reconciles it with the new rules anyway.
                    logger.warning(
                        "cannot mark Pipeline %s/%s for re-rendering: %s", namespace, pipeline_name, exc
                    )

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
        rules = current_rules(kwargs[RULES_INDEX].get(RULES_NAME, ()))
        admission = rules if isinstance(rules, Refusal) else admit(pipeline, rules)
        owner = owner_of(pipeline.ref, kwargs)
        if isinstance(admission, Refusal):
            outcome = await reconciler.refuse(pipeline.ref, admission)
            previous = cond.find((body.get("status") or {}).get("conditions"), cond.ADMITTED)
            if previous is None or previous.get("message") != admission.message:
                kopf.warn(body, reason=admission.reason, message=admission.message)
        elif owner != pipeline.ref.namespace:
            outcome = await reconciler.conflict(pipeline.ref, owner)
        else:
            outcome = await reconciler.reconcile(pipeline, admission=admission)
        write_status(body, patch, outcome, pipeline.ref)
        return outcome

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="reconcile")
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="reconcile")
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, id="reconcile", field="spec")
    @kopf.on.update(
        GROUP,
        VERSION,
        PLURAL,
        registry=registry,
        id="rerender",
        field=("metadata", "annotations", RULES_ANNOTATION),
    )
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
        # spec.deletionPolicy: keep (the default) leaves the gateway pipeline and its data.
        delete_data = (body.get("spec") or {}).get("deletionPolicy") == "delete"
        try:
            await reconciler.finalize(ref, delete_gateway_pipeline=owned and delete_data)
        except KubeError as exc:
            if exc.retryable:
                raise kopf.TemporaryError(str(exc), delay=backoff(retry)) from exc
            raise kopf.PermanentError(str(exc)) from exc
        except ServiceError as exc:
            if is_transient(exc):
                raise kopf.TemporaryError(f"{exc.code.name}: {exc.message}", delay=backoff(retry)) from exc
            logger.error("gateway refused to delete pipeline %s: %s", ref.pipeline_id, exc.message)

    return registry
