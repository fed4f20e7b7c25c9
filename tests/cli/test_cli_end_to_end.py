"""The whole suite through the ``hevlayer`` command: ``up``, ``add``, ``search``, ``down``.

``hevlayer up --detach`` starts PostgreSQL, S3, Triton with the embedding
model, the embedder, the claimer, the gateway (Milvus Lite) and the embedder
worker in a temporary data directory; the tests then add a small directory of
every kind and check, by searching and by counting the index's rows, that
every file is found, that re-adding an unchanged tree stages nothing, that an
edited file is re-indexed alone with no stale rows, and that a deleted file's
rows are gone. Recall@5 of the labelled queries (``queries.json``) is checked
on a small standard library corpus.

The pipelines use the server's default queue backend (segments): the
extract workers of ``add`` claim ids from segments and stage them with their
claims' tokens. The embedder's worker loop is the second ``hevlayer-embedder``
process that ``hevlayer up`` starts with ``EMBEDDER_WORKER_PIPELINES=*``.
"""

from __future__ import annotations

import asyncio
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cli import CONTROL, Ran, hevlayer, sample_tree

from hevlayer.cli import corpus
from hevlayer.cli.ingest import extract
from hevlayer.cli.stack import EMBEDDER_WORKER_COMMAND, UpState, has_console_script
from hevlayer.client import Client, ClientOptions
from hevlayer.common.auth import bearer_metadata
from hevlayer.devstack.tokens import read_admin_token
from hevlayer.ingest.files import Root
from hevlayer.ingest.producers import Budget

QUERIES = Path(__file__).with_name("queries.json")
CORPUS_LINES = 40
"""The recall corpus keeps each file's first lines: its docstring and first definitions."""
MIN_RECALL = 0.8
QUEUE: tuple[str, ...] = ()
"""Options of ``pipelines create``: the server's default queue backend."""


@dataclass
class Suite:
    data_dir: Path
    gateway: str

    @property
    def env(self) -> dict[str, str]:
        return {"HEVLAYER_DATA_DIR": str(self.data_dir)}

    @property
    def address(self) -> str:
        """The gateway's address now (a test restarts the suite, which may move it)."""
        state = UpState.read(self.data_dir)
        assert state is not None, "the suite is not running"
        return state.gateway

    @property
    def options(self) -> ClientOptions:
        """Client options with the admin token ``up`` wrote in the data directory."""
        token = read_admin_token(self.data_dir)
        assert token is not None, f"no admin token in {self.data_dir}"
        return ClientOptions(metadata=[bearer_metadata(token)])


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    if not has_console_script(EMBEDDER_WORKER_COMMAND):
        pytest.fail(
            f"the end-to-end tests need the embedder worker: console script {EMBEDDER_WORKER_COMMAND!r} "
            "is not installed (services/embedder)"
        )
    data_dir = tmp_path_factory.mktemp("suite") / "data"
    started = hevlayer("--data-dir", data_dir, "up", "--detach", timeout=600)
    assert started.returncode == 0, f"{started}\n{(data_dir / 'logs' / 'up.log').read_text(errors='replace')}"
    state = UpState.read(data_dir)
    assert state is not None
    try:
        yield Suite(data_dir, state.gateway)
    finally:
        stopped = hevlayer("--data-dir", data_dir, "down", timeout=180)
        assert stopped.returncode == 0, stopped
        assert UpState.read(data_dir) is None


def search_paths(suite: Suite, pipeline: str, query: str, *extra: str) -> list[str]:
    ran = hevlayer("search", query, "-p", pipeline, *extra, env=suite.env)
    assert ran.returncode == 0, ran
    assert not CONTROL.search(ran.stdout)
    return [
        line.split()[2].split(":")[0] for line in ran.stdout.splitlines() if line[:3].strip().endswith(".")
    ]


def rows(suite: Suite, pipeline: str, document_id: str) -> set[str]:
    """The chunk ids of the document's rows in the index."""

    async def query() -> set[str]:
        async with Client.connect(suite.gateway, suite.options) as gateway:
            hits = await gateway.index.query(
                pipeline, "anything", top_k=1000, filter={"document_id": document_id}
            )
            return {hit.chunk_id for hit in hits}

    return asyncio.run(query())


def create(suite: Suite, pipeline: str) -> None:
    ran = hevlayer("pipelines", "create", pipeline, *QUEUE, env=suite.env)
    assert ran.returncode == 0, ran


