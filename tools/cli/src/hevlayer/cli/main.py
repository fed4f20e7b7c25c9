"""The ``hevlayer`` command line."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar, overload

import click
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.live import Live
from rich.table import Table

from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.cli import corpus as corpus_module
from hevlayer.cli.ingest import AddOptions, AddSummary, Ingest, Reporter, is_s3_uri, s3_connection_from_env
from hevlayer.cli.progress import PlainReporter, RichReporter, is_terminal
from hevlayer.cli.resilience import connect_riding_restarts, riding_budget
from hevlayer.cli.search import Result, search
from hevlayer.cli.stack import DEFAULT_DATA_DIR, UpState, down, suite_services, up, up_detached
from hevlayer.cli.summaries import (
    CHUNK_KIND,
    SummaryJobs,
    SummaryOptions,
    run_with_summaries,
    summary_lines,
)
from hevlayer.client import DEFAULT_GATEWAY, Client, ClientOptions, ServiceError
from hevlayer.client.errors import NotFound
from hevlayer.client.settings import CA_ENV, CERT_ENV, KEY_ENV, ClientTLSSettings
from hevlayer.client.tokens import ROLE_NAMES, ROLE_VALUES
from hevlayer.common.auth import bearer_metadata
from hevlayer.common.config import ConfigError
from hevlayer.devstack.tokens import read_admin_token
from hevlayer.ingest.producers import Budget, chunk_kinds

T = TypeVar("T")

EXIT_ERROR = 1
EXIT_TIMEOUT = 3
DEFAULT_PIPELINE = "default"

_SINKS = {
    "milvus-lite": pipeline_pb2.SINK_MILVUS_LITE,
    "milvus": pipeline_pb2.SINK_MILVUS,
    "turbopuffer": pipeline_pb2.SINK_TURBOPUFFER,
}
_METRICS = {
    "cosine": pipeline_pb2.DISTANCE_METRIC_COSINE_DISTANCE,
    "euclidean": pipeline_pb2.DISTANCE_METRIC_EUCLIDEAN_SQUARED,
}
_QUEUES = {"segment": pipeline_pb2.QUEUE_BACKEND_SEGMENT, "row": pipeline_pb2.QUEUE_BACKEND_ROW}


# -- output ----------------------------------------------------------------------------------------


class Output:
    """stdout: rich on a terminal; plain text without control codes otherwise."""

    def __init__(self, plain: bool | None = None) -> None:
        self.plain = (not is_terminal(sys.stdout)) if plain is None else plain
        self.console = Console(
            file=sys.stdout,
            no_color=self.plain,
            force_terminal=False if self.plain else None,
            highlight=False,
            soft_wrap=self.plain,
            width=200 if self.plain else None,
        )

    def line(self, text: str = "", style: str | None = None) -> None:
        if self.plain:
            click.echo(text)
        else:
            self.console.print(text, style=style, markup=False)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        if self.plain:
            widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
            for row in [headers, *rows]:
                click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            return
        table = Table(*headers, box=None, header_style="bold", pad_edge=False)
        for row in rows:
            table.add_row(*[str(c) for c in row])
        self.console.print(table)


def error_text(error: ServiceError, gateway: str | None = None) -> str:
    """``error: CODE: message`` with one line per invalid field, the retry delay and a hint."""
    code = error.code.name if isinstance(error.code, grpc.StatusCode) else str(error.code)
    lines = [f"error: {code}: {error.message}"]
    for violation in error.violations:
        lines.append(f"  field {violation.field}: {violation.description}")
    if error.code == grpc.StatusCode.UNAUTHENTICATED:
        lines.append(
            "  pass an API token with --token or HEVLAYER_TOKEN (`hevlayer up` writes an admin token "
            "to DATA_DIR/tokens/admin.token, which the CLI uses by default)"
        )
    if error.code == grpc.StatusCode.UNAVAILABLE:
        if error.retry_after:
            lines.append(f"  retry after {error.retry_after:g} s")
        if gateway is not None and ("connect" in error.message.lower() or not error.message):
            lines.append(f"  is the gateway at {gateway} up? start the suite with `hevlayer up`")
    return "\n".join(lines)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


# -- context ---------------------------------------------------------------------------------------


@dataclass
class Settings:
    gateway_option: str | None
    data_dir: Path
    tls: ClientTLSSettings = field(default_factory=ClientTLSSettings)
    """TLS to the gateway (``--tls-ca``/``--tls-cert``/``--tls-key`` or ``HEVLAYER_CLIENT_TLS_*``)."""
    token_option: str | None = None
    """``--token``/``HEVLAYER_TOKEN``."""

    @property
    def token(self) -> str | None:
        """``--token``/``HEVLAYER_TOKEN``, else the admin token ``up`` wrote in the data dir."""
        return self.token_option or read_admin_token(self.data_dir)

    def client_options(self) -> ClientOptions:
        """Options of the CLI's gateway client: TLS, and its API token on every call."""
        token = self.token
        return self.tls.options(metadata=[bearer_metadata(token)] if token else [])

    @property
    def gateway(self) -> str:
        """``--gateway``/``HEVLAYER_GATEWAY``, else the ``up`` running in the data dir, else the default."""
        if self.gateway_option:
            return self.gateway_option
        state = UpState.read(self.data_dir)
        if state is not None and state.gateway:
            return state.gateway
        return DEFAULT_GATEWAY


