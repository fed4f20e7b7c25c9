"""Opening sinks from settings, and a pool holding one sink per kind."""

from __future__ import annotations

import asyncio

from .base import Sink, SinkKind
from .settings import SinkSettings


async def open_sink(kind: SinkKind | None, settings: SinkSettings) -> Sink:
    """Open the sink of ``kind`` (``None``: the default sink) as ``settings`` configure it.

    ConfigError naming the variable when the settings lack what the kind
    needs; Unavailable when the backend cannot be reached (Milvus connects
    here; Turbopuffer only on the first request).
    """
    kind = kind or settings.default_sink
    settings.validate_for(kind)
    if kind is SinkKind.MILVUS_LITE:
        from .milvus import MilvusSink

        return await MilvusSink.open_lite(settings.milvus_lite_path, timeout=settings.timeout_seconds)
    if kind is SinkKind.MILVUS:
        from .milvus import MilvusSink

        return await MilvusSink.open(
            settings.milvus_uri,
            token=settings.milvus_token,
            db_name=settings.milvus_db_name,
            timeout=settings.timeout_seconds,
        )
    from .turbopuffer import TurbopufferSink

    return TurbopufferSink.create(
        api_key=settings.turbopuffer_api_key,
        region=settings.turbopuffer_region or None,
        base_url=settings.turbopuffer_base_url or None,
        timeout=settings.timeout_seconds,
        max_retries=settings.turbopuffer_max_retries,
    )


class SinkPool:
    """One sink per kind, opened on first use and shared by every pipeline of that kind."""

    def __init__(self, settings: SinkSettings) -> None:
        self._settings = settings
        self._sinks: dict[SinkKind, Sink] = {}
        self._lock = asyncio.Lock()

    def resolve(self, kind: SinkKind | None = None) -> SinkKind:
        """``kind``, or the default sink's kind for ``None``."""
        return kind or self._settings.default_sink

    async def get(self, kind: SinkKind | None = None) -> Sink:
        """The sink of ``kind`` (``None``: the default), opening it if needed."""
        kind = self.resolve(kind)
        sink = self._sinks.get(kind)
        if sink is not None:
            return sink
        async with self._lock:
            sink = self._sinks.get(kind)
            if sink is None:
                sink = self._sinks[kind] = await open_sink(kind, self._settings)
            return sink

    async def close(self) -> None:
        """Close every opened sink."""
        async with self._lock:
            sinks, self._sinks = list(self._sinks.values()), {}
        for sink in sinks:
            await sink.close()
