"""The Pipeline custom resource as plain values (transport-free).

:func:`parse_pipeline` turns a Pipeline object (the JSON dict the API server
serves) into a :class:`Pipeline`, applying the same defaults as the CRD
schema (``deploy/crds/pipeline.yaml``) and checking the same constraints, so
that the operator behaves the same whether or not the API server defaulted
and validated the object. Errors are :class:`~hevlayer.common.errors.InvalidArgument`
naming the field (``spec.scaling.replicas``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hevlayer.common.errors import InvalidArgument

GROUP = "hevlayer.com"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Pipeline"
PLURAL = "pipelines"

# The gateway's pipeline id (a Kubernetes name, see pipeline.proto): the CR's name.
PIPELINE_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
# The index namespace (collection) the gateway writes to.
TARGET_NAMESPACE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
# A label value (the pool is used as a node-selector value).
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
# An environment variable name as Kubernetes accepts it.
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
# A resource quantity (1, 500m, 2Gi, 1e3, ...).
QUANTITY = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[munkMGTPE])?$")

DEFAULT_THRESHOLD = 50
DEFAULT_ACTIVATION_THRESHOLD = 1
DEFAULT_MIN_REPLICAS = 0
DEFAULT_MAX_REPLICAS = 1
# The embedder worker's EMBEDDER_WORKER_MAX_DOCUMENTS bound (spec.worker.batchSize).
MAX_BATCH_SIZE = 10_000
# KEDA scalers a CPU (extract) worker may be scaled on besides the extract stage.
PASS_THROUGH_TRIGGERS = ("aws-sqs-queue", "kafka")
# Kinds of env[].valueFrom (Kubernetes EnvVarSource).
VALUE_FROM_KINDS = ("configMapKeyRef", "fieldRef", "resourceFieldRef", "secretKeyRef")


class DistanceMetric(enum.Enum):
    """How vectors are compared (spec.distanceMetric)."""

    COSINE_DISTANCE = "cosine_distance"
    EUCLIDEAN_SQUARED = "euclidean_squared"


class DeletionPolicy(enum.Enum):
    """What deleting the Pipeline does to the gateway pipeline and its data (spec.deletionPolicy)."""

    KEEP = "keep"
    DELETE = "delete"


class ScalingMode(enum.Enum):
    """How the worker Deployment is scaled (spec.scaling.mode)."""

    AUTOSCALE = "autoscale"
    FIXED = "fixed"
    DISABLED = "disabled"


@dataclass(frozen=True)
class WorkerSpec:
    """spec.worker: the container that processes the pipeline's documents."""

    image: str
    batch_size: int | None = None
    timeout_seconds: int | None = None
    env: tuple[Mapping[str, Any], ...] = ()
    resources: Mapping[str, Mapping[str, str]] | None = None


@dataclass(frozen=True)
class ScalingSpec:
    """spec.scaling: where workers run and how many."""

    pool: str | None = None
    mode: ScalingMode = ScalingMode.AUTOSCALE
    min_replicas: int = DEFAULT_MIN_REPLICAS
    max_replicas: int = DEFAULT_MAX_REPLICAS
    target_per_replica: int = DEFAULT_THRESHOLD
    """Pending documents per replica KEDA aims for (the trigger's threshold)."""
    activation_threshold: int = DEFAULT_ACTIVATION_THRESHOLD
    """Pending documents that wake the workers from 0 (the trigger's activationThreshold)."""


@dataclass(frozen=True)
class TriggerSpec:
    """spec.extract.trigger: a KEDA trigger passed through to the extract ScaledObject."""

    type: str
    metadata: Mapping[str, str]
    authentication_ref: str | None = None


@dataclass(frozen=True)
class ExtractSpec:
    """spec.extract: optional CPU workers that feed the pipeline (the extract stage)."""

    image: str
    env: tuple[Mapping[str, Any], ...] = ()
    resources: Mapping[str, Mapping[str, str]] | None = None
    pool: str | None = None
    min_replicas: int = DEFAULT_MIN_REPLICAS
    max_replicas: int = DEFAULT_MAX_REPLICAS
    target_per_replica: int = DEFAULT_THRESHOLD
    trigger: TriggerSpec | None = None
    """None: scale on the pipeline's documents in stage ``extract``."""


@dataclass(frozen=True)
class PipelineSpec:
    """spec of a Pipeline."""

    worker: WorkerSpec
    target_namespace: str = ""
    distance_metric: DistanceMetric = DistanceMetric.COSINE_DISTANCE
    scaling: ScalingSpec = field(default_factory=ScalingSpec)
    paused: bool = False
    extract: ExtractSpec | None = None
    deletion_policy: DeletionPolicy = DeletionPolicy.KEEP

    @property
    def autoscaled(self) -> bool:
        """Whether KEDA owns the replica count (mode autoscale, not paused)."""
        return self.scaling.mode is ScalingMode.AUTOSCALE and not self.paused

    @property
    def fixed_replicas(self) -> int | None:
        """The replica count the operator pins, or None when KEDA scales the workers."""
        if self.paused or self.scaling.mode is ScalingMode.DISABLED:
            return 0
        if self.scaling.mode is ScalingMode.FIXED:
            return self.scaling.min_replicas
        return None

    @property
    def threshold(self) -> int:
        """Pending documents per replica KEDA aims for: spec.scaling.targetPerReplica (50)."""
        return self.scaling.target_per_replica

    @property
    def extract_replicas(self) -> int | None:
        """The extract Deployment's pinned replica count, or None when KEDA scales it."""
        if self.extract is None:
            return None
        if self.paused or self.scaling.mode is ScalingMode.DISABLED:
            return 0
        if self.scaling.mode is ScalingMode.FIXED:
            return self.extract.min_replicas
        return None


