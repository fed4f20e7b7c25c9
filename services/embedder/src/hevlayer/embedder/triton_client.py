"""Embedding through NVIDIA Triton with ``tritonclient.grpc.aio``.

:class:`TritonEmbeddingClient` discovers the model from Triton (input and
output names, dimension, max_batch_size) unless the settings name them, cuts
texts into requests of at most the batch size, keeps a bounded number of
requests in flight (Triton's dynamic batcher merges them) and retries
UNAVAILABLE / RESOURCE_EXHAUSTED with exponential backoff and jitter. What is
still failing after the last attempt becomes
:class:`hevlayer.common.errors.Unavailable` (with RetryInfo), so callers
retry later instead of losing work. Nothing here is specific to one model:
any Triton model with one BYTES text input and one FP32 ``[batch, dim]``
output works.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as triton_aio
from prometheus_client import Histogram
from tritonclient.utils import InferenceServerException

from hevlayer.common.errors import FailedPrecondition, Internal, InvalidArgument, ServiceError, Unavailable
from hevlayer.common.metrics import REGISTRY

log = logging.getLogger("hevlayer.embedder.triton")

T = TypeVar("T")
Vectors = npt.NDArray[np.float32]

DEFAULT_BATCH_SIZE = 64
"""Texts per request for a model without batching (max_batch_size 0) and no setting."""

_RETRIED = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

TRITON_REQUEST_SECONDS = Histogram(
    "hevlayer_embedder_triton_request_seconds",
    "Duration of one Triton infer request (one attempt, at most the batch size of texts; time "
    "waiting for a free request slot and retry backoff excluded), by model.",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts and exponential backoff (with jitter) for retryable Triton failures."""

    attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_backoff, self.initial_backoff * 2.0 ** (attempt - 1))
        return ceiling * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class ModelInfo:
    """What the embedder knows about the served model."""

    name: str
    version: str
    dimension: int
    triton_max_batch_size: int
    batch_size: int
    input_name: str
    output_name: str
    text_extra_dims: int
    """Dimensions of size 1 after the batch dimension in the text input's shape (``[n, 1]``: 1)."""


def status_name(exc: InferenceServerException) -> str:
    """``UNAVAILABLE`` for a status ``StatusCode.UNAVAILABLE``; ``UNKNOWN`` when there is none."""
    status = exc.status()
    return str(status).rsplit(".", 1)[-1] if status else "UNKNOWN"


def map_error(exc: InferenceServerException, url: str, what: str) -> ServiceError:
    """The hevlayer error for a failed Triton call."""
    code = status_name(exc)
    message = f"Triton at {url}: {what}: {exc.message() or code}"
    if code in _RETRIED or code in ("DEADLINE_EXCEEDED", "CANCELLED"):
        return Unavailable(message, reason="TRITON_UNAVAILABLE", metadata={"triton_status": code})
    if code == "INVALID_ARGUMENT":
        return InvalidArgument(message, reason="TRITON_INVALID_ARGUMENT")
    if code == "NOT_FOUND":
        return FailedPrecondition(message, reason="TRITON_MODEL_NOT_FOUND")
    return Internal(message, reason="TRITON_ERROR", metadata={"triton_status": code})


