"""Benchmark: chunks/s through StageDocuments into a real SeaweedFS.

Starts PostgreSQL, SeaweedFS, a claimer and a gateway (real processes, real
channels), creates a pipeline and stages documents of 10 chunks of ~500 bytes
of English-like text through one StageDocuments stream (batches pipelined).
Prints chunks/s, S3 requests per document (from the gateway's own
``hevlayer_gateway_s3_requests_total``), and, measured in the same run on the
same S3 server, the baseline of one object per document written with
aiobotocore puts (32 in flight), as a ratio.

With ``--secured``, then the secured path next to the plaintext one in the same run:
a second claimer + gateway pair on the same PostgreSQL and S3 serves mutual TLS on
both hops (client to gateway, gateway to claimer, which accepts only the gateway's
certificate), the client stages over TLS with a client certificate and sends
``authorization: Bearer <token>`` (an admin API token: the client creates its
pipelines) on every call, which the gateway verifies and checks (bench/secured.py is
the one place these settings go); the plaintext pair runs with GATEWAY_AUTH=off and
CLAIMER_AUTH=off. ``--rounds`` rounds stage ``--documents``
documents through each pair back to back (the order alternating); prints the
median chunks/s of each, the ratio of the medians, the median of the rounds' own
ratios and the CPU per document of each process, counted until the servers are quiet
again (the gateway writes its disk cache in the background after answering; the next
phase starts only then). With ``--secured`` both gateways keep their disk cache on
tmpfs (/dev/shm; see ``running_stack``), the StageDocuments figures above included.
Goal: secured / plaintext >= 0.95.

    .venv/bin/python bench/staging.py [--documents 5000] [--batch 100] [--compression zstd]
    .venv/bin/python bench/staging.py --secured [--rounds 3]

Goal (issue 5): >= 5,000 chunks/s on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support: the helpers tests share

import grpc
from claims import SECURED_GOAL, cpu_seconds, postgres_cpu_seconds
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families
from secured import Secured
from support.s3 import gateway_s3_settings

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.client.options import TLS, ClientOptions
from hevlayer.devstack import TEST_SETTINGS, PostgresServer, SeaweedS3, ServiceProcess
from hevlayer.devstack.ports import free_port
from hevlayer.gateway.chunkstore import SegmentCodec, open_s3_client

CHUNKS_PER_DOCUMENT = 10
CHUNK_BYTES = 500
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "an",
    "were",
    "which",
    "this",
    "be",
    "are",
    "battery",
    "life",
    "wireless",
    "noise",
    "cancelling",
    "headphones",
    "sound",
    "quality",
    "comfortable",
    "design",
    "bluetooth",
    "charging",
    "case",
    "hours",
    "music",
    "travel",
    "bass",
    "microphone",
    "calls",
    "volume",
    "fit",
    "ear",
    "cushions",
    "premium",
    "product",
    "customer",
    "review",
    "shipping",
    "price",
    "warranty",
    "color",
    "black",
    "white",
    "silver",
    "weight",
    "compact",
    "portable",
    "durable",
    "material",
    "plastic",
    "metal",
    "leather",
    "fabric",
    "water",
    "resistant",
    "sport",
    "running",
    "gym",
]


def sentence(rng: random.Random, size: int) -> str:
    """English-like text of about ``size`` bytes."""
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def make_documents(count: int, seed: int = 7, prefix: str = "doc") -> list[document_pb2.Document]:
    """``count`` documents of 10 chunks of ~500 bytes, with a little metadata."""
    rng = random.Random(seed)
    documents = []
    for i in range(count):
        document = document_pb2.Document(id=f"{prefix}-{i:07d}")
        for j in range(CHUNKS_PER_DOCUMENT):
            chunk = document.chunks.add(id=f"{prefix}-{i:07d}-{j}", text=sentence(rng, CHUNK_BYTES))
            chunk.metadata.update({"page": j, "source": "bench"})
        documents.append(document)
    return documents


@dataclass
class Pair:
    """A running claimer + gateway."""

    gateway_address: str
    gateway_http: str
    claimer: ServiceProcess
    gateway: ServiceProcess


@dataclass
class Stack:
    """A running PostgreSQL + SeaweedFS + claimer + gateway (and, with ``secured``, a second
    claimer + gateway pair on the same PostgreSQL and S3 that serves mutual TLS)."""

    s3: SeaweedS3
    bucket: str
    gateway_address: str
    gateway_http: str
    claimer: ServiceProcess
    gateway: ServiceProcess
    postgres: PostgresServer
    secured: Pair | None = None
    setup: Secured | None = None
    """Certificates and token of the secured pair and its clients."""


@contextmanager
def running_pair(
    tmp: Path,
    name: str,
    database_url: str,
    s3_env: dict[str, str],
    claimer_env: dict[str, str],
    gateway_env: dict[str, str],
    credentials: grpc.ChannelCredentials | None = None,
) -> Iterator[Pair]:
    """A claimer and a gateway in front of it (``claimer_env`` and ``gateway_env`` last, so they
    override; health checks over TLS with ``credentials``); stopped at exit."""
    claimer_address = f"127.0.0.1:{free_port()}"
    claimer = ServiceProcess(
        "hevlayer-claimer",
        name=f"{name}claimer",
        env={
            "DATABASE_URL": database_url,
            "HEVLAYER_GRPC_ADDRESS": claimer_address,
            "HEVLAYER_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
            "HEVLAYER_LOG_LEVEL": "warning",
            **s3_env,
            **claimer_env,
        },
        log_path=tmp / f"{name}claimer.log",
        grpc_address=claimer_address,
    ).start()
    gateway_address = f"127.0.0.1:{free_port()}"
    gateway_http = f"127.0.0.1:{free_port()}"
    gateway = ServiceProcess(
        "hevlayer-gateway",
        name=f"{name}gateway",
        env={
            "CLAIMER_ADDRESS": claimer_address,
            "HEVLAYER_GRPC_ADDRESS": gateway_address,
            "HEVLAYER_HTTP_ADDRESS": gateway_http,
            "HEVLAYER_LOG_LEVEL": "warning",
            "GATEWAY_CACHE_DIR": str(tmp / f"{name}cache"),
            "GATEWAY_MILVUS_LITE_PATH": str(tmp / f"{name}vectors.db"),
            **s3_env,
            **gateway_env,
        },
        log_path=tmp / f"{name}gateway.log",
        grpc_address=gateway_address,
    )
    try:
        claimer.wait_ready(timeout=60, credentials=credentials)
        gateway.start()
        gateway.wait_ready(timeout=60, credentials=credentials)
        yield Pair(gateway_address, gateway_http, claimer, gateway)
    finally:
        gateway.stop(grace=10)
        claimer.stop(grace=10)


TMPFS = Path("/dev/shm")


@contextmanager
def running_stack(gateway_env: dict[str, str] | None = None, secured: bool = False) -> Iterator[Stack]:
    """Start everything in a temporary directory; stop it all at exit. With ``secured``, the
    second pair too, with the certificates of a :class:`Secured` in that directory, and both
    gateways' disk caches on tmpfs (:data:`TMPFS`, when there is one): on the disk of a busy
    machine, creating the cache's files (one per document) costs each gateway a different
    and changing amount of kernel time (ext4 inode allocation next to recently deleted
    files; up to ~150 core-microseconds per document, perf shows), far more than TLS costs,
    and would decide the secured / plaintext ratio."""
    with tempfile.TemporaryDirectory(prefix="hevlayer-bench-") as tmp_text:
        tmp = Path(tmp_text)
        with PostgresServer(settings=TEST_SETTINGS) as postgres, SeaweedS3() as s3, ExitStack() as pairs:
            database_url = postgres.create_database(f"bench_{uuid.uuid4().hex[:8]}")
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            s3.create_bucket(bucket)
            s3_env = s3.client_env(bucket)
            caches = tmp
            if secured and TMPFS.is_dir():
                caches = Path(
                    pairs.enter_context(tempfile.TemporaryDirectory(prefix="hevlayer-bench-", dir=TMPFS))
                )
            if secured:
                print(f"--secured: the gateways' disk caches are in {caches}")
            # The plaintext pair: no TLS, no API tokens, no internal token.
            plain = pairs.enter_context(
                running_pair(
                    tmp,
                    "",
                    database_url,
                    s3_env,
                    {"CLAIMER_AUTH": "off"},
                    {
                        "GATEWAY_AUTH": "off",
                        "GATEWAY_CACHE_DIR": str(caches / "cache"),
                        **(gateway_env or {}),
                    },
                )
            )
            stack = Stack(
                s3, bucket, plain.gateway_address, plain.gateway_http, plain.claimer, plain.gateway, postgres
            )
            if secured:
                setup = Secured.create(tmp / "pki", role="admin")
                stack.secured = pairs.enter_context(
                    running_pair(
                        tmp,
                        "secured-",
                        database_url,
                        s3_env,
                        setup.claimer_env(),
                        {
                            "GATEWAY_CACHE_DIR": str(caches / "secured-cache"),
                            **(gateway_env or {}),
                            **setup.gateway_env(),
                        },
                        setup.credentials("probe"),
                    )
                )
                stack.setup = setup
            yield stack


def scrape(http_address: str, name: str) -> dict[str, float]:
    """Samples of one metric of the gateway's /metrics, by label values."""
    with urllib.request.urlopen(f"http://{http_address}/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                values[",".join(sample.labels.values())] = sample.value
    return values


async def create_pipeline(
    channel: aio.Channel, pipeline_id: str, metadata: Sequence[tuple[str, str]] | None = None
) -> None:
    """Create ``pipeline_id`` with server defaults."""
    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
    await stub.CreatePipeline(
        pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(id=pipeline_id)), metadata=metadata
    )


