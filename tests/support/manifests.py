"""Kubernetes manifests in tests: the seed's example Pipeline and strict validation of built-in
kinds (used by tests/operator/test_manifests.py and tests/deploy/test_helm_chart.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

SEED_PIPELINE = """
apiVersion: hevlayer.com/v1alpha1
kind: Pipeline
metadata:
  name: product-images
  namespace: layer
  uid: 6b3a55a2-3f0e-4d38-9d7e-5c0e1f0a2b11
spec:
  target:
    namespace: products
  worker:
    image: ghcr.io/hev/product-image-worker:latest
    batchSize: 64
    timeoutSeconds: 60
  scaling:
    pool: cpu
    mode: autoscale
    replicas:
      min: 0
      max: 8
"""
"""The spec seed's example Pipeline (a CPU pool, autoscaled from 0 to 8), as YAML."""


def kubernetes_validate(paths: list[Path]) -> None:
    """``kubernetes-validate --strict`` on ``paths`` (the Kubernetes version it ships); fail on
    any error or warning (an unknown kind is only a warning there)."""
    script = Path(sys.executable).with_name("kubernetes-validate")
    result = subprocess.run(
        [str(script), "--strict", *map(str, paths)], capture_output=True, text=True, timeout=120
    )
    problems = [line for line in result.stdout.splitlines() if not line.startswith("INFO ")]
    assert problems == [], result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr


def without_nones(value: Any) -> Any:
    """``value`` with every ``None`` field of its mappings dropped, at every depth (a rendered
    object as ``kubectl`` would write it)."""
    if isinstance(value, dict):
        return {k: without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nones(v) for v in value]
    return value
