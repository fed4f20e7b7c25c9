"""Running the operator: clients, registry, and kopf's main loop."""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

import kopf

from hevlayer.client import ClientOptions
from hevlayer.client.channel import open_channel
from hevlayer.operator.gateway_client import GatewayClient
from hevlayer.operator.handlers import build_registry, kopf_settings
from hevlayer.operator.kube_client import KubeClient, login
from hevlayer.operator.reconcile import Reconciler
from hevlayer.operator.render import RenderContext
from hevlayer.operator.settings import OperatorSettings

log = logging.getLogger("hevlayer.operator")

# What kopf accepts as stop and ready flags.
Flag = threading.Event | Any


def render_context(settings: OperatorSettings) -> RenderContext:
    """The manifests' cluster facts from the settings."""
    return RenderContext(
        gateway_address=settings.gateway_address,
        gateway_http_url=settings.metrics_base_url,
        pool_node_label=settings.pool_node_label,
    )


async def run_operator(
    settings: OperatorSettings,
    *,
    stop_flag: Flag | None = None,
    ready_flag: Flag | None = None,
    client_options: ClientOptions | None = None,
) -> None:
    """Serve Pipelines until SIGTERM/SIGINT (main thread) or ``stop_flag`` is set.

    ``stop_flag`` / ``ready_flag``: a ``threading.Event``, ``asyncio.Event`` or
    future, as :func:`kopf.operator` takes them (tests run the operator in a
    thread with them). ``client_options``: the channel to the gateway (TLS from
    ``HEVLAYER_CLIENT_TLS_*`` in ``hevlayer-operator``); None: plaintext.
    """
    credentials = functools.partial(login, settings.kubeconfig)
    credentials()  # fail at start, with a clear message, when there are no credentials
    channel = open_channel(settings.gateway_address, client_options)
    try:
        async with KubeClient(credentials, timeout=settings.kube_timeout_seconds) as kube:
            gateway = GatewayClient(channel, timeout=settings.gateway_timeout_seconds, options=client_options)
            reconciler = Reconciler(kube, gateway, render_context(settings))
            registry = build_registry(
                reconciler,
                status_interval=settings.status_interval_seconds,
                credentials=credentials,
            )
            log.info(
                "operator starting",
                extra={
                    "namespaces": list(settings.namespaces) or "*",
                    "gateway": settings.gateway_address,
                    "liveness": settings.liveness_endpoint,
                },
            )
            await kopf.operator(
                registry=registry,
                settings=kopf_settings(),
                clusterwide=not settings.namespaces,
                namespaces=list(settings.namespaces),
                standalone=True,
                liveness_endpoint=settings.liveness_endpoint,
                stop_flag=stop_flag,
                ready_flag=ready_flag,
            )
    finally:
        await channel.close()
        log.info("operator stopped")