def run_async(settings: Settings, body: Callable[[Client], Awaitable[T]]) -> T:
    """Run ``body`` with a gateway client; server errors are printed (field named) and exit 1."""
    address = settings.gateway
    state = UpState.read(settings.data_dir)
    try:  # a gateway that `up` restarts is ridden out (docs/operations.md)
        budget = riding_budget(state is not None and state.gateway == address)
    except ValueError as exc:
        fail(f"error: {exc}")

    async def main() -> T:
        async with connect_riding_restarts(address, settings.client_options(), budget) as gateway:
            return await body(gateway)

    try:
        return asyncio.run(main())
    except ServiceError as error:
        fail(error_text(error, address))
    except KeyboardInterrupt:
        fail("interrupted", 130)


pass_settings = click.make_pass_decorator(Settings)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--gateway",
    envvar="HEVLAYER_GATEWAY",
    default=None,
    metavar="HOST:PORT",
    help=f"Gateway address (env HEVLAYER_GATEWAY; default: the running `up`, else {DEFAULT_GATEWAY}).",
)
@click.option(
    "--data-dir",
    envvar="HEVLAYER_DATA_DIR",
    default=DEFAULT_DATA_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where `up` keeps its data and logs (env HEVLAYER_DATA_DIR).",
)
@click.option(
    "--tls-ca",
    envvar=CA_ENV,
    default="",
    metavar="PEM",
    help=f"CA that signed the gateway's certificate: talk TLS to the gateway (env {CA_ENV}).",
)
@click.option(
    "--tls-cert",
    envvar=CERT_ENV,
    default="",
    metavar="PEM",
    help=f"Client certificate for a gateway that requires mutual TLS (env {CERT_ENV}).",
)
@click.option(
    "--tls-key", envvar=KEY_ENV, default="", metavar="PEM", help=f"Its private key (env {KEY_ENV})."
)
@click.option(
    "--token",
    envvar="HEVLAYER_TOKEN",
    default=None,
    metavar="TOKEN",
    help="API token (env HEVLAYER_TOKEN; default: the admin token `up` wrote in the data dir).",
)
@click.version_option(package_name="hevlayer-cli", prog_name="hevlayer")
@click.pass_context
def cli(
    ctx: click.Context,
    gateway: str | None,
    data_dir: Path,
    tls_ca: str,
    tls_cert: str,
    tls_key: str,
    token: str | None,
) -> None:
    """hevlayer: turn files into vectors and search them.

    \b
      hevlayer up --detach          start the whole suite locally (data in ./.hevlayer)
      hevlayer add ~/notes          add files: extract, chunk, embed, index
      hevlayer search "a question"  ranked files with the best passage
      hevlayer status               documents per stage
      hevlayer down                 stop the suite
    """
    tls = ClientTLSSettings(ca=tls_ca, cert=tls_cert, key=tls_key)
    try:
        tls.validate()
    except ConfigError as exc:
        option = {CA_ENV: "--tls-ca", CERT_ENV: "--tls-cert", KEY_ENV: "--tls-key"}
        message = str(exc)
        for env, name in option.items():
            message = message.replace(env, f"{name} ({env})")
        fail(f"error: {message}", 2)
    ctx.obj = Settings(gateway, data_dir, tls, token)


pipeline_option = click.option(
    "-p",
    "--pipeline",
    envvar="HEVLAYER_PIPELINE",
    default=DEFAULT_PIPELINE,
    show_default=True,
    help="Pipeline (env HEVLAYER_PIPELINE).",
)


# -- up / down -------------------------------------------------------------------------------------


