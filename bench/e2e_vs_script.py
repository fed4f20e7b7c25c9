"""End to end against a script: ``hevlayer add`` on the running suite against the script a user would write.

The same files go through two paths, back to back, ``--rounds`` times with the order alternating
(script first in odd rounds, suite first in even ones), so that both sides see the same load from
whatever else runs on the machine:

- **suite**: the local suite the way ``make run`` brings it up (``hevlayer up --detach`` on a
  temporary data directory: PostgreSQL, SeaweedFS S3, Triton serving all-MiniLM-L6-v2 on the CPU,
  the embedder, the claimer, the gateway with Milvus Lite, the embedder worker; the summarizer is
  left out), then ``hevlayer add -p <a new pipeline> --artifact-cache-mb 0 CORPUS``, which returns
  once every document is ``indexed``. The time is ``add``'s own clock (its ``took N s`` line: from
  connecting to the gateway until the last document is indexed; the CLI's imports are not in it).
- **script**: the obvious in-process script, run as its own process (``python
  bench/e2e_vs_script.py script ...``): read each file, cut it into ``--chunk-chars`` (800)
  character chunks, tokenize each batch of ``--batch`` (64) chunks with the model's tokenizer
  (truncated at 256 tokens, padded to the batch's longest, as ``tokenizer(batch, padding=True,
  truncation=True)`` does), run the same int8 ONNX file that Triton serves here
  (``hevlayer.triton.onnx_model.minilm_files``) with onnxruntime's default session options,
  mean-pool, L2-normalize, and insert each batch into Milvus Lite (``pymilvus.MilvusClient`` on a
  local ``.db`` file) with the chunk's text and path. Its clock runs from creating the collection
  to the last insert (loading the model and opening the file are not in it; the suite's Triton has
  its model loaded too).

Per round and side: files/s, chunks/s, tokens sent to the model per second (real tokens, and with
the padding each side adds), and the CPU seconds of every process of the side (from ``/proc``: the
suite's services, PostgreSQL and the ``add`` client; the script's process and Milvus Lite's server
within the script's clock: loading the model is left out on both sides), with files per CPU
second of the side's own processes: on a machine shared with other work, how much CPU each side
gets moves its files/s, and the per-CPU figure shows what each side costs. For the suite also the
model's busy share (Triton's own statistics: compute time of the model ÷ the run's wall time; the
rest of the time the model waited for work), the average Triton batch, and the embedder worker's
stage timings.

Coverage: both paths embed the text within the model's 256-token window only. Per side, the share
of the corpus' non-whitespace characters that lie within some chunk's first 256 tokens (the
suite's chunks are hevlayer's: a context line, then a body of what the window leaves, in the
model's tokens, with a 28-token overlap; computed with the same producers and budget ``add``
runs, so the suite's figures are what it embeds), the chunks longer than the window, and the
CPU time of cutting the corpus into chunks. The suite's padded-token count is modelled: each
flush of ``--batch`` consecutive chunks is sorted by length and cut into runs of at most
``max_batch_tokens`` padded tokens, as ``OnnxEmbedder.embed`` does inside Triton.

``--count-only`` stops there (no suite, no model); with ``--regex-budget`` the suite's chunks are
counted with the budget before the model's tokens were counted (200 ``TOKEN`` units, 24 overlap),
and ``--recall`` adds recall@5 of ``make run``'s labelled queries on the suite's chunks, embedded
in this process with the ONNX file Triton serves (best chunk per document, as ``hevlayer search``
ranks), which takes minutes of CPU.

    .venv/bin/python bench/e2e_vs_script.py                  # the make run corpus, 3 rounds
    .venv/bin/python bench/e2e_vs_script.py --files 40 --rounds 2   # a quick run
    .venv/bin/python bench/e2e_vs_script.py --count-only [--regex-budget] [--recall]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

import numpy as np
from extract import TOOK, Suite, check_ours, stage_counts
from memory import QUERIES, make_run_corpus, postmaster_pid
from pipeline_efficiency import cpu_seconds, scrape

from hevlayer.cli import corpus as corpus_module
from hevlayer.cli.stack import UpState
from hevlayer.ingest.producers import DEFAULT_BUDGET, Budget, Chunk, detect_kind, select_producer
from hevlayer.ingest.producers.base import REGEX_BUDGET, Source, decode_text
from hevlayer.triton.local import DEFAULT_MODEL_NAME
from hevlayer.triton.onnx_model import OnnxEmbedder, RuntimeOptions, mean_pool_normalize, minilm_files

BENCH = Path(__file__).resolve()
BIN = Path(sys.executable).parent
HEVLAYER = BIN / "hevlayer"

DIMENSION = 384
NON_SPACE = re.compile(r"\S")


# -- the script ------------------------------------------------------------------------------------


def script_chunks(text: str, size: int) -> list[tuple[int, str]]:
    """``text`` cut into ``size``-character pieces: (offset, piece); blank pieces left out."""
    return [
        (start, text[start : start + size])
        for start in range(0, len(text), size)
        if text[start : start + size].strip()
    ]


def run_script(corpus: Path, db: Path, chunk_chars: int, batch: int) -> dict[str, float]:
    """The obvious script, timed (see the module docstring). Returns its figures."""
    import onnxruntime as ort
    from pymilvus import MilvusClient
    from tokenizers import Tokenizer

    files = minilm_files()
    tokenizer = Tokenizer.from_file(str(files.tokenizer_path))
    tokenizer.enable_truncation(max_length=files.max_length)
    tokenizer.enable_padding()  # to the longest of each batch
    session = ort.InferenceSession(str(files.onnx_path), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    client = MilvusClient(str(db))
    paths = sorted(p for p in corpus.rglob("*") if p.is_file())

    roots = {os.getpid(): "script"}  # with its children: Milvus Lite's server
    cpu_before = cpu_seconds(roots)["script"]
    started = time.perf_counter()
    client.create_collection("chunks", dimension=DIMENSION, auto_id=True, enable_dynamic_field=True)
    pending: list[tuple[str, str]] = []
    chunks = real = padded = 0

    def flush() -> None:
        nonlocal real, padded
        encodings = tokenizer.encode_batch([text for _, text in pending])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        real += int(mask.sum())
        padded += int(mask.size)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(session.run(None, feeds)[0], dtype=np.float32)
        vectors = mean_pool_normalize(hidden, mask)
        client.insert(
            "chunks",
            [
                {"vector": vector.tolist(), "text": text, "path": path}
                for (path, text), vector in zip(pending, vectors, strict=True)
            ],
        )
        pending.clear()

    for path in paths:
        text = decode_text(path.read_bytes())
        for _, piece in script_chunks(text, chunk_chars):
            pending.append((str(path.relative_to(corpus)), piece))
            chunks += 1
            if len(pending) == batch:
                flush()
    if pending:
        flush()
    seconds = time.perf_counter() - started
    cpu = cpu_seconds(roots)["script"] - cpu_before
    client.close()
    return {
        "seconds": seconds,
        "files": len(paths),
        "chunks": chunks,
        "real": real,
        "padded": padded,
        "cpu": cpu,
    }


# -- what each side embeds -------------------------------------------------------------------------


@dataclass
class Coverage:
    """Characters of the corpus within the model's window, chunks and tokens of one side."""

    chunks: int = 0
    real: int = 0
    """Tokens sent to the model without padding ([CLS] and [SEP] included)."""
    padded: int = 0
    """Tokens with the padding the side adds."""
    covered: int = 0
    total: int = 0
    """Non-whitespace characters: within the window, and in the corpus."""
    over: int = 0
    """Chunks longer than the window (before truncation)."""
    cut: int = 0
    """Tokens the truncation drops from those chunks."""
    chunk_seconds: float = 0.0
    """CPU seconds of cutting the corpus into chunks (the producers, for the suite)."""
    files: int = 0

    @property
    def share(self) -> float:
        return self.covered / self.total if self.total else 0.0