async def stage_all(
    channel: aio.Channel,
    pipeline_id: str,
    documents: list[document_pb2.Document],
    batch: int,
    streams: int,
    metadata: Sequence[tuple[str, str]] | None = None,
) -> float:
    """Stage ``documents`` over ``streams`` StageDocuments streams (each call with
    ``metadata``); seconds taken."""
    stub = staging_pb2_grpc.StagingServiceStub(channel)
    parts = [documents[i::streams] for i in range(streams)]

    async def one_stream(part: list[document_pb2.Document]) -> None:
        async def requests() -> AsyncIterator[staging_pb2.StageDocumentsRequest]:
            for start in range(0, len(part), batch):
                yield staging_pb2.StageDocumentsRequest(
                    pipeline_id=pipeline_id, documents=part[start : start + batch]
                )

        staged = 0
        async for response in stub.StageDocuments(requests(), metadata=metadata):
            for result in response.results:
                if result.outcome != staging_pb2.STAGE_OUTCOME_STAGED:
                    raise RuntimeError(f"document {result.document_id} not staged: {result.error.message}")
                staged += 1
        if staged != len(part):
            raise RuntimeError(f"staged {staged} of {len(part)} documents")

    started = time.perf_counter()
    await asyncio.gather(*(one_stream(part) for part in parts))
    return time.perf_counter() - started


