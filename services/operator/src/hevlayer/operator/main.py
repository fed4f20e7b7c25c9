"""Entry point of the operator (``hevlayer-operator``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from hevlayer.client.settings import ClientTLSSettings
from hevlayer.common.config import load_or_exit
from hevlayer.common.logging import configure_logging
from hevlayer.common.server import ServerSettings
from hevlayer.common.telemetry import configure_tracing
from hevlayer.operator.kube_client import LoginError
from hevlayer.operator.runner import run_operator
from hevlayer.operator.settings import OperatorSettings

SERVICE = "operator"


def main() -> None:
    """Run the operator until SIGTERM (exit 2 on a configuration error)."""
    server = load_or_exit(ServerSettings)
    settings = load_or_exit(OperatorSettings)
    client_tls = load_or_exit(ClientTLSSettings)
    configure_logging(SERVICE, server.log_level, server.log_format)
    # Kopf logs every handler invocation at INFO; keep those at the operator's
    # level only when it is debug.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("kopf").setLevel(logging.WARNING)
    configure_tracing(SERVICE, server.traces_exporter)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_operator(settings, client_options=client_tls.options()))
    except LoginError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