def union_non_space(text: str, spans: list[tuple[int, int]], counts: list[int]) -> int:
    """Non-whitespace characters of ``text`` inside the union of ``spans``; ``counts`` is the prefix
    count of non-whitespace characters (``counts[i]`` = those before offset ``i``)."""
    covered = 0
    end_so_far = 0
    for start, end in sorted(spans):
        start = max(start, end_so_far)
        if end > start:
            covered += counts[end] - counts[start]
            end_so_far = end
    return covered


def prefix_counts(text: str) -> list[int]:
    counts = [0] * (len(text) + 1)
    running = 0
    for index, char in enumerate(text):
        counts[index] = running
        running += not char.isspace()
    counts[len(text)] = running
    return counts


def window_end(tokenizer_offsets: list[tuple[int, int]]) -> int:
    """The end (character offset) of the last real token an encoding kept."""
    ends = [end for start, end in tokenizer_offsets if end > start]
    return max(ends) if ends else 0


def suite_runs(lengths: Sequence[int], batch: int, max_batch_tokens: int) -> int:
    """Padded tokens of ``OnnxEmbedder.embed`` over flushes of ``batch`` consecutive texts."""
    padded = 0
    for first in range(0, len(lengths), batch):
        ordered = sorted(lengths[first : first + batch], reverse=True)
        start = 0
        while start < len(ordered):
            size = max(1, max_batch_tokens // max(ordered[start], 1))
            run = ordered[start : start + size]
            padded += len(run) * run[0]
            start += len(run)
    return padded


def coverage(
    corpus: Path,
    chunk_chars: int,
    batch: int,
    budget: Budget = DEFAULT_BUDGET,
    keep: list[Chunk] | None = None,
) -> tuple[Coverage, Coverage]:
    """What the script and the suite embed of the corpus: (script, suite); the suite's chunks with
    ``budget`` (``add``'s default), appended to ``keep`` when given."""
    from tokenizers import Tokenizer

    files = minilm_files()
    tokenizer = Tokenizer.from_file(str(files.tokenizer_path))
    tokenizer.enable_truncation(max_length=files.max_length)
    tokenizer.no_padding()
    whole = Tokenizer.from_file(str(files.tokenizer_path))  # untruncated: what the window cuts off
    whole.no_truncation()
    whole.no_padding()

    def overflow(side: Coverage, texts: list[str]) -> None:
        for encoding in whole.encode_batch(texts):
            if len(encoding.ids) > files.max_length:
                side.over += 1
                side.cut += len(encoding.ids) - files.max_length

    script, suite = Coverage(), Coverage()
    script_lengths: list[int] = []
    suite_lengths: list[int] = []
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        data = path.read_bytes()
        text = decode_text(data)
        counts = prefix_counts(text)
        for side in (script, suite):
            side.total += counts[len(text)]
        # The script's chunks.
        started = time.process_time()
        pieces = script_chunks(text, chunk_chars)
        script.chunk_seconds += time.process_time() - started
        script.files += 1
        overflow(script, [p for _, p in pieces])
        spans = []
        for (start, _piece), encoding in zip(
            pieces, tokenizer.encode_batch([p for _, p in pieces]), strict=True
        ):
            script_lengths.append(len(encoding.ids))
            spans.append((start, start + window_end(encoding.offsets)))
        script.covered += union_non_space(text, spans, counts)
        script.chunks += len(pieces)
        # The suite's chunks, from the producer add runs on this file.
        name = path.relative_to(corpus).as_posix()
        kind = detect_kind(name, data[:4096])
        if kind is None:
            continue
        started = time.process_time()
        produced = select_producer(kind).produce(Source(str(path), name, data), budget)
        if keep is not None:
            keep.extend(produced)
        suite.chunk_seconds += time.process_time() - started
        suite.files += 1
        overflow(suite, [c.text for c in produced])
        spans = []
        for chunk, encoding in zip(produced, tokenizer.encode_batch([c.text for c in produced]), strict=True):
            suite_lengths.append(len(encoding.ids))
            head = len(chunk.text) - len(chunk.body)
            kept = max(0, min(len(chunk.body), window_end(encoding.offsets) - head))
            spans.append((chunk.start, chunk.start + kept))
        suite.covered += union_non_space(text, spans, counts)
        suite.chunks += len(produced)
    script.real = sum(script_lengths)
    script.padded = sum(
        len(script_lengths[i : i + batch]) * max(script_lengths[i : i + batch])
        for i in range(0, len(script_lengths), batch)
    )
    suite.real = sum(suite_lengths)
    suite.padded = suite_runs(suite_lengths, batch, RuntimeOptions.max_batch_tokens)
    return script, suite


def offline_recall(
    chunks: Sequence[Chunk], k: int = 5, depth: int = 20
) -> tuple[float, float, float, list[str]]:
    """recall@k of ``make run``'s labelled queries over ``chunks``, without the suite: the chunks'
    embedded texts and the queries go through the same ONNX model in this process (the vectors
    Triton would give), chunks are ranked by cosine, the best chunk per document kept, and the
    first ``k`` documents scored as ``make run`` scores them. Returns recall@k, recall@1, the mean
    reciprocal rank of the first relevant document within ``depth`` (finer than recall@5 with 17
    queries) and the queries recall@k misses."""
    labelled = corpus_module.load_queries(QUERIES)
    embedder = OnnxEmbedder(minilm_files(), RuntimeOptions())
    vectors = np.concatenate(
        [embedder.embed([c.text for c in chunks[i : i + 256]]) for i in range(0, len(chunks), 256)]
    )
    queries = embedder.embed([q.query for q in labelled])
    ranked: dict[str, list[str]] = {}
    reciprocal: list[float] = []
    for query, vector in zip(labelled, queries, strict=True):
        order = np.argsort(-(vectors @ vector), kind="stable")
        documents: list[str] = []
        for position in order:
            relative = str(chunks[position].metadata["path"])  # the name relative to the corpus
            if relative not in documents:
                documents.append(relative)
                if len(documents) == depth:
                    break
        ranked[query.query] = documents
        first = next(
            (
                rank
                for rank, path in enumerate(documents, start=1)
                if any(corpus_module.matches(path, module) for module in query.relevant)
            ),
            None,
        )
        reciprocal.append(1 / first if first else 0.0)
    recall, missed = corpus_module.recall_at_k(labelled, ranked, k=k)
    at_one, _ = corpus_module.recall_at_k(labelled, ranked, k=1)
    return recall, at_one, statistics.mean(reciprocal), [q.query for q in missed]


# -- the suite -------------------------------------------------------------------------------------


def bring_up(data_dir: Path) -> tuple[Suite, UpState]:
    """``hevlayer up --detach`` as ``make run`` does it (authentication off, no summarizer)."""
    env = {**os.environ, "GATEWAY_AUTH": "off", "GRPC_VERBOSITY": "ERROR"}
    argv = [str(HEVLAYER), "--data-dir", str(data_dir), "up", "--detach", "--no-summarizer"]
    started = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    state = UpState.read(data_dir)
    if started.returncode != 0 or state is None:
        log = data_dir / "logs" / "up.log"
        detail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
        raise SystemExit(f"hevlayer up failed ({started.returncode}): {started.stderr}\n{detail}")
    return Suite(data_dir, state.gateway, env), state


def suite_roots(suite: Suite, state: UpState) -> dict[int, str]:
    """pid → component for :func:`cpu_seconds`: every supervised service, PostgreSQL."""
    roots = {
        int(record["pid"]): name
        for name, record in state.supervision.items()
        if record.get("pid") and name != "postgres"
    }
    postmaster = postmaster_pid(suite.data_dir)
    if postmaster is not None:
        roots[postmaster] = "postgres"
    return roots


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def triton_statistics(url: str) -> dict[str, float]:
    """The model's cumulative counts and nanoseconds from Triton's statistics extension."""
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient(url)
    try:
        raw = client.get_inference_statistics(model_name=DEFAULT_MODEL_NAME, as_json=True)
    finally:
        client.close()
    stats = raw["model_stats"][0]
    inference = stats["inference_stats"]
    return {
        "executions": float(stats.get("execution_count", 0)),
        "inferences": float(stats.get("inference_count", 0)),
        **{f"{key}_s": int(inference.get(key, {}).get("ns", 0)) / 1e9 for key in inference},
    }


@dataclass
class Round:
    """One side's run."""

    seconds: float
    files: int
    chunks: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    model: dict[str, float] = field(default_factory=dict)
    worker: dict[str, float] = field(default_factory=dict)

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds

    @property
    def own_cpu(self) -> float:
        """CPU seconds of the side's own processes (the rest of the machine left out)."""
        return sum(v for k, v in self.cpu.items() if k != "other")

    @property
    def files_per_cpu_second(self) -> float:
        return self.files / self.own_cpu if self.own_cpu > 0 else 0.0


def run_suite(suite: Suite, state: UpState, corpus: Path, files: int, roots: dict[int, str]) -> Round:
    pipeline_id = f"e2e-{uuid4().hex[:6]}"
    triton = state.services["triton"]
    worker_http = state.http.get("embedder-worker", "")
    model_before = triton_statistics(triton)
    worker_before = scrape(worker_http) if worker_http else {}
    cpu_before = cpu_seconds(roots)
    argv = [
        str(HEVLAYER), "--data-dir", str(suite.data_dir), "--gateway", suite.gateway,
        "add", "-p", pipeline_id, "--plain", "--artifact-cache-mb", "0", str(corpus),
    ]  # fmt: skip
    client_before = children_cpu()
    process = subprocess.Popen(
        argv, env=suite.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output, _ = process.communicate(timeout=3600)
    cpu_after = cpu_seconds(roots)
    client = children_cpu() - client_before
    if process.returncode != 0:
        raise SystemExit(f"hevlayer add ({pipeline_id}) failed: {output[-3000:]}")
    took = TOOK.search(output)
    if took is None:
        raise SystemExit(f"hevlayer add ({pipeline_id}) printed no 'took N s' line: {output[-3000:]}")
    import asyncio

    counts = asyncio.run(stage_counts(suite.gateway, pipeline_id))
    if counts.get("indexed", 0) != files:
        raise SystemExit(f"{pipeline_id}: expected {files} documents indexed, stages {counts}")
    model_after = triton_statistics(triton)
    worker_after = scrape(worker_http) if worker_http else {}
    return Round(
        seconds=float(took.group(1)),
        files=files,
        cpu={k: cpu_after.get(k, 0.0) - cpu_before.get(k, 0.0) for k in cpu_after}
        | {"add (client)": client, "other": cpu_after["other"] - cpu_before["other"] - client},
        model={k: model_after[k] - model_before.get(k, 0.0) for k in model_after},
        worker={k: worker_after[k] - worker_before.get(k, 0.0) for k in worker_after},
    )


def run_script_side(corpus: Path, work: Path, args: argparse.Namespace) -> Round:
    db = work / f"script-{uuid4().hex[:6]}.db"
    argv = [
        sys.executable, str(BENCH), "script", str(corpus), str(db),
        "--chunk-chars", str(args.chunk_chars), "--batch", str(args.batch),
    ]  # fmt: skip
    before = cpu_seconds({})
    script_before = children_cpu()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    output, _ = process.communicate(timeout=3600)
    if process.returncode != 0:
        raise SystemExit(f"the script failed ({process.returncode})")
    figures = json.loads(output.strip().splitlines()[-1])
    after = cpu_seconds({})
    script = children_cpu() - script_before
    for path in work.glob(f"{db.name}*"):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return Round(
        seconds=figures["seconds"],
        files=int(figures["files"]),
        chunks=int(figures["chunks"]),
        cpu={"script": figures["cpu"], "other": after["other"] - before["other"] - script},
    )


# -- report ----------------------------------------------------------------------------------------


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def round_line(side: str, result: Round, cover: Coverage) -> str:
    return (
        f"  {side:<6} {result.seconds:7.1f} s  {result.files_per_second:6.2f} files/s"
        f"  {cover.chunks / result.seconds:6.1f} chunks/s"
        f"  {cover.real / result.seconds:7.0f} tokens/s ({cover.padded / result.seconds:7.0f} padded)"
        f"  {result.own_cpu:6.1f} CPU s ({result.files_per_cpu_second:.3f} files per CPU s)"
    )


def suite_detail(result: Round) -> str:
    model = result.model
    compute = model.get("compute_infer_s", 0.0)
    busy = compute + model.get("compute_input_s", 0.0) + model.get("compute_output_s", 0.0)
    executions = model.get("executions", 0.0) or 1.0
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(result.cpu.items(), key=lambda kv: -kv[1]) if v >= 0.1)
    worker = result.worker
    embed_busy = worker.get("hevlayer_embedder_worker_embed_busy_seconds_total{}", 0.0)
    stages = ", ".join(
        f"{stage} {worker.get(f'hevlayer_embedder_worker_stage_seconds_sum{{stage={stage}}}', 0.0):.1f}"
        for stage in ("read", "embed", "write")
    )
    return (
        f"         model busy {busy:.1f} s of {result.seconds:.1f} ({busy / result.seconds:.0%}; idle "
        f"{1 - busy / result.seconds:.0%}), {model.get('executions', 0):.0f} executions of "
        f"{model.get('inferences', 0) / executions:.1f} texts, queue {model.get('queue_s', 0.0):.1f} s; "
        f"worker: a flush in flight {embed_busy:.1f} s, stage seconds {stages}\n"
        f"         CPU s: {cpu}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["script"]:
        parser = argparse.ArgumentParser(prog="e2e_vs_script.py script")
        parser.add_argument("corpus", type=Path)
        parser.add_argument("db", type=Path)
        parser.add_argument("--chunk-chars", type=int, default=800)
        parser.add_argument("--batch", type=int, default=64)
        options = parser.parse_args(arguments[1:])
        figures = run_script(options.corpus, options.db, options.chunk_chars, options.batch)
        print(json.dumps(figures))
        return 0

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=0, help="the first N files of the corpus (0: all)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the order alternating")
    parser.add_argument("--chunk-chars", type=int, default=800, help="the script's chunk size in characters")
    parser.add_argument("--batch", type=int, default=64, help="the script's batch (the suite's is 64 too)")
    parser.add_argument("--keep", action="store_true", help="leave the suite running and its data")
    parser.add_argument(
        "--count-only",
        action="store_true",
        help="only count what each side embeds (chunks, tokens, coverage; no suite, no model)",
    )
    parser.add_argument(
        "--regex-budget",
        action="store_true",
        help="with --count-only: the suite's chunks with the old budget (200 TOKEN units, 24 overlap)",
    )
    parser.add_argument(
        "--recall",
        action="store_true",
        help="with --count-only: also recall@5 of make run's queries on the suite's chunks, embedded "
        "in this process with the same ONNX model (no suite; minutes of CPU)",
    )
    args = parser.parse_args(arguments)

    work = Path(tempfile.mkdtemp(prefix="hevlayer-e2e-", dir="/tmp"))
    corpus, files, _tokens = make_run_corpus(work / "corpus")
    if args.files:
        chosen = sorted(p for p in corpus.rglob("*") if p.is_file())
        for path in chosen[args.files :]:
            path.unlink()
        files = min(files, args.files)
    print(f"corpus: {files} files in {corpus}")
    print(f"machine: {os.cpu_count()} CPUs, load average at start {load()}", flush=True)
    budget = REGEX_BUDGET if args.count_only and args.regex_budget else DEFAULT_BUDGET
    print(f"suite's budget: {budget}")
    kept: list[Chunk] = []
    script_cover, suite_cover = coverage(corpus, args.chunk_chars, args.batch, budget, kept)
    for side, cover in (("script", script_cover), ("suite", suite_cover)):
        print(
            f"{side:<6}: {cover.chunks} chunks, {cover.real:,} tokens to the model "
            f"({cover.padded:,} with padding{'' if side == 'script' else ', modelled'}), "
            f"coverage {cover.share:.1%} of {cover.total:,} non-whitespace characters"
        )
        print(
            f"        {cover.over} chunks ({cover.over / max(cover.chunks, 1):.1%}) over the "
            f"{minilm_files().max_length}-token window, {cover.cut:,} tokens cut off; chunking "
            f"{cover.chunk_seconds:.2f} CPU s "
            f"({1000 * cover.chunk_seconds / max(cover.files, 1):.1f} ms per file)"
        )
    if args.count_only:
        if args.recall:
            started = time.perf_counter()
            recall, at_one, mrr, missed = offline_recall(kept)
            print(
                f"recall@5 {recall:.2f}, recall@1 {at_one:.2f}, MRR@20 {mrr:.3f} "
                f"(in-process, {time.perf_counter() - started:.0f} s)"
            )
            for query in missed:
                print(f"  missed: {query!r}")
        shutil.rmtree(work, ignore_errors=True)
        return 0
    suite, state = bring_up(work / "data")
    print(f"suite up: {work / 'data'}, gateway {suite.gateway}, load average {load()}", flush=True)
    import asyncio

    results: dict[str, list[Round]] = {"script": [], "suite": []}
    try:
        asyncio.run(check_ours(suite.gateway))
        roots = suite_roots(suite, state)
        for index in range(args.rounds):
            order = ("script", "suite") if index % 2 == 0 else ("suite", "script")
            print(f"round {index + 1}/{args.rounds} (load average {load()})", flush=True)
            for side in order:
                if side == "script":
                    result = run_script_side(corpus, work, args)
                    results[side].append(result)
                    print(round_line(side, result, script_cover), flush=True)
                    cpu = ", ".join(f"{k} {v:.1f}" for k, v in result.cpu.items())
                    print(
                        f"         CPU s: {cpu} (script: within its clock, Milvus Lite's server included)",
                        flush=True,
                    )
                else:
                    result = run_suite(suite, state, corpus, files, roots)
                    results[side].append(result)
                    print(round_line(side, result, suite_cover), flush=True)
                    print(suite_detail(result), flush=True)
            suite_round, script_round = results["suite"][-1], results["script"][-1]
            ratio = suite_round.files_per_second / script_round.files_per_second
            per_cpu = suite_round.files_per_cpu_second / script_round.files_per_cpu_second
            print(
                f"  ratio suite/script: files/s {ratio:.2f}, files per CPU second {per_cpu:.2f}", flush=True
            )
    finally:
        if not args.keep:
            subprocess.run(
                [str(HEVLAYER), "--data-dir", str(work / "data"), "down"],
                env=suite.env,
                capture_output=True,
                timeout=300,
            )
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"suite left running: {HEVLAYER} --data-dir {work / 'data'} down")

    ratios = [
        s.files_per_second / c.files_per_second
        for s, c in zip(results["suite"], results["script"], strict=True)
    ]
    cpu_ratios = [
        s.files_per_cpu_second / c.files_per_cpu_second
        for s, c in zip(results["suite"], results["script"], strict=True)
    ]
    script_rate = statistics.median(r.files_per_second for r in results["script"])
    suite_rate = statistics.median(r.files_per_second for r in results["suite"])
    print(f"\nload average at end {load()}")
    print(
        f"median files/s: script {script_rate:.2f}, suite {suite_rate:.2f}; ratio suite/script per round "
        f"{', '.join(f'{r:.2f}' for r in ratios)}, median {statistics.median(ratios):.2f} "
        f"(coverage script {script_cover.share:.1%}, suite {suite_cover.share:.1%})"
    )
    print(
        f"files per CPU second of the side's own processes, ratio suite/script per round "
        f"{', '.join(f'{r:.2f}' for r in cpu_ratios)}, median {statistics.median(cpu_ratios):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