@cli.command("up")
@click.option("--detach", is_flag=True, help="Run in the background; return once everything is up.")
@click.option("--embedder/--no-embedder", default=True, show_default=True, help="Triton and the embedder.")
@click.option(
    "--worker/--no-worker",
    default=None,
    help="The embedder's worker loop (default: when it is installed).",
)
@click.option(
    "--summarizer/--no-summarizer",
    default=None,
    help="The summarizer, the Job Lane of `add --summaries` (default: when it is installed).",
)
@pass_settings
def up_command(
    settings: Settings, detach: bool, embedder: bool, worker: bool | None, summarizer: bool | None
) -> None:
    """Start the whole suite on embedded defaults; Ctrl-C or `hevlayer down` stops it.

    PostgreSQL, S3 (SeaweedFS), Triton with the embedding model, the embedder, the
    claimer, the gateway (Milvus Lite) and the embedder worker, with their data and
    one log per service under --data-dir. A second `up` reuses the data.
    """
    if detach:
        argv = ["--data-dir", str(settings.data_dir), "up", "--embedder" if embedder else "--no-embedder"]
        if worker is not None:
            argv.append("--worker" if worker else "--no-worker")
        if summarizer is not None:
            argv.append("--summarizer" if summarizer else "--no-summarizer")
        sys.exit(up_detached(settings.data_dir, argv))
    services = suite_services(settings.data_dir, embedder=embedder, worker=worker, summarizer=summarizer)
    sys.exit(up(settings.data_dir, services))


@cli.command("down")
@pass_settings
def down_command(settings: Settings) -> None:
    """Stop the suite started by `hevlayer up` in --data-dir."""
    sys.exit(down(settings.data_dir))


# -- add -------------------------------------------------------------------------------------------


def make_reporter(output: Output, plain: bool) -> Reporter:
    if plain or output.plain:
        return PlainReporter(sys.stdout)
    return RichReporter(output.console)


def print_summary(output: Output, summary: AddSummary) -> None:
    kinds_text = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.by_kind.items()))
    output.line(
        f"pipeline {summary.pipeline}: {summary.files} files found, {summary.supported} supported"
        + (f" ({kinds_text})" if kinds_text else "")
        + f", {len(summary.skipped)} skipped"
    )
    output.line(
        f"queued {summary.enqueued}, unchanged {summary.unchanged}, deleted {summary.deleted}; "
        f"extracted {summary.extracted} documents into {summary.chunks} chunks"
        + (
            f" ({summary.conversions} converted, {summary.cache_hits} from the artifact cache)"
            if summary.conversions or summary.cache_hits
            else ""
        )
    )
    output.line(
        f"under the given paths: {summary.indexed} indexed, {len(summary.failures)} failed"
        + (f", {summary.outstanding} still in flight" if summary.outstanding else "")
    )
    output.line(
        f"took {summary.elapsed:.1f} s: {summary.files_per_second:.1f} files/s, "
        f"{summary.chunks_per_second:.1f} chunks/s"
    )
    if summary.skipped:
        output.line(f"skipped ({len(summary.skipped)}):")
        for skipped in summary.skipped[:50]:
            output.line(f"  {skipped.path}: {skipped.reason}")
        if len(summary.skipped) > 50:
            output.line(f"  ... and {len(summary.skipped) - 50} more")
    if summary.failures:
        output.line(f"failed ({len(summary.failures)}):")
        for failure in summary.failures[:50]:
            output.line(f"  {failure.path}: {failure.reason}")
        if len(summary.failures) > 50:
            output.line(f"  ... and {len(summary.failures) - 50} more")


