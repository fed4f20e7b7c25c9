"""Free TCP ports on the loopback interface."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable
from pathlib import Path

LOOPBACK = "127.0.0.1"


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether ``host:port`` can be bound right now (nothing listens on it)."""
    if not 0 < port < 65536:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_RANGE = (32768, 60999)
LOWEST_PORT = 10000
"""Ports below it are left alone (well-known and registered services)."""


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (inclusive)."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL_RANGE
    return low, high


def listening_ports() -> list[int]:
    """The ports :func:`free_port` draws from: ``LOWEST_PORT`` up to 65535, without the
    ephemeral range."""
    low, high = ephemeral_range()
    return [port for port in range(LOWEST_PORT, 65536) if not low <= port <= high]


def free_port(host: str = LOOPBACK, *, exclude: Iterable[int] = ()) -> int:
    """A TCP port on ``host`` that is free now, outside the kernel's ephemeral range.

    A server that is restarted on its port (the supervisor, the fault tests) must find it free
    again. A port the kernel picked by binding port 0 lies in the ephemeral range, where any
    outgoing connection made while the server was down may take it as its local port (seen in
    CI: a gateway restarted on its HTTP port got ``address already in use``). Ports outside that
    range are only ever taken by a process that binds them on purpose.

    ``exclude`` lists ports already handed out for the same server, so that a
    caller allocating several ports before starting anything never gets the
    same port twice.
    """
    excluded = set(exclude)
    candidates = listening_ports()
    draw = random.SystemRandom()
    for _ in range(200):
        port = draw.choice(candidates)
        if port not in excluded and port_is_free(port, host):
            return port
    raise RuntimeError(f"could not find a free port on {host} outside the ephemeral range")


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct free ports on ``host``."""
    ports: list[int] = []
    for _ in range(count):
        ports.append(free_port(host, exclude=ports))
    return ports


def preferred_port(preferred: int | None, host: str = LOOPBACK) -> int:
    """``preferred`` if it is free, else a free port the kernel picks."""
    if preferred is not None and port_is_free(preferred, host):
        return preferred
    return free_port(host)