async def baseline_puts(s3: SeaweedS3, bucket: str, documents: list[document_pb2.Document]) -> float:
    """One object per document (the document's segment), 32 puts in flight; seconds taken."""
    settings = gateway_s3_settings(s3, bucket)
    codec = SegmentCodec("zstd")
    bodies = [(f"baseline/{d.id}", codec.encode(d)) for d in documents]
    async with AsyncExitStack() as stack:
        client = await open_s3_client(settings, stack)
        limit = asyncio.Semaphore(32)

        async def put(key: str, body: bytes) -> None:
            async with limit:
                await client.put_object(Bucket=bucket, Key=key, Body=body)

        started = time.perf_counter()
        await asyncio.gather(*(put(k, b) for k, b in bodies))
        return time.perf_counter() - started


def codec_figures(documents: list[document_pb2.Document]) -> None:
    """Bytes per document and encode time per document, zstd vs plain."""
    for compression in ("none", "zstd"):
        codec = SegmentCodec(compression)
        started = time.perf_counter()
        sizes = [len(codec.encode(d)) for d in documents]
        elapsed = time.perf_counter() - started
        segments = [codec.encode(d) for d in documents[:500]]
        started = time.perf_counter()
        for segment in segments:
            codec.decode(segment)
        decode = (time.perf_counter() - started) / len(segments)
        print(
            f"  codec {compression:5s}: {sum(sizes) / len(sizes):7.0f} bytes/document, "
            f"encode {elapsed / len(documents) * 1e6:5.0f} us, decode {decode * 1e6:5.0f} us per document"
        )


SECURED_PARTS = ("client", "gateway", "claimer", "PostgreSQL", "SeaweedFS")


