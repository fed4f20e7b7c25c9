"""Memory of the whole suite during ``hevlayer add``: every process's RSS, peak and at the end.

Brings the local suite up the way ``make run`` does (``hevlayer up --detach``
with its data directory in /tmp: PostgreSQL, SeaweedFS S3, Triton with the
embedding model, the embedder, the claimer, the gateway with Milvus Lite, the
embedder worker), runs ``hevlayer add`` on a corpus and samples every
process of the suite from ``/proc`` every ``--interval`` seconds: the
descendants of the ``up`` process (Triton's server and its Python-backend stub
``triton_python_backend_stub`` included), the PostgreSQL postmaster and its
backends (``pg_ctl`` daemonizes them), and the ``hevlayer add`` client.

Per process (grouped by service; PostgreSQL's processes are one row): the peak
RSS (the kernel's high-water mark ``VmHWM``, summed over the group's
processes), RSS when ``add`` returned, and the peak and final PSS
(``/proc/PID/smaps_rollup``: shared pages divided among the processes that map
them; PostgreSQL's backends all map its shared buffers, so their RSS adds up to
more than the memory they use). Totals: the largest sum of RSS and of PSS over
all processes at any one sample, without and with the ``add`` client.

Corpus: by default the ``make run`` corpus (the standard library files that
``hevlayer demo`` picks, about 200 files). ``--files N`` writes N files of
about ``--file-tokens`` tokens each, cut from the standard library source, each
one distinct, to compare a small and a large corpus: the suite's memory must
not grow with the corpus (``--files 200`` against ``--files 2000``).

    .venv/bin/python bench/memory.py                   # the make run corpus, as in docs/benchmarks.md
    .venv/bin/python bench/memory.py --files 200 --file-tokens 40
    .venv/bin/python bench/memory.py --files 2000 --file-tokens 40

``--timeout SECONDS`` stops ``hevlayer add`` after that long (a slow, loaded
machine): the table then covers that part of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hevlayer.cli import corpus as corpus_module
from hevlayer.cli.stack import STATE_FILE
from hevlayer.ingest.producers.base import TokenIndex, decode_text

ROOT = Path(__file__).resolve().parent.parent
HEVLAYER = [sys.executable, "-m", "hevlayer.cli"]
QUERIES = ROOT / "tests" / "cli" / "queries.json"


# -- /proc -----------------------------------------------------------------------------------------


def read_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process in KiB (empty if it is gone)."""
    values: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return values
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def read_pss(pid: int) -> int:
    """Proportional set size in KiB (0 if unreadable)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def children_map() -> dict[int, list[int]]:
    """ppid → child pids of every process on the machine."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        # comm may hold spaces and parentheses: the fields after the last ')' are fixed.
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        for child in children.get(current, []):
            found.append(child)
            stack.append(child)
    return found


def comm(pid: int) -> str:
    """The program's name: argv[0]'s base name (``comm`` is cut at 15 characters)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "?"
    if argv0.startswith("postgres:"):
        return argv0
    return Path(argv0).name or "?"


def postmaster_pid(data_dir: Path) -> int | None:
    """The PostgreSQL postmaster of the suite (first line of ``postmaster.pid`` under the data dir)."""
    for path in data_dir.rglob("postmaster.pid"):
        try:
            return int(path.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            continue
    return None


# -- sampling --------------------------------------------------------------------------------------


@dataclass
class Group:
    """One row of the table: a service's processes."""

    pids: set[int] = field(default_factory=set)
    hwm: dict[int, int] = field(default_factory=dict)
    """Per pid, the last VmHWM seen (KiB)."""
    peak_rss: int = 0
    peak_pss: int = 0
    rss: int = 0
    pss: int = 0


