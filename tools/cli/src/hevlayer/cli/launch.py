"""Small launchers that adapt a program to the devstack's service conventions.

The devstack gives every service ``HEVLAYER_GRPC_ADDRESS`` and the gRPC
address of each dependency as ``<NAME>_ADDRESS``. Two programs of the suite
want them differently:

- ``python -m hevlayer.cli.launch triton [ARGS...]`` runs ``hevlayer-triton-local``
  listening on ``HEVLAYER_GRPC_ADDRESS`` (gRPC) and ``HEVLAYER_HTTP_ADDRESS`` (HTTP);
- ``python -m hevlayer.cli.launch env VAR=SOURCE... -- COMMAND...`` runs
  ``COMMAND`` with ``VAR`` set to the value of ``SOURCE`` (for example
  ``EMBEDDER_TRITON_URL=TRITON_ADDRESS``).

Both replace this process (``exec``), so signals reach the program itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from hevlayer.devstack.processes import resolve_command


def _exec(argv: Sequence[str], env: dict[str, str]) -> None:
    command = resolve_command(argv[0]) + list(argv[1:])
    os.execvpe(command[0], command, env)


def triton(args: Sequence[str]) -> None:
    host, _, port = os.environ.get("HEVLAYER_GRPC_ADDRESS", "127.0.0.1:8001").rpartition(":")
    argv = ["hevlayer-triton-local", "--host", host or "127.0.0.1", "--grpc-port", port]
    http = os.environ.get("HEVLAYER_HTTP_ADDRESS", "")
    if http:
        argv += ["--http-port", http.rpartition(":")[2]]
    _exec([*argv, *args], dict(os.environ))


def with_env(args: Sequence[str]) -> None:
    if "--" not in args:
        raise SystemExit("usage: launch env VAR=SOURCE... -- COMMAND...")
    split = list(args).index("--")
    env = dict(os.environ)
    for assignment in args[:split]:
        name, _, source = assignment.partition("=")
        if source not in os.environ:
            raise SystemExit(f"launch env: {source} is not set (wanted for {name})")
        env[name] = os.environ[source]
    command = list(args[split + 1 :])
    if not command:
        raise SystemExit("launch env: no command after --")
    _exec(command, env)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("triton", "env"):
        raise SystemExit(
            "usage: python -m hevlayer.cli.launch {triton [ARGS...] | env VAR=SOURCE... -- COMMAND...}"
        )
    if args[0] == "triton":
        triton(args[1:])
    else:
        with_env(args[1:])


if __name__ == "__main__":
    main()
