"""InfraRules: what the cluster admin allows Pipelines (pure functions, no I/O).

``InfraRules/default`` (cluster-scoped, ``deploy/crds/infrarules.yaml``) lists
the compute pools workers may run in (node selector, tolerations, default
resources, a replica ceiling) and the allow-list of worker images and
environment variables. :func:`admit` checks a Pipeline against it: a Pipeline
naming an unknown pool, a forbidden image, a forbidden variable or a
forbidden ``valueFrom`` is refused (the operator then creates nothing); an
admitted Pipeline comes back with its replica counts capped at its pools'
ceilings, with the pools to render it with.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hevlayer.common.errors import InvalidArgument
from hevlayer.operator.spec import (
    LABEL_VALUE,
    VALUE_FROM_KINDS,
    ExtractSpec,
    Pipeline,
    _mapping,
    _optional_int,
    _resources,
)

KIND = "InfraRules"
PLURAL = "infrarules"
NAME = "default"
"""The only InfraRules object the operator reads."""

# Refusal reasons (the Ready and Admitted conditions' reason, and the Event's).
NO_INFRA_RULES = "NoInfraRules"
INVALID_INFRA_RULES = "InvalidInfraRules"
UNKNOWN_POOL = "UnknownPool"
IMAGE_NOT_ALLOWED = "ImageNotAllowed"
ENV_NOT_ALLOWED = "EnvNotAllowed"

_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]"
    r"([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")


@dataclass(frozen=True)
class Pool:
    """One compute pool of InfraRules.spec.pools."""

    name: str
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    resources: Mapping[str, Mapping[str, str]] | None = None
    """Default requests/limits of the pool's workers (a Pipeline's own entries win)."""
    max_replicas: int | None = None
    """Most replicas one Deployment in the pool may have (None: no ceiling)."""


@dataclass(frozen=True)
class InfraRules:
    """InfraRules/default as values."""

    pools: Mapping[str, Pool] = field(default_factory=dict)
    images: tuple[str, ...] = ()
    """Glob patterns (fnmatch) of the images Pipelines may run."""
    env_names: tuple[str, ...] = ()
    """Glob patterns of the variable names a Pipeline may set in worker.env / extract.env."""
    value_from: tuple[str, ...] = ()
    """Kinds of env[].valueFrom a Pipeline may use (secretKeyRef, configMapKeyRef, ...)."""


@dataclass(frozen=True)
class Refusal:
    """Why a Pipeline is not admitted."""

    reason: str
    message: str


@dataclass(frozen=True)
class Admission:
    """An admitted Pipeline: replica counts capped at the pools' ceilings."""

    pipeline: Pipeline
    pool: Pool | None = None
    extract_pool: Pool | None = None
    notes: tuple[str, ...] = ()
    """What the ceilings changed, for the WorkersApplied message."""


