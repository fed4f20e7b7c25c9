"""Fixtures of the embedder tests: one real Triton server for the session, one embedder on it.

Tests that need their own embedder start it with ``service_factory`` (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hevlayer.devstack.ports import free_port
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.triton.local import LocalModel, LocalTriton
from hevlayer.triton.onnx_model import OnnxEmbedder, minilm_files


@pytest.fixture(scope="session")
def triton() -> Iterator[LocalTriton]:
    """The real tritonserver (nvidia-pytriton's binary) serving all-MiniLM-L6-v2 on CPU."""
    server = LocalTriton([LocalModel(max_batch_size=32)])
    try:
        server.start().wait_ready()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def onnx_embedder() -> OnnxEmbedder:
    """The same model in-process (the reference the Triton path is compared with)."""
    return OnnxEmbedder(minilm_files())


@pytest.fixture(scope="session")
def embedder_address(triton: LocalTriton) -> Iterator[str]:
    """One embedder process on the session's Triton, shared by the read-only tests."""
    address = f"127.0.0.1:{free_port()}"
    process = ServiceProcess(
        "hevlayer-embedder",
        env={
            "HEVLAYER_GRPC_ADDRESS": address,
            "HEVLAYER_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
            "HEVLAYER_LOG_FORMAT": "text",
            "EMBEDDER_TRITON_URL": triton.url,
        },
        grpc_address=address,
    )
    process.start()
    try:
        process.wait_ready(timeout=60)
        yield address
    finally:
        process.stop()