@cli.command("add")
@click.argument("paths", nargs=-1, required=True, metavar="PATHS...")
@pipeline_option
@click.option("--workers", default=4, show_default=True, type=click.IntRange(1, 64), help="Extract workers.")
@click.option(
    "--remote-workers",
    is_flag=True,
    help="Run no extract workers here: only enumerate, enqueue and wait while running extract workers "
    "(hevlayer-extractor, docs/ingest.md) extract.",
)
@click.option(
    "--artifact-cache-mb",
    default=1024,
    show_default=True,
    type=click.IntRange(0),
    help="Byte budget (MiB) of the Artifact Cache in the data directory that the extract workers "
    "here reuse conversions from (0: no cache).",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until everything is indexed.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Stop waiting after SECONDS.")
@click.option(
    "--delete-missing/--keep-missing",
    default=True,
    show_default=True,
    help="Delete the documents of files gone from the given directories.",
)
@click.option("--include-hidden", is_flag=True, help="Also add dot-files and dot-directories.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out matching files and directories.")
@click.option(
    "--max-tokens",
    default=256,
    show_default=True,
    type=click.IntRange(16, 2000),
    help="Chunk size in the embedding model's tokens (a chunk and its context line fit the model's 256).",
)
@click.option(
    "--overlap",
    default=28,
    show_default=True,
    type=click.IntRange(0, 500),
    help="Chunk overlap in model tokens.",
)
@click.option(
    "--queue",
    type=click.Choice(list(_QUEUES)),
    default=None,
    help="Queue backend of the pipeline if add creates it (default: the server's, PIPELINE_QUEUE_BACKEND, "
    "segment unless set): segment keeps queued file ids in S3 manifests, a few PostgreSQL rows for "
    "millions of files; row keeps one row per queued file.",
)
@click.option(
    "--summaries/--no-summaries",
    default=None,
    help="Also summarize each given directory bottom-up (the Job Lane): one chunk of kind "
    "directory_summary per directory, found by `search --kind directory_summary` (default: the "
    "pipeline's setting, `pipelines summaries NAME on|off`; off for a new pipeline).",
)
@click.option(
    "--summarizer",
    "summarizer_option",
    envvar="HEVLAYER_SUMMARIZER",
    default=None,
    metavar="HOST:PORT",
    help="Summarizer address for --summaries (env HEVLAYER_SUMMARIZER; default: the running `up`'s).",
)
@click.option(
    "--priority",
    default=0,
    show_default=True,
    type=click.IntRange(-(2**31), 2**31 - 1),
    help="Claim priority of every file this run queues (an int32): extract workers and embedders "
    "take lower priorities first, then the oldest; a queued file of priority -1 goes before a "
    "backlog of priority 0.",
)
@click.option("--plain", is_flag=True, help="Plain progress lines even on a terminal.")
@pass_settings
def add_command(
    settings: Settings,
    paths: tuple[str, ...],
    pipeline: str,
    workers: int,
    remote_workers: bool,
    artifact_cache_mb: int,
    wait: bool,
    timeout: float | None,
    delete_missing: bool,
    include_hidden: bool,
    exclude: tuple[str, ...],
    max_tokens: int,
    overlap: int,
    queue: str | None,
    summaries: bool | None,
    summarizer_option: str | None,
    priority: int,
    plain: bool,
) -> None:
    """Add files and directories: new and changed files are extracted, chunked,
    embedded and indexed; unchanged ones are skipped; deleted ones are removed.

    A path may also be s3://bucket/prefix (every object under it) or
    s3://bucket/key (one object), read with the extract workers' S3 settings
    (EXTRACTOR_S3_ENDPOINT_URL, EXTRACTOR_S3_ACCESS_KEY_ID,
    EXTRACTOR_S3_SECRET_ACCESS_KEY, EXTRACTOR_S3_REGION; unset: AWS and its
    default credential chain).

    Supported kinds: text, markdown, code (Python split on definitions), PDF, HTML,
    tables (CSV/TSV/JSON/Parquet rows and schema), JSON Lines records, images
    (OCR by tesseract, or a vision endpoint: HEVLAYER_VISION_*), mbox/.eml mail,
    notebooks, Word and PowerPoint. Unsupported or unreadable files are reported.
    """
    if overlap >= max_tokens:
        raise click.BadParameter("must be below --max-tokens", param_hint="--overlap")
    for path in paths:
        if is_s3_uri(path) and len(path) <= len("s3://"):
            raise click.BadParameter(
                f"{path!r}: expected s3://bucket/prefix or s3://bucket/key", param_hint="PATHS"
            )
    targets: list[str | Path] = [p if is_s3_uri(p) else Path(p) for p in paths]
    local = [p for p in targets if isinstance(p, Path)]
    if summaries and len(local) < len(targets):
        raise click.BadParameter(
            "summaries fold local directories only; add s3:// paths without them", param_hint="--summaries"
        )
    options = AddOptions(
        workers=workers,
        remote_workers=remote_workers,
        artifact_dir=str(settings.data_dir.absolute() / "artifacts") if artifact_cache_mb else None,
        artifact_bytes=artifact_cache_mb << 20,
        wait=wait,
        wait_timeout=timeout,
        delete_missing=delete_missing,
        include_hidden=include_hidden,
        exclude=exclude,
        budget=Budget(max_tokens=max_tokens, overlap_tokens=overlap, max_chars=max(16, max_tokens * 10)),
        queue_backend=_QUEUES[queue] if queue else pipeline_pb2.QUEUE_BACKEND_UNSPECIFIED,
        priority=priority,
        s3=s3_connection_from_env() if len(local) < len(targets) else None,
    )
    address = None
    if summaries is None and run_async(
        settings, lambda gateway: pipeline_summaries_enabled(gateway, pipeline)
    ):
        address = summarizer_address(settings, summarizer_option, required=False)
        if address is None:
            click.echo(
                f"warning: pipeline {pipeline!r} has summaries on, but no summarizer is running here; "
                "adding without them (pass --summarizer HOST:PORT, or --no-summaries to silence this)",
                err=True,
            )
    elif summaries:
        address = summarizer_address(settings, summarizer_option)
    summary_options = None
    if address is not None:
        summary_options = SummaryOptions(
            address,
            settings.client_options(),
            include_hidden=include_hidden,
            exclude=exclude,
            wait=wait,
            artifact_dir=options.artifact_dir,
            artifact_bytes=options.artifact_bytes,
            budget=options.budget,
        )
    if summary_options is not None and not local:
        summary_options = None  # nothing local to summarize
    summary = add_paths(settings, pipeline, targets, options, plain=plain, summaries=summary_options)
    if summary.timed_out:
        sys.exit(EXIT_TIMEOUT)


def add_paths(
    settings: Settings,
    pipeline: str,
    paths: Sequence[str | Path],
    options: AddOptions,
    *,
    plain: bool = False,
    output: Output | None = None,
    summaries: SummaryOptions | None = None,
) -> AddSummary:
    out = output or Output()
    lines: list[str] = []

    async def body(gateway: Client) -> AddSummary:
        reporter = make_reporter(out, plain)
        try:
            ingest = Ingest(gateway, pipeline, paths, reporter, options).run()
            if summaries is None:
                return await ingest
            local = [p for p in paths if isinstance(p, Path)]
            jobs = SummaryJobs(gateway, pipeline, local, summaries, reporter.note)
            result, report = await run_with_summaries(ingest, jobs, options.queue_backend)
            lines.extend(summary_lines(report))
            return result
        finally:
            reporter.close()

    summary = run_async(settings, body)
    print_summary(out, summary)
    for line in lines:
        out.line(line)
    return summary


async def pipeline_summaries_enabled(gateway: Client, pipeline_id: str) -> bool:
    """The pipeline's summaries_enabled; False when it does not exist yet."""
    try:
        return (await gateway.pipelines.get(pipeline_id)).summaries_enabled
    except NotFound:
        return False


@overload
def summarizer_address(settings: Settings, option: str | None) -> str: ...


@overload
def summarizer_address(settings: Settings, option: str | None, *, required: bool) -> str | None: ...


def summarizer_address(settings: Settings, option: str | None, *, required: bool = True) -> str | None:
    """``--summarizer``/``HEVLAYER_SUMMARIZER``, else the summarizer of the running `up`; without
    one, exit with an error (``required``) or None."""
    if option:
        return option
    state = UpState.read(settings.data_dir)
    if state is not None and state.services.get("summarizer"):
        return state.services["summarizer"]
    if not required:
        return None
    fail(
        "error: --summaries needs a summarizer: start the suite with `hevlayer up` (it runs one) "
        "or pass --summarizer HOST:PORT (env HEVLAYER_SUMMARIZER)"
    )


# -- search ----------------------------------------------------------------------------------------


def print_results(output: Output, results: Sequence[Result]) -> None:
    if not results:
        output.line("no results")
        return
    for rank, result in enumerate(results, start=1):
        kind = f"  [{result.kind}]" if result.kind else ""
        title = f"  {result.title}" if result.title else ""
        if output.plain:
            output.line(f"{rank:2d}. {result.score:.3f}  {result.location}{kind}{title}")
        else:
            output.console.print(
                f"[bold]{rank:2d}.[/] [green]{result.score:.3f}[/]  [cyan]{result.location}[/]"
                f"[dim]{kind}{title}[/]",
                highlight=False,
            )
        if result.snippet:
            output.line(f"    {result.snippet}", style="dim")


@cli.command("search")
@click.argument("query")
@pipeline_option
@click.option("-k", "top_k", default=5, show_default=True, type=click.IntRange(1, 250), help="Results.")
@click.option(
    "--kind",
    type=click.Choice([*chunk_kinds(), CHUNK_KIND]),
    default=None,
    help=f"Only files of this kind ({CHUNK_KIND}: the summaries of `add --summaries`).",
)
@pass_settings
def search_command(settings: Settings, query: str, pipeline: str, top_k: int, kind: str | None) -> None:
    """Search the pipeline's index: the best files for QUERY, each with its best passage."""
    output = Output()
    results = run_async(settings, lambda gateway: search(gateway, pipeline, query, k=top_k, kind=kind))
    print_results(output, results)


# -- status ----------------------------------------------------------------------------------------


def _counts_row(status: pipeline_pb2.PipelineStatus) -> list[str]:
    counts = dict(status.counts)
    others = {
        k: v for k, v in counts.items() if k not in ("extract", "extracting", "pending", "indexed", "failed")
    }
    return [
        status.pipeline_id,
        str(counts.get("extract", 0) + counts.get("extracting", 0)),
        str(counts.get("pending", 0)),
        str(sum(others.values())),
        str(counts.get("indexed", 0)),
        str(counts.get("failed", 0)),
        str(sum(counts.values())),
    ]


STATUS_HEADERS = ("PIPELINE", "EXTRACT", "PENDING", "EMBEDDING", "INDEXED", "FAILED", "TOTAL")


def status_line(status: pipeline_pb2.PipelineStatus) -> str:
    counts = dict(status.counts)
    stages = " ".join(f"{stage}={counts[stage]}" for stage in sorted(counts)) or "empty"
    return f"{status.pipeline_id}: {stages} (pending_count={status.pending_count})"


SERVICE_HEADERS = ("SERVICE", "PID", "STATE", "RESTARTS", "LAST EXIT", "UPTIME")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def service_rows(state: UpState, now: float | None = None) -> list[list[str]]:
    """One row per supervised process of ``up``: pid, state, restarts, last exit, uptime."""
    now = time.time() if now is None else now
    rows = []
    for name, info in state.supervision.items():
        running = info.get("state") == "running"
        rows.append(
            [
                name,
                str(info.get("pid") or "-"),
                str(info.get("state", "-")),
                str(info.get("restarts", 0)),
                str(info.get("last_exit") or "-"),
                _duration(now - float(info.get("started_at", now))) if running else "-",
            ]
        )
    return rows


@cli.command("status")
@click.option(
    "-p", "--pipeline", envvar="HEVLAYER_PIPELINE", default=None, help="One pipeline (default: all)."
)
@click.option("--watch", is_flag=True, help="Keep showing the status as it changes (Ctrl-C stops).")
@click.option(
    "--services",
    "services_only",
    is_flag=True,
    help="Only the processes of the `hevlayer up` in --data-dir (no gateway call).",
)
@pass_settings
def status_command(settings: Settings, pipeline: str | None, watch: bool, services_only: bool) -> None:
    """The processes of the running `hevlayer up` (restarts, last exit, uptime), then documents
    per stage: extract, pending (for the embedder), embedding, indexed, failed."""
    output = Output()
    state = UpState.read(settings.data_dir)
    if services_only:
        if state is None:
            fail(f"hevlayer is not up in {settings.data_dir.absolute()}")
        output.table(SERVICE_HEADERS, service_rows(state))
        return
    if state is not None and state.supervision and not watch and settings.gateway == state.gateway:
        output.table(SERVICE_HEADERS, service_rows(state))
        output.line()

    async def once(gateway: Client) -> None:
        ids = [pipeline] if pipeline else [p.id for p in await gateway.pipelines.list()]
        statuses = [await gateway.pipelines.status(pid) for pid in ids]
        if not statuses:
            output.line("no pipelines")
            return
        output.table(STATUS_HEADERS, [_counts_row(s) for s in statuses])

    async def follow(gateway: Client) -> None:
        pid = pipeline or DEFAULT_PIPELINE
        if output.plain:
            async for status in gateway.pipelines.watch_status(pid, min_interval_ms=500):
                output.line(status_line(status))
            return
        with Live(console=output.console, auto_refresh=False) as live:
            async for status in gateway.pipelines.watch_status(pid, min_interval_ms=250):
                table = Table(*STATUS_HEADERS, box=None, header_style="bold")
                table.add_row(*_counts_row(status))
                live.update(table, refresh=True)

    run_async(settings, follow if watch else once)


# -- pipelines -------------------------------------------------------------------------------------


@cli.group("pipelines")
def pipelines_group() -> None:
    """Create, list and delete pipelines."""


def _enum_name(value: int, names: Mapping[str, int]) -> str:
    for name, number in names.items():
        if number == value:
            return name
    return "-"


def _time(stamp: Timestamp) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


@pipelines_group.command("create")
@click.argument("pipeline_id", metavar="NAME")
@click.option("--namespace", default="", help="Index namespace (default: NAME with '-' → '_').")
@click.option(
    "--metric", type=click.Choice(list(_METRICS)), default=None, help="Distance metric (default cosine)."
)
@click.option(
    "--sink", type=click.Choice(list(_SINKS)), default=None, help="Vector index (default: the gateway's)."
)
@click.option(
    "--queue", type=click.Choice(list(_QUEUES)), default=None, help="Queue backend of lightweight ids."
)
@click.option("--max-attempts", type=click.IntRange(0, 1000), default=0, help="Claims before failing (0: 5).")
@click.option("--lease-seconds", type=click.IntRange(0, 86400), default=0, help="Default lease (0: 900).")
@click.option(
    "--summaries",
    is_flag=True,
    help="Directory summaries on by default: `add` to this pipeline runs as with --summaries.",
)
@pass_settings
def pipelines_create(
    settings: Settings,
    pipeline_id: str,
    namespace: str,
    metric: str | None,
    sink: str | None,
    queue: str | None,
    max_attempts: int,
    lease_seconds: int,
    summaries: bool,
) -> None:
    """Create pipeline NAME (lowercase letters, digits and '-', starting with a letter)."""
    request = pipeline_pb2.Pipeline(
        id=pipeline_id,
        target_namespace=namespace,
        max_attempts=max_attempts,
        default_lease_seconds=lease_seconds,
        summaries_enabled=summaries,
    )
    if metric:
        request.distance_metric = _METRICS[metric]
    if sink:
        request.sink = _SINKS[sink]
    if queue:
        request.queue_backend = _QUEUES[queue]
    created = run_async(settings, lambda gateway: gateway.pipelines.create(request))
    Output().line(
        f"created pipeline {created.id} (namespace {created.target_namespace}, "
        f"sink {_enum_name(created.sink, _SINKS)}, queue {_enum_name(created.queue_backend, _QUEUES)})"
    )


@pipelines_group.command("list")
@pass_settings
def pipelines_list(settings: Settings) -> None:
    """List the pipelines."""
    output = Output()
    pipelines = run_async(settings, lambda gateway: gateway.pipelines.list())
    if not pipelines:
        output.line("no pipelines")
        return
    rows = [
        [
            p.id,
            p.target_namespace,
            _enum_name(p.sink, _SINKS),
            _enum_name(p.queue_backend, _QUEUES),
            str(p.dimension or "-"),
            "yes" if p.paused else "no",
            "on" if p.summaries_enabled else "off",
            _time(p.create_time),
        ]
        for p in pipelines
    ]
    output.table(
        ("PIPELINE", "NAMESPACE", "SINK", "QUEUE", "DIMENSION", "PAUSED", "SUMMARIES", "CREATED"), rows
    )


@pipelines_group.command("summaries")
@click.argument("pipeline_id", metavar="NAME")
@click.argument("setting", type=click.Choice(["on", "off"]))
@pass_settings
def pipelines_summaries(settings: Settings, pipeline_id: str, setting: str) -> None:
    """Turn directory summaries on or off by default for `add` to pipeline NAME."""
    wanted = pipeline_pb2.Pipeline(id=pipeline_id, summaries_enabled=setting == "on")
    updated = run_async(settings, lambda gateway: gateway.pipelines.update(wanted, ["summaries_enabled"]))
    Output().line(f"pipeline {updated.id}: summaries {'on' if updated.summaries_enabled else 'off'}")


@pipelines_group.command("delete")
@click.argument("pipeline_id", metavar="NAME")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_settings
def pipelines_delete(settings: Settings, pipeline_id: str, yes: bool) -> None:
    """Delete pipeline NAME with its documents, chunks and vectors."""
    if not yes:
        if not is_terminal(sys.stdin):
            fail(f"refusing to delete pipeline {pipeline_id!r} without --yes (standard input is not a tty)")
        click.confirm(f"Delete pipeline {pipeline_id!r} with all its documents and vectors?", abort=True)
    response = run_async(settings, lambda gateway: gateway.pipelines.delete(pipeline_id))
    Output().line(
        f"deleted pipeline {pipeline_id} ({response.deleted_documents} documents, "
        f"{response.deleted_segments} queue segments)"
    )


# -- tokens ----------------------------------------------------------------------------------------


@cli.group("tokens")
def tokens_group() -> None:
    """Create, list and revoke API tokens (an admin token is needed)."""


def _token_scope(token: Any) -> str:
    return "all pipelines" if token.all_pipelines else ",".join(token.pipeline_ids)


@tokens_group.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(list(ROLE_VALUES)), required=True, help="What the token may do.")
@click.option(
    "-p",
    "--pipeline",
    "pipelines",
    multiple=True,
    help="A pipeline the token may act on (repeat for several); none: every pipeline.",
)
@pass_settings
def tokens_create(settings: Settings, name: str, role: str, pipelines: tuple[str, ...]) -> None:
    """Create a token NAME; prints its secret, which is shown only this once."""
    token, secret = run_async(
        settings, lambda gateway: gateway.tokens.create(name, role, list(pipelines) or None)
    )
    click.echo(f"created token {token.id} ({token.name}, role {role}, {_token_scope(token)})", err=True)
    click.echo("the secret below is shown only now; store it safely:", err=True)
    click.echo(secret)