def _part_cpu(stack: Stack, pair: Pair) -> dict[str, float]:
    """CPU seconds so far of each part a staging call runs through, ``pair`` being the one
    called (the client is this process: its gRPC threads included)."""
    return {
        "client": time.process_time(),
        "gateway": cpu_seconds(pair.gateway.pid),
        "claimer": cpu_seconds(pair.claimer.pid),
        "PostgreSQL": postgres_cpu_seconds(stack.postgres.data_dir),
        "SeaweedFS": cpu_seconds(stack.s3.pid),
    }


async def settle(stack: Stack, pair: Pair, quiet: float = 0.02, limit: float = 15.0) -> None:
    """Wait until the gateway, the claimer and SeaweedFS use less than ``quiet`` CPU
    seconds in a quarter of a second: the gateway writes its disk cache in the background
    after a StageDocuments call has answered, and that work belongs to the phase that
    caused it (its CPU is counted up to here), not to the next one."""
    pids = (pair.gateway.pid, pair.claimer.pid, stack.s3.pid)
    deadline = time.monotonic() + limit
    used = sum(cpu_seconds(pid) for pid in pids)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = sum(cpu_seconds(pid) for pid in pids)
        if now - used < quiet:
            return
        used = now


async def secured_comparison(
    stack: Stack, args: argparse.Namespace, documents: list[document_pb2.Document]
) -> list[str]:
    """``args.rounds`` rounds of staging ``documents`` through the plaintext pair and the
    secured one, back to back (the order alternating), each round into new pipelines;
    prints each round's rates; returns the lines of the summary (rates, ratios, CPU per
    document of each part)."""
    if stack.secured is None or stack.setup is None:
        raise ValueError("secured_comparison: the stack was started without secured=True")
    ca, chain, key = stack.setup.pem("worker")
    metadata = stack.setup.metadata()
    pairs = {
        "plaintext": Pair(stack.gateway_address, stack.gateway_http, stack.claimer, stack.gateway),
        "secured": stack.secured,
    }
    channels = {
        "plaintext": open_channel(stack.gateway_address),
        "secured": open_channel(
            stack.secured.gateway_address,
            ClientOptions(tls=TLS(root_certificates=ca, certificate_chain=chain, private_key=key)),
        ),
    }
    call_metadata = {"plaintext": None, "secured": metadata}
    rates: dict[str, list[float]] = {path: [] for path in pairs}
    cpu = {path: dict.fromkeys(SECURED_PARTS, 0.0) for path in pairs}
    try:
        await settle(stack, pairs["plaintext"])
        # the secured pair's warm-up (the plaintext one had its own before the first figures)
        await create_pipeline(channels["secured"], "warm-secured", metadata)
        warmup = make_documents(200, seed=1, prefix="warm")
        await stage_all(channels["secured"], "warm-secured", warmup, args.batch, args.streams, metadata)
        await settle(stack, pairs["secured"])
        for round_number in range(args.rounds):
            order = list(pairs) if round_number % 2 == 0 else list(reversed(pairs))
            for path in order:
                pipeline_id = f"{path}-{round_number}"
                await create_pipeline(channels[path], pipeline_id, call_metadata[path])
                before = _part_cpu(stack, pairs[path])
                seconds = await stage_all(
                    channels[path], pipeline_id, documents, args.batch, args.streams, call_metadata[path]
                )
                await settle(stack, pairs[path])
                after = _part_cpu(stack, pairs[path])
                for part in SECURED_PARTS:
                    cpu[path][part] += after[part] - before[part]
                rates[path].append(len(documents) * CHUNKS_PER_DOCUMENT / seconds)
            print(
                "secured path round: "
                + ", ".join(f"{path} {rates[path][-1]:,.0f} chunks/s" for path in pairs),
                flush=True,
            )
    finally:
        for channel in channels.values():
            await channel.close()
    median = {path: statistics.median(values) for path, values in rates.items()}
    staged = len(documents) * args.rounds
    per_document = {path: sum(parts.values()) / staged for path, parts in cpu.items()}
    paired = statistics.median(x / y for x, y in zip(rates["secured"], rates["plaintext"], strict=True))
    lines = [
        f"secured path: {args.rounds} rounds of {len(documents)} documents per pair "
        "(plaintext and secured back to back, order alternating; medians)",
        f"  plaintext (client -> gateway -> claimer, no TLS): {median['plaintext']:8.0f} chunks/s",
        f"  secured (mutual TLS on both hops + authorization header): {median['secured']:8.0f} chunks/s",
        f"ratio secured / plaintext: {median['secured'] / median['plaintext']:.2f} (goal >= {SECURED_GOAL}); "
        f"median of the rounds' ratios {paired:.2f}; "
        f"CPU per document, plaintext / secured: {per_document['plaintext'] / per_document['secured']:.2f}",
        "CPU per document (core-microseconds):",
    ]
    for path, parts in cpu.items():
        lines.append(
            f"  {path}: {per_document[path] * 1e6:.0f} = "
            + " + ".join(f"{name} {seconds / staged * 1e6:.0f}" for name, seconds in parts.items())
        )
    return lines


