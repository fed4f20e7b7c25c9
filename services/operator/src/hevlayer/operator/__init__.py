"""hevlayer operator: reconciles ``Pipeline`` custom resources (hevlayer.com/v1alpha1).

For each Pipeline it keeps a pipeline in the gateway (PipelineService), a
worker Deployment and, in mode autoscale, a KEDA ScaledObject, and it reports
conditions and the pending count in the Pipeline's status. See
``docs/operator.md``.

Layout (as in kopf): the public API is re-exported here; private layers below
it are ``_cogs`` (clients: the Kubernetes API and the gateway) and ``_core``
(reconciliation, kopf handlers, running). The pure modules ``spec``,
``render`` and ``conditions`` carry the logic and know no transport.
"""

from hevlayer.operator._cogs.gateway import GatewayClient, GatewayPipeline, GatewayStatus
from hevlayer.operator._cogs.kube import Applied, KubeClient, KubeError, LoginError, login
from hevlayer.operator._core.handlers import FINALIZER, build_registry, kopf_settings
from hevlayer.operator._core.reconcile import Reconciler, Reconciliation, desired_status, status_changes
from hevlayer.operator._core.running import render_context, run_operator
from hevlayer.operator.conditions import Condition, merge_conditions
from hevlayer.operator.render import (
    RenderContext,
    prometheus_query,
    render_deployment,
    render_scaled_object,
    update_patch,
    worker_name,
)
from hevlayer.operator.settings import OperatorSettings
from hevlayer.operator.spec import (
    DistanceMetric,
    Pipeline,
    PipelineRef,
    PipelineSpec,
    ScalingMode,
    ScalingSpec,
    WorkerSpec,
    parse_pipeline,
)

__all__ = [
    "FINALIZER",
    "Applied",
    "Condition",
    "DistanceMetric",
    "GatewayClient",
    "GatewayPipeline",
    "GatewayStatus",
    "KubeClient",
    "KubeError",
    "LoginError",
    "OperatorSettings",
    "Pipeline",
    "PipelineRef",
    "PipelineSpec",
    "Reconciler",
    "Reconciliation",
    "RenderContext",
    "ScalingMode",
    "ScalingSpec",
    "WorkerSpec",
    "build_registry",
    "desired_status",
    "kopf_settings",
    "login",
    "merge_conditions",
    "parse_pipeline",
    "prometheus_query",
    "render_context",
    "render_deployment",
    "render_scaled_object",
    "run_operator",
    "status_changes",
    "update_patch",
    "worker_name",
]