@tokens_group.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Also list revoked tokens.")
@pass_settings
def tokens_list(settings: Settings, include_revoked: bool) -> None:
    """List tokens (never their secrets)."""
    tokens = run_async(settings, lambda gateway: gateway.tokens.list(include_revoked=include_revoked))
    rows = [
        [
            t.id,
            t.name,
            ROLE_NAMES.get(t.role, "?"),
            _token_scope(t),
            _time(t.create_time),
            _time(t.revoke_time) if t.HasField("revoke_time") else "-",
        ]
        for t in tokens
    ]
    Output().table(("ID", "NAME", "ROLE", "PIPELINES", "CREATED", "REVOKED"), rows)


@tokens_group.command("revoke")
@click.argument("token_id", metavar="ID")
@pass_settings
def tokens_revoke(settings: Settings, token_id: str) -> None:
    """Revoke token ID; gateways refuse it within GATEWAY_AUTH_CACHE_SECONDS."""
    token = run_async(settings, lambda gateway: gateway.tokens.revoke(token_id))
    Output().line(f"revoked token {token.id} ({token.name})")


# -- demo (make run) -------------------------------------------------------------------------------


@cli.command("demo")
@click.option(
    "--corpus",
    "corpus_paths",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Add these paths instead of the standard library corpus.",
)
@click.option(
    "--corpus-tokens",
    default=corpus_module.DEFAULT_CORPUS_TOKENS,
    show_default=True,
    type=click.IntRange(1000),
    help="Token budget of the standard library corpus.",
)
@click.option(
    "--queries",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Labelled queries (JSON) to run and score with recall@5.",
)
@click.option("-p", "--pipeline", default="stdlib", show_default=True, help="Pipeline of the corpus.")
@click.option(
    "--queue",
    type=click.Choice(list(_QUEUES)),
    default=None,
    help="Queue backend of the pipeline if it is created (see `add --queue`).",
)
@click.option(
    "--summaries/--no-summaries",
    default=True,
    show_default=True,
    help="Also summarize the corpus's directories (the Job Lane) and show a summary search.",
)
@click.option("--exit", "exit_after", is_flag=True, help="Stop the suite after the searches.")
@click.option("--plain", is_flag=True, help="Plain progress lines even on a terminal.")
@pass_settings
def demo_command(
    settings: Settings,
    corpus_paths: tuple[Path, ...],
    corpus_tokens: int,
    queries: Path | None,
    pipeline: str,
    queue: str | None,
    summaries: bool,
    exit_after: bool,
    plain: bool,
) -> None:
    """`make run`: start the suite, add a real corpus (the running Python's standard
    library by default), run searches and show the answers; then stay up until Ctrl-C."""
    labelled = corpus_module.load_queries(queries) if queries else []
    output = Output()

    def ready(stack: Any) -> bool:
        gateway = next((r.grpc_address for r in stack.running if r.spec.public), DEFAULT_GATEWAY)
        local = Settings(gateway, settings.data_dir, settings.tls, settings.token_option)
        if corpus_paths:
            paths: list[Path] = list(corpus_paths)
            root: Path | None = None
        else:
            source = corpus_module.stdlib_dir()
            files = corpus_module.choose_stdlib_corpus(
                corpus_module.stdlib_files(source),
                token_budget=corpus_tokens,
                must_include=[m for q in labelled for m in q.relevant],
            )
            root = corpus_module.materialize(files, source, settings.data_dir.absolute() / "corpus")
            paths = [root]
            version = f"{sys.version_info.major}.{sys.version_info.minor}"
            output.line(
                f"\ncorpus: {len(files)} files of the Python {version} standard library "
                f"({sum(f.tokens for f in files)} tokens) in {root}"
            )
        output.line(f"adding to pipeline {pipeline} ...")
        options = AddOptions(
            queue_backend=_QUEUES[queue] if queue else pipeline_pb2.QUEUE_BACKEND_UNSPECIFIED,
            artifact_dir=str(settings.data_dir.absolute() / "artifacts"),
        )
        summarizer = next((r.grpc_address for r in stack.running if r.spec.name == "summarizer"), None)
        if summaries and summarizer is None:
            output.line("the summarizer is not installed: no directory summaries")
        summary_options = (
            SummaryOptions(summarizer, local.client_options(), budget=options.budget)
            if summaries and summarizer
            else None
        )
        add_paths(local, pipeline, paths, options, plain=plain, output=output, summaries=summary_options)
        shown = [q.query for q in labelled] or [
            "parse command line arguments",
            "compress data with zlib",
            "read and write CSV files",
        ]
        ranked: dict[str, list[str]] = {}
        for text in shown:
            # Files only: directory summaries share the index, but recall is about files.
            found = run_async(local, _searcher(pipeline, text, 10))
            results = [r for r in found if r.kind != CHUNK_KIND][:5]
            output.line(f'\nsearch "{text}"')
            print_results(output, results[:3])
            ranked[text] = [_relative(r.document_id, root) for r in results]
        if summary_options is not None:
            text = "encode and decode data formats"
            output.line(f'\nsearch --kind {CHUNK_KIND} "{text}"')
            print_results(output, run_async(local, _searcher(pipeline, text, 3, CHUNK_KIND)))
        if labelled:
            recall, missed = corpus_module.recall_at_k(labelled, ranked, k=5)
            output.line(f"\nrecall@5 on {len(labelled)} labelled queries: {recall:.2f}")
            for query in missed:
                output.line(f"  missed: {query.query!r} (wanted {', '.join(query.relevant)})")
        return not exit_after

    sys.exit(up(settings.data_dir, suite_services(settings.data_dir), ready=ready))


def _searcher(
    pipeline: str, text: str, k: int, kind: str | None = None
) -> Callable[[Client], Awaitable[list[Result]]]:
    async def body(gateway: Client) -> list[Result]:
        return await search(gateway, pipeline, text, k=k, kind=kind)

    return body


def _relative(document_id: str, root: Path | None) -> str:
    if root is None:
        return document_id
    prefix = root.as_posix().rstrip("/") + "/"
    return document_id[len(prefix) :] if document_id.startswith(prefix) else document_id


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``hevlayer`` console script."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    cli.main(args=list(argv) if argv is not None else None, prog_name="hevlayer")