@dataclass(frozen=True)
class PipelineRef:
    """Identity of a Pipeline object."""

    name: str
    namespace: str
    uid: str
    generation: int | None = None

    @property
    def pipeline_id(self) -> str:
        """The gateway's id of the pipeline: the object's name (see docs/operator.md)."""
        return self.name


@dataclass(frozen=True)
class Pipeline:
    """A Pipeline object: its identity and its spec."""

    ref: PipelineRef
    spec: PipelineSpec


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument.field(path, "must be an object")
    return value


def _int(value: Any, path: str, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument.field(path, "must be an integer")
    if value < minimum:
        raise InvalidArgument.field(path, f"must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise InvalidArgument.field(path, f"must be <= {maximum}")
    return value


def _optional_int(value: Any, path: str, *, minimum: int, maximum: int | None = None) -> int | None:
    return None if value is None else _int(value, path, minimum=minimum, maximum=maximum)


def _enum(cls: type[enum.Enum], value: Any, path: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in cls)
        raise InvalidArgument.field(path, f"must be one of {allowed}") from None


def _env(value: Any, path: str) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise InvalidArgument.field(path, "must be a list")
    seen: set[str] = set()
    entries: list[Mapping[str, Any]] = []
    for index, item in enumerate(value):
        entry = _mapping(item, f"{path}[{index}]")
        name = entry.get("name")
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise InvalidArgument.field(f"{path}[{index}].name", "must be an environment variable name")
        if name in seen:
            raise InvalidArgument.field(f"{path}[{index}].name", f"duplicate variable {name!r}")
        seen.add(name)
        if "value" in entry and not isinstance(entry["value"], str):
            raise InvalidArgument.field(f"{path}[{index}].value", "must be a string")
        if "valueFrom" in entry:
            source = _mapping(entry["valueFrom"], f"{path}[{index}].valueFrom")
            if len(source) != 1 or next(iter(source)) not in VALUE_FROM_KINDS:
                raise InvalidArgument.field(
                    f"{path}[{index}].valueFrom", f"must hold exactly one of {', '.join(VALUE_FROM_KINDS)}"
                )
        entries.append(dict(entry))
    return tuple(entries)


def _resources(value: Any, path: str) -> Mapping[str, Mapping[str, str]] | None:
    if value is None:
        return None
    resources = _mapping(value, path)
    result: dict[str, dict[str, str]] = {}
    for section, quantities in resources.items():
        if section not in ("limits", "requests"):
            raise InvalidArgument.field(f"{path}.{section}", "unknown field (use limits or requests)")
        entries: dict[str, str] = {}
        for resource, quantity in _mapping(quantities, f"{path}.{section}").items():
            numeric = isinstance(quantity, int | float) and not isinstance(quantity, bool)
            text = str(quantity) if numeric else quantity
            if not isinstance(text, str) or not QUANTITY.match(text):
                raise InvalidArgument.field(f"{path}.{section}.{resource}", "must be a resource quantity")
            entries[str(resource)] = text
        result[section] = entries
    return result


def parse_spec(spec: Any) -> PipelineSpec:
    """A Pipeline's spec with the CRD's defaults; InvalidArgument naming the first bad field."""
    body = _mapping(spec, "spec")

    target = _mapping(body.get("target"), "spec.target")
    target_namespace = target.get("namespace") or ""
    if not isinstance(target_namespace, str) or (
        target_namespace and not TARGET_NAMESPACE.match(target_namespace)
    ):
        raise InvalidArgument.field(
            "spec.target.namespace", "must be letters, digits and '_', not starting with a digit"
        )

    metric = _enum(DistanceMetric, body.get("distanceMetric", "cosine_distance"), "spec.distanceMetric")

    if "worker" not in body:
        raise InvalidArgument.field("spec.worker", "is required")
    worker_body = _mapping(body.get("worker"), "spec.worker")
    image = worker_body.get("image")
    if not isinstance(image, str) or not image.strip():
        raise InvalidArgument.field("spec.worker.image", "is required")
    worker = WorkerSpec(
        image=image,
        batch_size=_optional_int(
            worker_body.get("batchSize"), "spec.worker.batchSize", minimum=1, maximum=MAX_BATCH_SIZE
        ),
        timeout_seconds=_optional_int(
            worker_body.get("timeoutSeconds"), "spec.worker.timeoutSeconds", minimum=1, maximum=86_400
        ),
        env=_env(worker_body.get("env"), "spec.worker.env"),
        resources=_resources(worker_body.get("resources"), "spec.worker.resources"),
    )

    scaling_body = _mapping(body.get("scaling"), "spec.scaling")
    pool = _pool(scaling_body.get("pool"), "spec.scaling.pool")
    min_replicas, max_replicas = _replicas(scaling_body.get("replicas"), "spec.scaling.replicas")
    scaling = ScalingSpec(
        pool=pool,
        mode=_enum(ScalingMode, scaling_body.get("mode", "autoscale"), "spec.scaling.mode"),
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        target_per_replica=_int(
            scaling_body.get("targetPerReplica", DEFAULT_THRESHOLD),
            "spec.scaling.targetPerReplica",
            minimum=1,
        ),
        activation_threshold=_int(
            scaling_body.get("activationThreshold", DEFAULT_ACTIVATION_THRESHOLD),
            "spec.scaling.activationThreshold",
            minimum=0,
        ),
    )

    paused = body.get("paused", False)
    if not isinstance(paused, bool):
        raise InvalidArgument.field("spec.paused", "must be a boolean")

    return PipelineSpec(
        worker=worker,
        target_namespace=target_namespace,
        distance_metric=metric,
        scaling=scaling,
        paused=paused,
        extract=_extract(body.get("extract"), "spec.extract"),
        deletion_policy=_enum(DeletionPolicy, body.get("deletionPolicy", "keep"), "spec.deletionPolicy"),
    )


def _pool(value: Any, path: str) -> str | None:
    pool = value or None
    if pool is not None and (not isinstance(pool, str) or not LABEL_VALUE.match(pool)):
        raise InvalidArgument.field(path, "must be a pool name (a label value, e.g. gpu, cpu)")
    return pool


def _replicas(value: Any, path: str) -> tuple[int, int]:
    replicas = _mapping(value, path)
    low = _int(replicas.get("min", DEFAULT_MIN_REPLICAS), f"{path}.min", minimum=0, maximum=1000)
    high = _int(replicas.get("max", DEFAULT_MAX_REPLICAS), f"{path}.max", minimum=1, maximum=1000)
    if low > high:
        raise InvalidArgument.field(path, "min must not exceed max")
    return low, high


def _trigger(value: Any, path: str) -> TriggerSpec | None:
    if value is None:
        return None
    body = _mapping(value, path)
    kind = body.get("type")
    if kind not in PASS_THROUGH_TRIGGERS:
        raise InvalidArgument.field(f"{path}.type", f"must be one of {', '.join(PASS_THROUGH_TRIGGERS)}")
    metadata = _mapping(body.get("metadata"), f"{path}.metadata")
    if not metadata:
        raise InvalidArgument.field(f"{path}.metadata", "is required (the scaler's parameters)")
    for key, item in metadata.items():
        if not isinstance(item, str):
            raise InvalidArgument.field(f"{path}.metadata.{key}", "must be a string")
    auth = _mapping(body.get("authenticationRef"), f"{path}.authenticationRef")
    auth_name = auth.get("name")
    if auth and (not isinstance(auth_name, str) or not auth_name):
        raise InvalidArgument.field(f"{path}.authenticationRef.name", "must name a TriggerAuthentication")
    return TriggerSpec(type=kind, metadata=dict(metadata), authentication_ref=auth_name or None)


def _extract(value: Any, path: str) -> ExtractSpec | None:
    if value is None:
        return None
    body = _mapping(value, path)
    image = body.get("image")
    if not isinstance(image, str) or not image.strip():
        raise InvalidArgument.field(f"{path}.image", "is required")
    low, high = _replicas(body.get("replicas"), f"{path}.replicas")
    return ExtractSpec(
        image=image,
        env=_env(body.get("env"), f"{path}.env"),
        resources=_resources(body.get("resources"), f"{path}.resources"),
        pool=_pool(body.get("pool"), f"{path}.pool"),
        min_replicas=low,
        max_replicas=high,
        target_per_replica=_int(
            body.get("targetPerReplica", DEFAULT_THRESHOLD), f"{path}.targetPerReplica", minimum=1
        ),
        trigger=_trigger(body.get("trigger"), f"{path}.trigger"),
    )


def parse_ref(body: Mapping[str, Any]) -> PipelineRef:
    """The identity of a Pipeline object; InvalidArgument if its name is not a pipeline id."""
    meta = _mapping(body.get("metadata"), "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not PIPELINE_ID.match(name):
        raise InvalidArgument.field(
            "metadata.name",
            "must be 1 to 63 lowercase letters, digits and '-', starting with a letter "
            "and not ending with '-' (it is the gateway's pipeline id)",
        )
    generation = meta.get("generation")
    return PipelineRef(
        name=name,
        namespace=str(meta.get("namespace") or ""),
        uid=str(meta.get("uid") or ""),
        generation=generation if isinstance(generation, int) else None,
    )


def parse_pipeline(body: Mapping[str, Any]) -> Pipeline:
    """A Pipeline object as values; InvalidArgument naming the first invalid field."""
    return Pipeline(ref=parse_ref(body), spec=parse_spec(body.get("spec")))