@dataclass
class Sampler:
    data_dir: Path
    client_pid: int | None = None
    groups: dict[str, Group] = field(default_factory=dict)
    peak_total_rss: int = 0
    peak_total_pss: int = 0
    peak_suite_rss: int = 0
    peak_suite_pss: int = 0
    samples: int = 0

    def labelled(self) -> dict[int, str]:
        """pid → row label for every process of the suite now."""
        state = json.loads((self.data_dir / STATE_FILE).read_text())
        children = children_map()
        labels: dict[int, str] = {}
        up_pid = int(state["pid"])
        labels[up_pid] = "hevlayer up (supervisor)"
        for name, record in state.get("supervision", {}).items():
            pid = record.get("pid")
            if not pid or name == "postgres":
                continue
            labels[int(pid)] = name
            for child in descendants(int(pid), children):
                label = comm(child)
                labels[child] = f"{name}: {label}"
        for child in descendants(up_pid, children):
            labels.setdefault(child, f"hevlayer up: {comm(child)}")
        postmaster = postmaster_pid(self.data_dir)
        if postmaster is not None:
            labels[postmaster] = "postgres (all processes)"
            for child in descendants(postmaster, children):
                labels[child] = "postgres (all processes)"
        if self.client_pid is not None:
            labels[self.client_pid] = "hevlayer add (client)"
            for child in descendants(self.client_pid, children):
                labels[child] = "hevlayer add (client)"
        return labels

    def sample(self) -> None:
        labels = self.labelled()
        sums_rss: dict[str, int] = {}
        sums_pss: dict[str, int] = {}
        for pid, label in labels.items():
            status = read_status(pid)
            if not status:
                continue
            group = self.groups.setdefault(label, Group())
            group.pids.add(pid)
            group.hwm[pid] = max(group.hwm.get(pid, 0), status.get("VmHWM", 0))
            sums_rss[label] = sums_rss.get(label, 0) + status.get("VmRSS", 0)
            sums_pss[label] = sums_pss.get(label, 0) + read_pss(pid)
        for label, group in self.groups.items():
            group.rss = sums_rss.get(label, 0)
            group.pss = sums_pss.get(label, 0)
            group.peak_rss = max(group.peak_rss, group.rss)
            group.peak_pss = max(group.peak_pss, group.pss)
        client = "hevlayer add (client)"
        suite_rss = sum(v for k, v in sums_rss.items() if k != client)
        suite_pss = sum(v for k, v in sums_pss.items() if k != client)
        self.peak_suite_rss = max(self.peak_suite_rss, suite_rss)
        self.peak_suite_pss = max(self.peak_suite_pss, suite_pss)
        self.peak_total_rss = max(self.peak_total_rss, sum(sums_rss.values()))
        self.peak_total_pss = max(self.peak_total_pss, sum(sums_pss.values()))
        self.samples += 1


def mib(kib: int) -> str:
    return f"{kib / 1024:,.0f}"


