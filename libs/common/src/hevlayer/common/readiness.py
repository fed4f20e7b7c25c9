"""Readiness that means something: background probes of what a service depends on.

A :class:`DependencyMonitor` runs one round of probes every
``HEVLAYER_READINESS_INTERVAL_SECONDS`` (all dependencies at once, each bounded
by ``HEVLAYER_READINESS_TIMEOUT_SECONDS``) and keeps the last result of each.
From that result, and never from a probe made for the request:

* ``/readyz`` answers 200 while every dependency is up and 503 otherwise, its
  body naming each dependency with ``up`` and, when down, the ``error``;
* gRPC health (``grpc.health.v1``, the server ``""`` and every service) turns
  NOT_SERVING when a dependency goes down and SERVING when all are back;
* the gauge ``hevlayer_<service>_dependency_up{dependency}`` is 1 or 0.

A probe is an ``async`` callable that returns when the dependency answers
and raises (anything) when it does not. Errors are reported as
``"<type>: <message>"``, cut to :data:`MAX_ERROR_CHARS`, with the user
information of any URL (``scheme://user:password@``) removed, so that a
probe's error cannot carry a credential into ``/readyz`` or the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge

from hevlayer.common.metrics import REGISTRY
from hevlayer.common.settings import ReadinessSettings

log = logging.getLogger("hevlayer.readiness")

Probe = Callable[[], Awaitable[None]]
"""Returns when the dependency answers; raises when it does not."""

MAX_ERROR_CHARS = 300
NOT_READY_INTERVAL_SECONDS = 1.0
"""Longest interval between two rounds while some dependency is down."""
STARTUP_GRACE_SECONDS = 30.0
"""A dependency never up since the start is logged as down only after this long."""
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


def describe_error(exc: BaseException) -> str:
    """``"<type>: <message>"`` of a failed probe, short and without URL credentials."""
    if isinstance(exc, TimeoutError):
        return "no answer within the probe timeout"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = _URL_USERINFO.sub(r"\g<scheme>", " ".join(text.split()))
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


@functools.cache
def dependency_gauge(service: str) -> Gauge:
    """``hevlayer_<service>_dependency_up{dependency}`` in the process registry (one per service name)."""
    return Gauge(
        f"hevlayer_{service}_dependency_up",
        f"1 while the {service}'s last probe of the dependency succeeded, else 0 "
        "(HEVLAYER_READINESS_INTERVAL_SECONDS apart).",
        ["dependency"],
        registry=REGISTRY,
    )


@dataclass
class DependencyState:
    """The last probe result of one dependency."""

    up: bool = False
    error: str = "not probed yet"
    checked_at: float = 0.0
    """``time.time()`` of the last probe (0: none yet)."""
    ever_up: bool = False
    down_since: float = 0.0
    """``time.time()`` of the first failed probe of the current outage."""
    warned: bool = False
    """The current outage has been logged as a warning."""


class DependencyMonitor:
    """Probes ``probes`` in the background and reports through ``on_change`` and ``/readyz``.

    ``on_change(ready)`` is awaited after a round whose overall result
    differs from the previous one (and after the first round), typically
    :meth:`hevlayer.common.server.ServiceApp.set_serving`.
    """

    def __init__(
        self,
        service: str,
        probes: Mapping[str, Probe],
        settings: ReadinessSettings,
        on_change: Callable[[bool], Awaitable[None]],
    ) -> None:
        if not probes:
            raise ValueError("a DependencyMonitor needs at least one probe")
        self.service = service
        self._probes = dict(probes)
        self._settings = settings
        self._on_change = on_change
        self._gauge = dependency_gauge(service)
        self.states = {name: DependencyState() for name in self._probes}
        self._ready: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        for name in self._probes:
            self._gauge.labels(name).set(0)

    @property
    def ready(self) -> bool:
        """True when the last round found every dependency up."""
        return all(state.up for state in self.states.values())

    @property
    def down(self) -> list[str]:
        """Names of the dependencies whose last probe failed (or that were not probed yet)."""
        return [name for name, state in self.states.items() if not state.up]

    async def check(self) -> bool:
        """The readiness check for :meth:`ServiceApp.add_readiness_check` (no probe: the last round)."""
        return self.ready

    def report(self) -> dict[str, Any]:
        """What ``/readyz`` adds to its body: every dependency's state and the names of those down."""
        dependencies: dict[str, Any] = {}
        for name, state in self.states.items():
            entry: dict[str, Any] = {"up": state.up}
            if not state.up:
                entry["error"] = state.error
            dependencies[name] = entry
        return {"dependencies": dependencies, "down": self.down}

    async def probe_once(self) -> bool:
        """Run one round now (every probe at once, each bounded); return whether all are up."""
        names = list(self._probes)
        results = await asyncio.gather(*(self._probe(name) for name in names))
        now = time.time()
        for name, error in zip(names, results, strict=True):
            self._record(name, error, now)
        ready = self.ready
        if ready != self._ready:
            self._ready = ready
            await self._on_change(ready)
        return ready

    def _record(self, name: str, error: str | None, now: float) -> None:
        """Keep a probe's result, set the gauge, and log a change once: a dependency that was up
        and fails is a warning at once; one that has not been up since the start only after
        :data:`STARTUP_GRACE_SECONDS` (dependencies starting alongside are not an incident)."""
        state = self.states[name]
        was_down = not state.up or state.checked_at == 0
        state.up, state.checked_at, state.error = error is None, now, error or ""
        self._gauge.labels(name).set(1 if error is None else 0)
        if error is None:
            if state.warned:
                log.info("%s: dependency %s is up again", self.service, name)
            state.ever_up, state.warned, state.down_since = True, False, 0.0
            return
        if not was_down or state.down_since == 0.0:
            state.down_since = now
        if not state.warned and (state.ever_up or now - state.down_since >= STARTUP_GRACE_SECONDS):
            log.warning("%s: dependency %s is down: %s", self.service, name, error)
            state.warned = True

    async def _probe(self, name: str) -> str | None:
        try:
            async with asyncio.timeout(self._settings.timeout_seconds):
                await self._probes[name]()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return describe_error(exc)
        return None

    def start(self) -> None:
        """Probe every ``interval_seconds`` (at most :data:`NOT_READY_INTERVAL_SECONDS` apart
        while not ready) until :meth:`stop`; the first round at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.service}-readiness")

    async def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                await self.probe_once()
            except Exception:
                log.exception("%s: a readiness round failed", self.service)
            # Not ready (at start, or a dependency is down): look again sooner, so that
            # readiness returns within a second of the dependency.
            interval = self._settings.interval_seconds
            if not self.ready:
                interval = min(interval, NOT_READY_INTERVAL_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), interval)

    async def stop(self) -> None:
        """Stop probing (the last states stay)."""
        self._stopped.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