def add(suite: Suite, pipeline: str, *paths: Path) -> Ran:
    ran = hevlayer("add", *paths, "-p", pipeline, "--timeout", "200", env=suite.env, timeout=260)
    assert ran.returncode == 0, ran
    assert not CONTROL.search(ran.stdout)
    return ran


def line(ran: Ran, prefix: str) -> str:
    return next(text for text in ran.stdout.splitlines() if text.startswith(prefix))


QUESTIONS = {
    "notes.txt": "how to bake sourdough bread",
    "guide.md": "harvesting honey from a beehive",
    "orbit.py": "speed needed to escape a planet's gravity",
    "page.html": "magma erupting from volcanoes",
    "birds.csv": "which bird lives on antarctic ice",
    "config.json": "telescope aperture setting",
    "glaciers.pdf": "glaciers carving valleys",
}


def test_add_search_edit_delete(suite: Suite, tmp_path: Path) -> None:
    pipeline = f"e2e-{uuid.uuid4().hex[:6]}"
    create(suite, pipeline)
    tree = tmp_path / "tree"
    paths = sample_tree(tree)
    roots = [Root.of(tree)]

    first = add(suite, pipeline, tree)
    assert line(first, "under the given paths: ").startswith("under the given paths: 7 indexed, 0 failed"), (
        first
    )

    for name, question in QUESTIONS.items():
        found = search_paths(suite, pipeline, question, "-k", "3")
        assert str(paths[name]) in found, (name, question, found)
    assert search_paths(suite, pipeline, "glaciers", "--kind", "pdf") == [str(paths["glaciers.pdf"])]

    expected = {}
    for name in QUESTIONS:
        document = extract(paths[name].as_posix(), roots, Budget()).document
        assert document is not None
        expected[name] = {chunk.id for chunk in document.chunks}
        assert rows(suite, pipeline, paths[name].as_posix()) == expected[name], name

    again = add(suite, pipeline, tree)
    assert line(again, "queued ").startswith("queued 0, unchanged 7, deleted 0; extracted 0 documents"), again

    paths["orbit.py"].write_text(
        paths["orbit.py"].read_text() + '\n\ndef orbital_period(a):\n    """Kepler\'s third law."""\n'
        "    return a ** 1.5\n"
        + "\n".join(f"\n\ndef helper_{n}(x):\n    return x * {n}\n" for n in range(40))
    )
    paths["notes.txt"].unlink()
    edited = add(suite, pipeline, tree)
    assert line(edited, "queued ").startswith("queued 1, unchanged 5, deleted 1; extracted 1 documents"), (
        edited
    )
    document = extract(paths["orbit.py"].as_posix(), roots, Budget()).document
    assert document is not None
    new_ids = {chunk.id for chunk in document.chunks}
    assert new_ids != expected["orbit.py"]
    assert rows(suite, pipeline, paths["orbit.py"].as_posix()) == new_ids, "no stale rows of the old version"
    assert rows(suite, pipeline, paths["notes.txt"].as_posix()) == set(), "a deleted file has no rows"
    for name in ("guide.md", "page.html", "glaciers.pdf"):
        assert rows(suite, pipeline, paths[name].as_posix()) == expected[name]
    assert str(paths["orbit.py"]) in search_paths(
        suite, pipeline, "Kepler's third law orbital period", "-k", "3"
    )


def test_recall_at_5_on_the_standard_library(suite: Suite, tmp_path: Path) -> None:
    queries = corpus.load_queries(QUERIES)
    files = corpus.choose_stdlib_corpus(
        corpus.stdlib_files(),
        token_budget=0,
        must_include=[m for q in queries for m in q.relevant],
    )
    distractors = [
        f for f in corpus.stdlib_files() if "/" not in f.relative and f not in files and f.tokens < 6000
    ][:40]
    root = corpus.materialize(
        [*files, *distractors], corpus.stdlib_dir(), tmp_path / "corpus", max_lines=CORPUS_LINES
    )
    pipeline = f"recall-{uuid.uuid4().hex[:6]}"
    create(suite, pipeline)
    add(suite, pipeline, root)
    ranked = {}
    prefix = root.as_posix() + "/"
    for query in queries:
        found = search_paths(suite, pipeline, query.query, "-k", "5")
        ranked[query.query] = [path.removeprefix(prefix) for path in found]
    recall, missed = corpus.recall_at_k(queries, ranked, k=5)
    assert recall >= MIN_RECALL, (recall, [(q.query, ranked[q.query]) for q in missed])


