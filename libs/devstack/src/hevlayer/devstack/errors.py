"""Errors raised by hevlayer.devstack."""

from __future__ import annotations


class DevstackError(RuntimeError):
    """A local server could not be found, started, or stopped."""


class ServerNotFoundError(DevstackError):
    """A server binary (PostgreSQL, SeaweedFS, a console script) is not installed."""


class ServiceStartError(DevstackError):
    """A process exited or did not become ready in time; the message has its log tail."""