def print_table(sampler: Sampler, title: str) -> None:
    print(f"\n{title}")
    headers = ["process", "procs", "peak RSS MiB", "RSS at end MiB", "peak PSS MiB", "PSS at end MiB"]
    rows = []
    order = sorted(sampler.groups.items(), key=lambda item: -item[1].peak_rss)
    for label, group in order:
        # A single process's peak is the kernel's high-water mark; a group's is its largest sampled sum
        # (the sum of the members' high-water marks would count peaks that never coincided).
        peak = sum(group.hwm.values()) if len(group.pids) == 1 else group.peak_rss
        rows.append(
            [
                label,
                str(len(group.pids)),
                mib(peak),
                mib(group.rss) if group.rss else "exited",
                mib(group.peak_pss),
                mib(group.pss) if group.rss else "exited",
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    for row in rows:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print(
        f"suite total (largest sum at one sample, {sampler.samples} samples): "
        f"RSS {mib(sampler.peak_suite_rss)} MiB, PSS {mib(sampler.peak_suite_pss)} MiB; "
        f"with the add client: RSS {mib(sampler.peak_total_rss)} MiB, PSS {mib(sampler.peak_total_pss)} MiB"
    )


# -- corpus ----------------------------------------------------------------------------------------


def make_run_corpus(target: Path) -> tuple[Path, int, int]:
    """The corpus of ``make run`` (``hevlayer demo``'s defaults), copied under ``target``."""
    labelled = corpus_module.load_queries(QUERIES)
    source = corpus_module.stdlib_dir()
    files = corpus_module.choose_stdlib_corpus(
        corpus_module.stdlib_files(source),
        token_budget=corpus_module.DEFAULT_CORPUS_TOKENS,
        must_include=[m for q in labelled for m in q.relevant],
    )
    root = corpus_module.materialize(files, source, target)
    return root, len(files), sum(f.tokens for f in files)


def generated_corpus(target: Path, count: int, file_tokens: int) -> tuple[Path, int, int]:
    """``count`` distinct files of about ``file_tokens`` tokens, cut from the standard library."""
    target.mkdir(parents=True, exist_ok=True)
    source = corpus_module.stdlib_dir()
    written = 0
    tokens = 0
    for path in sorted(source.rglob("*.py")):
        relative = path.relative_to(source)
        if corpus_module.EXCLUDED_PARTS & set(relative.parts[:-1]) or not path.is_file():
            continue
        try:
            text = decode_text(path.read_bytes())
        except OSError:
            continue
        starts = TokenIndex(text).starts
        for first in range(0, len(starts), file_tokens):
            last = first + file_tokens
            piece = text[starts[first] : starts[last] if last < len(starts) else len(text)]
            if not piece.strip():
                continue
            name = target / f"{written // 100:03d}" / f"part{written:05d}.py"
            name.parent.mkdir(parents=True, exist_ok=True)
            name.write_text(f"# {relative.as_posix()} tokens {first}-{min(last, len(starts))}\n{piece}")
            written += 1
            tokens += min(last, len(starts)) - first
            if written == count:
                return target, written, tokens
    raise SystemExit(f"--files {count}: the standard library gives only {written} pieces of {file_tokens}")


# -- the run ---------------------------------------------------------------------------------------


def chosen_corpus(target: Path, files: int, file_tokens: int) -> tuple[Path, str]:
    """``--files N`` generated files of ``--file-tokens`` tokens, else the make run corpus, under
    ``target``; with a line that says which."""
    if files:
        corpus, count, tokens = generated_corpus(target, files, file_tokens)
        return corpus, f"{count} generated files of about {file_tokens} tokens ({tokens:,} tokens)"
    corpus, count, tokens = make_run_corpus(target)
    return corpus, f"the make run corpus: {count} standard library files ({tokens:,} tokens)"


def run(args: argparse.Namespace) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="hevlayer-mem-", dir="/tmp"))
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    corpus, what = chosen_corpus(data_dir / "corpus", args.files, args.file_tokens)
    print(f"data dir {data_dir}; corpus: {what}", flush=True)
    load = os.getloadavg()
    started = time.monotonic()
    up = subprocess.run([*HEVLAYER, "--data-dir", str(data_dir), "up", "--detach"], env=env, check=False)
    if up.returncode != 0:
        print(f"hevlayer up failed ({up.returncode}); logs in {data_dir}", file=sys.stderr)
        return 1
    print(f"suite up in {time.monotonic() - started:.0f}s", flush=True)
    sampler = Sampler(data_dir)
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                sampler.sample()
            except (OSError, ValueError, KeyError) as exc:  # a state file being rewritten
                errors.append(exc)
            stop.wait(args.interval)

    sampler.sample()
    idle = Sampler(data_dir)
    idle.sample()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    code = 0
    try:
        started = time.monotonic()
        add = subprocess.Popen(
            [
                *HEVLAYER,
                "--data-dir",
                str(data_dir),
                "add",
                "--plain",
                "-p",
                "memory",
                *(["--timeout", str(args.timeout)] if args.timeout else []),
                str(corpus),
            ],
            env=env,
            stdout=subprocess.PIPE if args.quiet else None,
            stderr=subprocess.STDOUT if args.quiet else None,
        )
        sampler.client_pid = add.pid
        code = add.wait()
        seconds = time.monotonic() - started
        stop.set()
        thread.join()
        sampler.sample()  # the state at the end
        print(f"\nhevlayer add exited with {code} after {seconds:.0f}s", flush=True)
        print_table(idle, "idle, before add")
        print_table(sampler, f"during hevlayer add ({what}, {seconds:.0f}s)")
        print(
            f"machine: {os.cpu_count()} CPUs, load average at start {' '.join(f'{x:.2f}' for x in load)}, "
            f"at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        if errors:
            print(f"({len(errors)} samples skipped: {errors[-1]})")
    finally:
        stop.set()
        if args.keep:
            print(f"suite left running: hevlayer --data-dir {data_dir} down")
        else:
            subprocess.run([*HEVLAYER, "--data-dir", str(data_dir), "down"], env=env, check=False)
            shutil.rmtree(data_dir, ignore_errors=True)
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=0, help="generated corpus of N files (0: make run's)")
    parser.add_argument("--file-tokens", type=int, default=300, help="tokens per generated file")
    parser.add_argument(
        "--timeout", type=float, default=0, help="stop hevlayer add after SECONDS (0: until all is indexed)"
    )
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--quiet", action="store_true", help="hide hevlayer add's progress")
    parser.add_argument("--keep", action="store_true", help="leave the suite running")
    args = parser.parse_args()
    raise SystemExit(run(args))


if __name__ == "__main__":
    main()