def test_down_then_a_second_up_reuses_the_data(suite: Suite, tmp_path: Path) -> None:
    """``down`` stops everything; ``up`` on the same data directory finds the pipelines,
    their document states and their vectors again (PostgreSQL, S3 and Milvus Lite files)."""
    pipeline = f"again-{uuid.uuid4().hex[:6]}"
    create(suite, pipeline)
    tree = tmp_path / "tree"
    paths = sample_tree(tree)
    add(suite, pipeline, tree)
    honey = "harvesting honey from a beehive"
    assert str(paths["guide.md"]) in search_paths(suite, pipeline, honey, "-k", "3")

    stopped = hevlayer("--data-dir", suite.data_dir, "down", timeout=180)
    assert stopped.returncode == 0, stopped
    assert UpState.read(suite.data_dir) is None
    started = hevlayer("--data-dir", suite.data_dir, "up", "--detach", timeout=600)
    assert started.returncode == 0, started

    assert str(paths["guide.md"]) in search_paths(suite, pipeline, honey, "-k", "3")
    again = add(suite, pipeline, tree)
    assert line(again, "queued ").startswith("queued 0, unchanged 7, deleted 0"), again


# -- authentication, on by default ---------------------------------------------------------------


def test_up_writes_an_owner_only_admin_token_that_the_cli_uses(suite: Suite, tmp_path: Path) -> None:
    tokens = suite.data_dir / "tokens"
    admin = tokens / "admin.token"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o700
    for secret_file in tokens.glob("*.token"):
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600, secret_file
    secret = admin.read_text().strip()
    assert secret.startswith("hvl_")
    assert secret not in (tokens / "bootstrap.json").read_text()
    listed = hevlayer("pipelines", "list", env=suite.env)
    assert listed.returncode == 0, listed
    # The same gateway without the data directory's token: refused, the hint names the token.
    bare = hevlayer("--data-dir", tmp_path, "--gateway", suite.address, "pipelines", "list")
    assert bare.returncode == 1, bare
    assert "UNAUTHENTICATED" in bare.stderr
    assert "--token" in bare.stderr


def test_tokens_create_list_and_revoke(suite: Suite, tmp_path: Path) -> None:
    pipeline = f"tok-{uuid.uuid4().hex[:6]}"
    create(suite, pipeline)
    created = hevlayer("tokens", "create", "ci reader", "--role", "reader", "-p", pipeline, env=suite.env)
    assert created.returncode == 0, created
    secret = created.stdout.strip()
    token_id = secret.split("_")[1]
    assert "shown only now" in created.stderr
    listed = hevlayer("tokens", "list", env=suite.env)
    assert listed.returncode == 0, listed
    [row] = [r for r in listed.stdout.splitlines() if r.startswith(token_id)]
    assert "reader" in row
    assert pipeline in row
    assert secret.split("_", 2)[-1] not in listed.stdout

    as_reader = {
        "HEVLAYER_DATA_DIR": str(tmp_path),
        "HEVLAYER_GATEWAY": suite.address,
        "HEVLAYER_TOKEN": secret,
    }
    status = hevlayer("status", "-p", pipeline, env=as_reader)
    assert status.returncode == 0, status
    denied = hevlayer("pipelines", "create", f"x-{pipeline}", env=as_reader)
    assert denied.returncode == 1, denied
    assert "PERMISSION_DENIED" in denied.stderr
    assert secret not in denied.stderr + denied.stdout

    revoked = hevlayer("tokens", "revoke", token_id, env=suite.env)
    assert revoked.returncode == 0, revoked
    assert hevlayer("tokens", "list", env=suite.env).stdout.count(token_id) == 0
    assert token_id in hevlayer("tokens", "list", "--all", env=suite.env).stdout
    # Refused once the gateway's cache lets the token go (GATEWAY_AUTH_CACHE_SECONDS, 5 s by default).
    deadline = time.monotonic() + 60
    while True:
        after = hevlayer("status", "-p", pipeline, env=as_reader)
        if after.returncode == 1 and "UNAUTHENTICATED" in after.stderr:
            break
        assert after.returncode == 0, after
        assert time.monotonic() < deadline, "the revoked token was still accepted after 60 s"
        time.sleep(0.5)