async def run(args: argparse.Namespace) -> None:
    documents = make_documents(args.documents)
    warmup = make_documents(200, seed=1, prefix="warm")
    baseline_docs = make_documents(args.baseline_documents, seed=3, prefix="base")
    print(
        f"staging {len(documents)} documents x {CHUNKS_PER_DOCUMENT} chunks x ~{CHUNK_BYTES} bytes, "
        f"batches of {args.batch} documents, {args.streams} stream(s), compression {args.compression}"
    )
    codec_figures(documents[:2000])
    with running_stack({"GATEWAY_PACK_COMPRESSION": args.compression}, secured=args.secured) as stack:
        channel = open_channel(stack.gateway_address)
        try:
            await create_pipeline(channel, "bench")
            await stage_all(channel, "bench", warmup, args.batch, args.streams)
            before = scrape(stack.gateway_http, "hevlayer_gateway_s3_requests_total")
            seconds = await stage_all(channel, "bench", documents, args.batch, args.streams)
            after = scrape(stack.gateway_http, "hevlayer_gateway_s3_requests_total")
            restage = await stage_all(
                channel, "bench", documents[: len(documents) // 2], args.batch, args.streams
            )
            after_restage = scrape(stack.gateway_http, "hevlayer_gateway_s3_requests_total")
        finally:
            await channel.close()
        base_seconds = await baseline_puts(stack.s3, stack.bucket, baseline_docs)
        secured_lines = await secured_comparison(stack, args, documents) if args.secured else []

    chunks = len(documents) * CHUNKS_PER_DOCUMENT
    rate = chunks / seconds
    requests = {op: after.get(op, 0) - before.get(op, 0) for op in sorted(after)}
    restage_requests = {op: after_restage.get(op, 0) - after.get(op, 0) for op in sorted(after_restage)}
    base_rate = len(baseline_docs) * CHUNKS_PER_DOCUMENT / base_seconds
    print(
        f"StageDocuments: {rate:8.0f} chunks/s ({len(documents) / seconds:.0f} documents/s, {seconds:.2f} s)"
    )
    print(
        f"  S3 requests per document: {sum(requests.values()) / len(documents):.4f} "
        f"({', '.join(f'{op} {int(n)}' for op, n in requests.items() if n)})"
    )
    half = len(documents) // 2
    print(
        f"  re-staging {half} documents: {half * CHUNKS_PER_DOCUMENT / restage:8.0f} chunks/s, "
        f"S3 requests per document {sum(restage_requests.values()) / half:.4f} "
        f"({', '.join(f'{op} {int(n)}' for op, n in restage_requests.items() if n)})"
    )
    print(
        f"baseline, one aiobotocore put per document (32 in flight): {base_rate:8.0f} chunks/s "
        f"({len(baseline_docs) / base_seconds:.0f} puts/s)"
    )
    print(f"ratio StageDocuments / baseline: {rate / base_rate:.1f}x")
    goal = 5000
    print(f"goal >= {goal} chunks/s: {'met' if rate >= goal else 'NOT met'}")
    for line in secured_lines:
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--documents", type=int, default=5000)
    parser.add_argument("--baseline-documents", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100, help="documents per StageDocuments message")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--compression", choices=["zstd", "none"], default="zstd")
    parser.add_argument(
        "--secured",
        action="store_true",
        help="then the secured path (mutual TLS + authorization header) against the plaintext one",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --secured: rounds of each path (medians)")
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
