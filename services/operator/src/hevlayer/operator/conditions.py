"""Status conditions of a Pipeline (pure functions, ``metav1.Condition`` shape).

Condition types:

- ``Admitted``: InfraRules/default allows the Pipeline (its pools exist, its
  images and env are on the allow-list); when False, nothing is created and
  the reason is the refusal's (UnknownPool, ImageNotAllowed, EnvNotAllowed,
  NoInfraRules, InvalidInfraRules).
- ``GatewaySynced``: the pipeline exists in the gateway with this spec's
  target namespace and distance metric, paused as spec.paused says.
- ``WorkersApplied``: the worker Deployment (and, in mode autoscale, the
  ScaledObject) match the spec.
- ``Ready``: all of the above are True.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ADMITTED = "Admitted"
GATEWAY_SYNCED = "GatewaySynced"
WORKERS_APPLIED = "WorkersApplied"
READY = "Ready"

# Reasons.
ADMITTED_REASON = "Admitted"
SYNCED = "Synced"
APPLIED = "Applied"
INVALID_SPEC = "InvalidSpec"
GATEWAY_UNAVAILABLE = "GatewayUnavailable"
GATEWAY_REJECTED = "GatewayRejected"
PIPELINE_CONFLICT = "PipelineConflict"
KUBERNETES_ERROR = "KubernetesError"
NOT_READY = "NotReady"


@dataclass(frozen=True)
class Condition:
    """One observation about a Pipeline."""

    type: str
    status: bool
    reason: str
    message: str = ""


def now_rfc3339() -> str:
    """The current time as Kubernetes writes timestamps."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_condition(conditions: Sequence[Condition]) -> Condition:
    """``Ready``: True when every condition is True, else the first False one's reason."""
    for condition in conditions:
        if not condition.status:
            return Condition(READY, False, condition.reason, f"{condition.type}: {condition.message}")
    return Condition(READY, True, "Ready", "")


def merge_conditions(
    existing: Sequence[Mapping[str, Any]] | None,
    updates: Sequence[Condition],
    *,
    now: str,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """``existing`` (status.conditions) with ``updates`` applied.

    A condition's ``lastTransitionTime`` changes only when its status does;
    conditions of other types are kept, in their order; new types are appended.
    """
    by_type = {u.type: u for u in updates}
    result: list[dict[str, Any]] = []
    seen: set[str] = set()
    for old in existing or ():
        kind = str(old.get("type", ""))
        update = by_type.get(kind)
        if update is None:
            result.append(dict(old))
        else:
            result.append(_render(update, old, now, generation))
        seen.add(kind)
    for update in updates:
        if update.type not in seen:
            result.append(_render(update, None, now, generation))
    return result


def _render(
    condition: Condition, old: Mapping[str, Any] | None, now: str, generation: int | None
) -> dict[str, Any]:
    status = "True" if condition.status else "False"
    changed = old is None or old.get("status") != status
    rendered: dict[str, Any] = {
        "type": condition.type,
        "status": status,
        "reason": condition.reason,
        "message": condition.message,
        "lastTransitionTime": now if changed or old is None else old.get("lastTransitionTime", now),
    }
    if generation is not None:
        rendered["observedGeneration"] = generation
    return rendered


def find(conditions: Sequence[Mapping[str, Any]] | None, kind: str) -> Mapping[str, Any] | None:
    """The condition of type ``kind`` in status.conditions, if any."""
    for condition in conditions or ():
        if condition.get("type") == kind:
            return condition
    return None
