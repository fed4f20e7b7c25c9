"""Local servers for development and tests.

- ``PostgresServer``: a throwaway or persistent PostgreSQL on 127.0.0.1.
- ``SeaweedS3``: SeaweedFS ``weed mini`` serving S3 on 127.0.0.1.
- ``ServiceProcess``: a service process with a log file and gRPC readiness.
- ``DevStack`` / ``SERVICES``: all of them together (``hevlayer-devstack up``).

Plain Python and subprocess; no asyncio.
"""

from hevlayer.devstack.errors import DevstackError, ServerNotFoundError, ServiceStartError
from hevlayer.devstack.ports import free_port, free_ports, port_is_free
from hevlayer.devstack.postgres import (
    BASE_SETTINGS,
    TEST_SETTINGS,
    PostgresServer,
    find_postgres_bindir,
)
from hevlayer.devstack.processes import (
    ServiceProcess,
    find_console_script,
    health_status,
)
from hevlayer.devstack.seaweed import S3Error, SeaweedS3, find_weed
from hevlayer.devstack.stack import SERVICES, DevStack, RunningService, ServiceSpec

__all__ = [
    "BASE_SETTINGS",
    "SERVICES",
    "TEST_SETTINGS",
    "DevStack",
    "DevstackError",
    "PostgresServer",
    "RunningService",
    "S3Error",
    "SeaweedS3",
    "ServerNotFoundError",
    "ServiceProcess",
    "ServiceSpec",
    "ServiceStartError",
    "find_console_script",
    "find_postgres_bindir",
    "find_weed",
    "free_port",
    "free_ports",
    "health_status",
    "port_is_free",
]
