"""Free TCP ports on the loopback interface."""

from __future__ import annotations

import socket
from collections.abc import Iterable

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


def free_port(host: str = LOOPBACK, *, exclude: Iterable[int] = ()) -> int:
    """A TCP port on ``host`` that is free now; the kernel picks it.

    ``exclude`` lists ports already handed out for the same server, so that a
    caller allocating several ports before starting anything never gets the
    same port twice.
    """
    excluded = set(exclude)
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in excluded:
            return port
    raise RuntimeError(f"could not find a free port on {host}")


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