def _strings(value: Any, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise InvalidArgument.field(path, "must be a list of strings")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise InvalidArgument.field(f"{path}[{index}]", "must be a non-empty string")
    return tuple(value)


def _pool(value: Any, path: str) -> Pool:
    body = _mapping(value, path)
    name = body.get("name")
    if not isinstance(name, str) or not LABEL_VALUE.match(name):
        raise InvalidArgument.field(f"{path}.name", "must be a pool name (a label value, e.g. gpu, cpu)")
    selector = _mapping(body.get("nodeSelector"), f"{path}.nodeSelector")
    for key, label in selector.items():
        if not _LABEL_KEY.match(str(key)):
            raise InvalidArgument.field(f"{path}.nodeSelector", f"{key!r} is not a label key")
        if not isinstance(label, str) or (label and not LABEL_VALUE.match(label)):
            raise InvalidArgument.field(f"{path}.nodeSelector.{key}", "must be a label value")
    tolerations = body.get("tolerations") or []
    if not isinstance(tolerations, Sequence) or isinstance(tolerations, str | bytes):
        raise InvalidArgument.field(f"{path}.tolerations", "must be a list")
    parsed: list[Mapping[str, Any]] = []
    for index, item in enumerate(tolerations):
        toleration = _mapping(item, f"{path}.tolerations[{index}]")
        unknown = sorted(set(toleration) - set(_TOLERATION_KEYS))
        if unknown:
            raise InvalidArgument.field(f"{path}.tolerations[{index}].{unknown[0]}", "unknown field")
        parsed.append(dict(toleration))
    return Pool(
        name=name,
        node_selector={str(k): str(v) for k, v in selector.items()},
        tolerations=tuple(parsed),
        resources=_resources(body.get("resources"), f"{path}.resources"),
        max_replicas=_optional_int(body.get("maxReplicas"), f"{path}.maxReplicas", minimum=0, maximum=1000),
    )


def parse_infra_rules(body: Mapping[str, Any]) -> InfraRules:
    """An InfraRules object as values; InvalidArgument naming the first invalid field."""
    spec = _mapping(body.get("spec"), "spec")
    pools_body = spec.get("pools") or []
    if not isinstance(pools_body, Sequence) or isinstance(pools_body, str | bytes):
        raise InvalidArgument.field("spec.pools", "must be a list")
    pools: dict[str, Pool] = {}
    for index, item in enumerate(pools_body):
        pool = _pool(item, f"spec.pools[{index}]")
        if pool.name in pools:
            raise InvalidArgument.field(f"spec.pools[{index}].name", f"duplicate pool {pool.name!r}")
        pools[pool.name] = pool
    env = _mapping(spec.get("allowedEnv"), "spec.allowedEnv")
    value_from = _strings(env.get("valueFrom"), "spec.allowedEnv.valueFrom")
    for index, kind in enumerate(value_from):
        if kind not in VALUE_FROM_KINDS:
            raise InvalidArgument.field(
                f"spec.allowedEnv.valueFrom[{index}]", f"must be one of {', '.join(VALUE_FROM_KINDS)}"
            )
    return InfraRules(
        pools=pools,
        images=_strings(spec.get("allowedImages"), "spec.allowedImages"),
        env_names=_strings(env.get("names"), "spec.allowedEnv.names"),
        value_from=value_from,
    )


def _allowed(value: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


def _check_container(
    rules: InfraRules, image: str, env: Sequence[Mapping[str, Any]], path: str
) -> Refusal | None:
    if not _allowed(image, rules.images):
        return Refusal(
            IMAGE_NOT_ALLOWED,
            f"{path}.image: {image!r} is not allowed by InfraRules/{NAME} spec.allowedImages "
            f"({', '.join(rules.images) or 'empty'})",
        )
    for index, entry in enumerate(env):
        name = str(entry.get("name"))
        if not _allowed(name, rules.env_names):
            return Refusal(
                ENV_NOT_ALLOWED,
                f"{path}.env[{index}].name: {name!r} is not allowed by InfraRules/{NAME} "
                f"spec.allowedEnv.names ({', '.join(rules.env_names) or 'empty'})",
            )
        source = entry.get("valueFrom")
        if isinstance(source, Mapping):
            for kind in source:
                if kind not in rules.value_from:
                    return Refusal(
                        ENV_NOT_ALLOWED,
                        f"{path}.env[{index}].valueFrom: {kind} is not allowed by InfraRules/{NAME} "
                        f"spec.allowedEnv.valueFrom ({', '.join(rules.value_from) or 'empty'})",
                    )
    return None


def _resolve(rules: InfraRules, pool: str | None, path: str) -> Pool | Refusal | None:
    if pool is None:
        return None
    found = rules.pools.get(pool)
    if found is None:
        known = ", ".join(sorted(rules.pools)) or "none"
        return Refusal(UNKNOWN_POOL, f"{path}: pool {pool!r} is not in InfraRules/{NAME} (pools: {known})")
    return found


def _cap(low: int, high: int, pool: Pool | None, what: str, notes: list[str]) -> tuple[int, int]:
    if pool is None or pool.max_replicas is None or high <= pool.max_replicas:
        return low, high
    ceiling = pool.max_replicas
    notes.append(f"{what} replicas capped at {ceiling} (pool {pool.name!r} ceiling)")
    return min(low, ceiling), ceiling


def admit(pipeline: Pipeline, rules: InfraRules | None) -> Admission | Refusal:
    """Check ``pipeline`` against InfraRules/default (None: it does not exist)."""
    if rules is None:
        return Refusal(
            NO_INFRA_RULES,
            f"InfraRules/{NAME} does not exist: the cluster admin must declare the pools and the allowed "
            "images (see docs/operator.md)",
        )
    spec = pipeline.spec
    pool = _resolve(rules, spec.scaling.pool, "spec.scaling.pool")
    if isinstance(pool, Refusal):
        return pool
    refusal = _check_container(rules, spec.worker.image, spec.worker.env, "spec.worker")
    if refusal is not None:
        return refusal
    extract_pool: Pool | None = None
    extract: ExtractSpec | None = spec.extract
    notes: list[str] = []
    if extract is not None:
        resolved = _resolve(rules, extract.pool, "spec.extract.pool")
        if isinstance(resolved, Refusal):
            return resolved
        extract_pool = resolved
        refusal = _check_container(rules, extract.image, extract.env, "spec.extract")
        if refusal is not None:
            return refusal
        low, high = _cap(extract.min_replicas, extract.max_replicas, extract_pool, "extract", notes)
        extract = dataclasses.replace(extract, min_replicas=low, max_replicas=high)
    low, high = _cap(spec.scaling.min_replicas, spec.scaling.max_replicas, pool, "worker", notes)
    capped = dataclasses.replace(
        spec,
        scaling=dataclasses.replace(spec.scaling, min_replicas=low, max_replicas=high),
        extract=extract,
    )
    return Admission(
        pipeline=dataclasses.replace(pipeline, spec=capped),
        pool=pool,
        extract_pool=extract_pool,
        notes=tuple(notes),
    )


def fingerprint(rules: InfraRules | None, pools: Sequence[str | None]) -> str:
    """A digest of what InfraRules says about a Pipeline using ``pools``: the pools'
    entries and the allow-lists. It changes exactly when re-rendering the Pipeline
    may give another result."""

    def pool_value(name: str | None) -> Any:
        if rules is None or name is None:
            return None
        found = rules.pools.get(name)
        return None if found is None else dataclasses.asdict(found)

    value = (
        None
        if rules is None
        else {
            "pools": {str(name): pool_value(name) for name in pools},
            "images": rules.images,
            "env": rules.env_names,
            "valueFrom": rules.value_from,
        }
    )
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
