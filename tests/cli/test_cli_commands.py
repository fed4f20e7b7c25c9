"""The ``hevlayer`` command as a subprocess: help, pipelines, status and server errors."""

from __future__ import annotations

import uuid

import pytest
from support.cli import CONTROL, hevlayer
from support.stacks import CliStack

from hevlayer.devstack.ports import free_port

COMMANDS = [
    (),
    ("up",),
    ("down",),
    ("add",),
    ("search",),
    ("status",),
    ("demo",),
    ("pipelines",),
    ("pipelines", "create"),
    ("pipelines", "list"),
    ("pipelines", "delete"),
    ("pipelines", "summaries"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "hevlayer")
def test_help(command: tuple[str, ...]) -> None:
    ran = hevlayer(*command, "--help")
    assert ran.returncode == 0, ran
    assert ran.stdout.startswith("Usage: hevlayer"), ran
    assert not CONTROL.search(ran.stdout)


def test_help_lists_every_command() -> None:
    ran = hevlayer("--help")
    for name in ("add", "demo", "down", "pipelines", "search", "status", "up"):
        assert f"  {name} " in ran.stdout, name


def unique(prefix: str = "cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_pipelines_create_list_delete(cli_stack: CliStack) -> None:
    name = unique()
    created = hevlayer("pipelines", "create", name, "--queue", "row", env=cli_stack.env)
    assert created.returncode == 0, created
    assert created.stdout.strip() == (
        f"created pipeline {name} (namespace {name.replace('-', '_')}, sink milvus-lite, queue row)"
    )
    listed = hevlayer("pipelines", "list", env=cli_stack.env)
    assert listed.returncode == 0, listed
    assert listed.stdout.splitlines()[0].split() == [
        "PIPELINE", "NAMESPACE", "SINK", "QUEUE", "DIMENSION", "PAUSED", "SUMMARIES", "CREATED"
    ]  # fmt: skip
    row = next(line for line in listed.stdout.splitlines() if line.startswith(name))
    assert row.split()[:7] == [name, name.replace("-", "_"), "milvus-lite", "row", "-", "no", "off"]
    assert not CONTROL.search(listed.stdout)

    switched = hevlayer("pipelines", "summaries", name, "on", env=cli_stack.env)
    assert switched.returncode == 0, switched
    assert switched.stdout.strip() == f"pipeline {name}: summaries on"
    row = next(
        line
        for line in hevlayer("pipelines", "list", env=cli_stack.env).stdout.splitlines()
        if line.startswith(name)
    )
    assert row.split()[6] == "on"

    status = hevlayer("status", "-p", name, env=cli_stack.env)
    assert status.returncode == 0, status
    assert status.stdout.splitlines()[1].split() == [name, "0", "0", "0", "0", "0", "0"]

    refused = hevlayer("pipelines", "delete", name, env=cli_stack.env)
    assert refused.returncode == 1
    assert "without --yes" in refused.stderr

    deleted = hevlayer("pipelines", "delete", name, "--yes", env=cli_stack.env)
    assert deleted.returncode == 0, deleted
    assert deleted.stdout.startswith(f"deleted pipeline {name} (0 documents")
    assert name not in hevlayer("pipelines", "list", env=cli_stack.env).stdout


def test_server_errors_name_the_field(cli_stack: CliStack) -> None:
    bad = hevlayer("pipelines", "create", "Bad_Id", env=cli_stack.env)
    assert bad.returncode == 1
    lines = bad.stderr.splitlines()
    assert lines[0].startswith("error: INVALID_ARGUMENT: pipeline.id: 'Bad_Id' is not a valid pipeline id"), (
        bad
    )
    assert lines[1].startswith("  field pipeline.id: "), bad

    name = unique()
    assert hevlayer("pipelines", "create", name, env=cli_stack.env).returncode == 0
    again = hevlayer("pipelines", "create", name, env=cli_stack.env)
    assert again.returncode == 1
    assert again.stderr.startswith("error: ALREADY_EXISTS: "), again
    assert name in again.stderr

    missing = hevlayer("pipelines", "delete", unique("missing"), "--yes", env=cli_stack.env)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: NOT_FOUND: pipeline "), missing

    query = hevlayer("search", "anything", "-p", name, env=cli_stack.env)
    assert query.returncode == 1
    assert query.stderr.startswith("error: "), query


def test_an_unreachable_gateway_says_how_to_start_one() -> None:
    address = f"127.0.0.1:{free_port()}"
    ran = hevlayer("--gateway", address, "pipelines", "list", timeout=60)
    assert ran.returncode == 1
    assert ran.stderr.startswith("error: UNAVAILABLE: "), ran
    assert f"is the gateway at {address} up? start the suite with `hevlayer up`" in ran.stderr


def test_status_of_every_pipeline(cli_stack: CliStack) -> None:
    names = [unique(), unique()]
    for name in names:
        assert hevlayer("pipelines", "create", name, env=cli_stack.env).returncode == 0
    ran = hevlayer("status", env=cli_stack.env)
    assert ran.returncode == 0, ran
    assert ran.stdout.splitlines()[0].split() == [
        "PIPELINE", "EXTRACT", "PENDING", "EMBEDDING", "INDEXED", "FAILED", "TOTAL"
    ]  # fmt: skip
    for name in names:
        assert any(line.startswith(name) for line in ran.stdout.splitlines())