class TritonEmbeddingClient:
    """Texts in, vectors out, through one Triton model over gRPC."""

    def __init__(
        self,
        url: str,
        model_name: str,
        *,
        model_version: str = "",
        dimension: int = 0,
        max_batch_size: int = 0,
        input_name: str = "",
        output_name: str = "",
        max_in_flight: int = 4,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """``credentials``: TLS channel credentials (``hevlayer.client.TLS.credentials()``); None: no TLS."""
        self.url = url
        self.model_name = model_name
        self.model_version = model_version
        self._dimension = dimension
        self._max_batch_size = max_batch_size
        self._input_name = input_name
        self._output_name = output_name
        self._timeout = timeout
        self.retry = retry or RetryPolicy()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._at_triton = 0
        """This client's infer requests sent and not yet answered."""
        self._info: ModelInfo | None = None
        self._info_lock = asyncio.Lock()
        self._client = triton_aio.InferenceServerClient(
            url,
            channel_args=[
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.enable_retries", 0),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
            creds=credentials,
        )

    @property
    def info(self) -> ModelInfo | None:
        """The model, once discovered."""
        return self._info

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` with retries of UNAVAILABLE / RESOURCE_EXHAUSTED; hevlayer errors out."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except InferenceServerException as exc:
                error = map_error(exc, self.url, what)
                if status_name(exc) not in _RETRIED or attempt >= self.retry.attempts:
                    if isinstance(error, Unavailable):
                        error.retry_after = self.retry.max_backoff
                    raise error from exc
                delay = self.retry.delay(attempt)
                log.warning(
                    "Triton call failed; retrying",
                    extra={
                        "what": what,
                        "attempt": attempt,
                        "delay": round(delay, 3),
                        "error": error.message,
                    },
                )
                await asyncio.sleep(delay)

    async def ready(self) -> bool:
        """Whether Triton says the model is ready (one call, no retries)."""
        try:
            return bool(
                await self._client.is_model_ready(self.model_name, self.model_version, client_timeout=2.0)
            )
        except InferenceServerException:
            return False

    async def model_info(self) -> ModelInfo:
        """The model's names, dimension and batch size (discovered once, then cached)."""
        if self._info is not None:
            return self._info
        async with self._info_lock:
            if self._info is None:
                self._info = await self._discover()
                log.info("Triton model discovered", extra={"model": vars(self._info)})
            return self._info

    async def _discover(self) -> ModelInfo:
        name, version, timeout = self.model_name, self.model_version, self._timeout
        metadata: Any = await self._call(
            "model metadata",
            lambda: self._client.get_model_metadata(name, version, client_timeout=timeout),
        )
        config_response: Any = await self._call(
            "model config",
            lambda: self._client.get_model_config(name, version, client_timeout=timeout),
        )
        triton_batch = int(config_response.config.max_batch_size)
        text_input = _pick(metadata.inputs, self._input_name, "BYTES", "input", name)
        vector_output = _pick(metadata.outputs, self._output_name, "FP32", "output", name)
        # With max_batch_size > 0 the metadata shapes start with the batch dimension (-1).
        input_dims = list(text_input.shape)[1 if triton_batch > 0 else 0 :]
        output_dims = list(vector_output.shape)[1 if triton_batch > 0 else 0 :]
        batch = self._max_batch_size or triton_batch or DEFAULT_BATCH_SIZE
        if triton_batch > 0:
            batch = min(batch, triton_batch)
        info = ModelInfo(
            name=name,
            version=version,
            dimension=int(output_dims[-1]) if output_dims and int(output_dims[-1]) > 0 else 0,
            triton_max_batch_size=triton_batch,
            batch_size=batch,
            input_name=text_input.name,
            output_name=vector_output.name,
            text_extra_dims=len(input_dims) if triton_batch > 0 else max(0, len(input_dims) - 1),
        )
        if info.dimension == 0:
            # A dynamic output dimension: embed one text to learn it.
            probe = await self._infer(info, ["dimension probe"])
            info = ModelInfo(**{**vars(info), "dimension": int(probe.shape[1])})
        if self._dimension and self._dimension != info.dimension:
            raise FailedPrecondition(
                f"EMBEDDER_DIMENSION is {self._dimension} but Triton model {name!r} gives "
                f"{info.dimension}-dimensional vectors",
                reason="DIMENSION_MISMATCH",
            )
        return info

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """One float32 vector per text, in order (shape ``[len(texts), dimension]``)."""
        info = await self.model_info()
        if not texts:
            return np.empty((0, info.dimension), dtype=np.float32)
        size = info.batch_size
        parts = [list(texts[i : i + size]) for i in range(0, len(texts), size)]
        results = await asyncio.gather(*(self._infer(info, part) for part in parts))
        return results[0] if len(results) == 1 else np.concatenate(results)

    async def _infer(self, info: ModelInfo, texts: list[str]) -> Vectors:
        shape = [len(texts)] + [1] * info.text_extra_dims
        data = np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(shape)
        tensor = triton_aio.InferInput(info.input_name, shape, "BYTES")
        tensor.set_data_from_numpy(data)
        outputs = [triton_aio.InferRequestedOutput(info.output_name)]

        async def infer() -> Vectors:
            async with self._slots:
                started = time.perf_counter()
                # The deadline covers this client's requests ahead of this one: Triton's model runs
                # them first (one instance runs one batch at a time), so on a slow or loaded machine
                # a fixed deadline expired the last requests in flight while they waited. Triton
                # still ran them, their retries ran again, and the model spent most of its time on
                # answers nobody waited for (bench/e2e_vs_script.py, docs/benchmarks.md).
                deadline = self._timeout * (self._at_triton + 1)
                self._at_triton += 1
                try:
                    result = await self._client.infer(
                        info.name,
                        [tensor],
                        model_version=info.version,
                        outputs=outputs,
                        client_timeout=deadline,
                    )
                finally:
                    self._at_triton -= 1
                    TRITON_REQUEST_SECONDS.labels(info.name).observe(time.perf_counter() - started)
            array = result.as_numpy(info.output_name)
            if array is None:
                raise Internal(f"Triton model {info.name!r} returned no {info.output_name!r} output")
            vectors: Vectors = np.asarray(array, dtype=np.float32).reshape(len(texts), -1)
            if info.dimension and vectors.shape[1] != info.dimension:
                raise Internal(
                    f"Triton model {info.name!r} returned {vectors.shape[1]}-dimensional vectors, "
                    f"expected {info.dimension}"
                )
            return vectors

        return await self._call("infer", infer)


def _pick(tensors: Sequence[Any], wanted: str, datatype: str, kind: str, model: str) -> Any:
    """The tensor named ``wanted``, or the only one of ``datatype``."""
    if wanted:
        for tensor in tensors:
            if tensor.name == wanted:
                return tensor
        names = ", ".join(t.name for t in tensors)
        raise FailedPrecondition(f"Triton model {model!r} has no {kind} {wanted!r} (it has: {names})")
    matching = [t for t in tensors if t.datatype == datatype]
    if len(matching) != 1:
        variable = "EMBEDDER_INPUT_NAME" if kind == "input" else "EMBEDDER_OUTPUT_NAME"
        raise FailedPrecondition(
            f"Triton model {model!r} has {len(matching)} {datatype} {kind}s; name one with {variable}"
        )
    return matching[0]
