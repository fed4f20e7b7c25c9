"""Entry point of the summarizer (``hevlayer-summarizer``)."""

from __future__ import annotations

import asyncio
import logging

from hevlayer.api.summary.v1 import summary_pb2, summary_pb2_grpc
from hevlayer.client.settings import ClientTLSSettings
from hevlayer.common.config import load_or_exit
from hevlayer.common.server import ServerSettings, ServiceApp, run_service
from hevlayer.ingest.transform import TransformationCache
from hevlayer.summarizer import metrics
from hevlayer.summarizer.gates import configure_gates
from hevlayer.summarizer.gateway_stager import GrpcStager
from hevlayer.summarizer.grpc_summary import SummaryServicer
from hevlayer.summarizer.jobs import JobLimits, JobRunner
from hevlayer.summarizer.journal import JobJournal
from hevlayer.summarizer.providers import ExtractiveProvider, OpenAIChatProvider, SummaryProvider
from hevlayer.summarizer.settings import GRPC_DEFAULTS, SummarizerSettings
from hevlayer.summarizer.staging import MemoryStager, Stager

log = logging.getLogger("hevlayer.summarizer")

SUMMARY_SERVICE = summary_pb2.DESCRIPTOR.services_by_name["SummaryService"].full_name


def make_provider(settings: SummarizerSettings) -> SummaryProvider:
    """The provider SUMMARIZER_PROVIDER names."""
    if settings.provider == "openai":
        return OpenAIChatProvider(
            settings.llm_url,
            settings.llm_model,
            api_key=settings.llm_api_key,
            timeout=settings.llm_timeout_seconds,
            max_attempts=settings.llm_max_attempts,
            max_tokens=settings.llm_max_tokens,
            max_words=settings.summary_max_words,
            max_child_chars=settings.max_child_chars,
            max_prompt_chars=settings.max_prompt_chars,
        )
    return ExtractiveProvider(max_words=settings.summary_max_words, max_child_chars=settings.max_child_chars)


def make_stager(settings: SummarizerSettings, client_tls: ClientTLSSettings | None = None) -> Stager:
    """Staging through the gateway (TLS per ``client_tls``), or in memory when
    SUMMARIZER_GATEWAY_ADDRESS is empty."""
    if not settings.gateway_address:
        log.warning(
            "SUMMARIZER_GATEWAY_ADDRESS is empty: summaries are not staged, only served by GetSummary"
        )
        return MemoryStager()
    return GrpcStager(
        settings.gateway_address,
        timeout=settings.stage_timeout_seconds,
        max_attempts=settings.stage_max_attempts,
        options=(client_tls or ClientTLSSettings()).options(),
    )


def cache_event(event: str, count: int) -> None:
    """The Transformation Cache's events as the summarizer's metrics."""
    if event in ("hit", "joined", "miss"):
        metrics.CACHE_LOOKUPS.labels(event).inc(count)
    elif event == "eviction":
        metrics.CACHE_EVICTIONS.inc(count)


async def build(
    app: ServiceApp, settings: SummarizerSettings, client_tls: ClientTLSSettings | None = None
) -> None:
    """Wire the summarizer's runner and servicer into ``app``."""
    gates = configure_gates(settings.summary_concurrency)
    provider = make_provider(settings)
    cache = TransformationCache(
        location=settings.transform_location, max_bytes=settings.cache_max_bytes, observer=cache_event
    )
    stager = make_stager(settings, client_tls)
    runner = JobRunner(
        provider,
        cache,
        stager,
        gate=gates.summary,
        workers=settings.workers,
        limits=JobLimits(max_objects=settings.max_job_objects, max_text_bytes=settings.max_object_text_bytes),
        retention_seconds=settings.job_retention_seconds,
        journal=JobJournal(settings.journal_path),
        index_poll_seconds=settings.index_poll_seconds,
    )
    app.add_service(
        SUMMARY_SERVICE, summary_pb2_grpc.add_SummaryServiceServicer_to_server, SummaryServicer(runner)
    )
    tasks: list[asyncio.Task[None]] = []

    async def end_watches_on_stop() -> None:
        await app.stopping.wait()
        runner.close_watchers()

    async def startup() -> None:
        await runner.start()
        tasks.append(asyncio.create_task(end_watches_on_stop(), name="end-watches"))
        log.info(
            "summarizer ready",
            extra={
                "provider": settings.provider,
                "model": provider.model,
                "gateway": settings.gateway_address or "(staging disabled)",
                "summary_concurrency": settings.summary_concurrency,
                "workers": settings.workers,
            },
        )

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
        await runner.stop()
        await stager.close()
        await provider.close()
        await asyncio.to_thread(cache.close)

    app.on_startup(startup)
    app.on_shutdown(shutdown)


def main() -> None:
    """Run the summarizer until SIGTERM."""
    server = load_or_exit(ServerSettings, GRPC_DEFAULTS)
    settings = load_or_exit(SummarizerSettings)
    client_tls = load_or_exit(ClientTLSSettings)

    async def wire(app: ServiceApp) -> None:
        await build(app, settings, client_tls)

    run_service("summarizer", server, wire)


if __name__ == "__main__":
    main()
