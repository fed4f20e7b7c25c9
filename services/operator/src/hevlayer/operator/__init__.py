"""hevlayer operator: reconciles ``Pipeline`` custom resources (hevlayer.com/v1alpha1).

For each Pipeline it keeps a pipeline in the gateway (PipelineService), a
worker Deployment and, in mode autoscale, a KEDA ScaledObject (and the same
for optional extract workers), within what ``InfraRules/default`` allows
(pools, images, env), and it reports conditions, replicas and the pending
count in the Pipeline's status. See ``docs/operator.md``.

Modules by role: ``kube_client`` (the Kubernetes API client and login),
``gateway_client`` (the gateway's PipelineService as the operator's values),
``reconcile`` (one reconciliation, independent of kopf), ``handlers`` (the kopf
handlers that glue reconciliation to events) and ``runner`` (clients, registry
and kopf's main loop); ``main`` is the ``hevlayer-operator`` entry point. The
pure modules ``spec``, ``infra``, ``render`` and ``conditions`` carry the logic
and know no transport. The public API is re-exported here.
"""

from hevlayer.operator.conditions import Condition, merge_conditions
from hevlayer.operator.gateway_client import GatewayClient, GatewayPipeline, GatewayStatus
from hevlayer.operator.handlers import FINALIZER, build_registry, kopf_settings
from hevlayer.operator.infra import Admission, InfraRules, Pool, Refusal, admit, parse_infra_rules
from hevlayer.operator.kube_client import Applied, KubeClient, KubeError, LoginError, login
from hevlayer.operator.reconcile import Reconciler, Reconciliation, desired_status, status_changes
from hevlayer.operator.render import (
    RenderContext,
    extract_name,
    prometheus_query,
    render_deployment,
    render_extract_deployment,
    render_extract_scaled_object,
    render_scaled_object,
    update_patch,
    worker_name,
)
from hevlayer.operator.runner import render_context, run_operator
from hevlayer.operator.settings import OperatorSettings
from hevlayer.operator.spec import (
    DeletionPolicy,
    DistanceMetric,
    ExtractSpec,
    Pipeline,
    PipelineRef,
    PipelineSpec,
    ScalingMode,
    ScalingSpec,
    TriggerSpec,
    WorkerSpec,
    parse_pipeline,
)

__all__ = [
    "FINALIZER",
    "Admission",
    "Applied",
    "Condition",
    "DeletionPolicy",
    "DistanceMetric",
    "ExtractSpec",
    "GatewayClient",
    "GatewayPipeline",
    "GatewayStatus",
    "InfraRules",
    "KubeClient",
    "KubeError",
    "LoginError",
    "OperatorSettings",
    "Pipeline",
    "PipelineRef",
    "PipelineSpec",
    "Pool",
    "Reconciler",
    "Reconciliation",
    "Refusal",
    "RenderContext",
    "ScalingMode",
    "ScalingSpec",
    "TriggerSpec",
    "WorkerSpec",
    "admit",
    "build_registry",
    "desired_status",
    "extract_name",
    "kopf_settings",
    "login",
    "merge_conditions",
    "parse_infra_rules",
    "parse_pipeline",
    "prometheus_query",
    "render_context",
    "render_deployment",
    "render_extract_deployment",
    "render_extract_scaled_object",
    "render_scaled_object",
    "run_operator",
    "status_changes",
    "update_patch",
    "worker_name",
]
