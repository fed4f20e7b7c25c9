"""Render deploy/helm/hevlayer as ``helm template`` would, without a helm binary.

The renderer is ``helm-python-sdk`` (import name ``helm_python``): Helm v4's own Go SDK
(chart loader, template engine, Sprig functions, ``fail``) behind a C ABI, loaded with ctypes.
It renders offline: no cluster is contacted and ``lookup`` returns nothing, exactly like
``helm template``. ``render`` returns the objects of the templates (NOTES.txt left out);
``chart_crds`` the objects of the chart's ``crds/`` directory, which Helm installs before them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "hevlayer"
RELEASE = "layer"
NAMESPACE = "layer"


class RenderError(Exception):
    """The chart refused the values: values.schema.json, a template's ``fail``, a ``required`` value."""


def _helm() -> Any:
    return importlib.import_module("helm_python")


def render(
    values: dict[str, Any] | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """The objects ``helm template RELEASE deploy/helm/hevlayer -n NAMESPACE`` would print."""
    helm = _helm()
    with helm.Chart.load(str(CHART)) as chart:
        try:
            manifests: dict[str, str] = chart.render(
                values or {}, name=release, namespace=namespace, is_install=True
            )
        except (helm.HelmRenderError, helm.HelmValuesError) as exc:
            raise RenderError(str(exc)) from exc
    objects: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if not path.endswith(".yaml"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def chart_crds() -> dict[str, dict[str, Any]]:
    """The chart's CRDs by file name (``crds/pipeline.yaml`` ...), as Helm loads them."""
    helm = _helm()
    with helm.Chart.load(str(CHART)) as chart:
        return {crd["name"]: yaml.safe_load(crd["data"]) for crd in chart.crds}


def lint(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """``helm lint --strict`` of the chart: ``{"messages": [...], "errors": [...]}``."""
    report: dict[str, Any] = _helm().lint(str(CHART), values, strict=True, kube_version="v1.29.0")
    return report
