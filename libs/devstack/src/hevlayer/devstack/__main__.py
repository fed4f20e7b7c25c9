"""``hevlayer-devstack up``: run PostgreSQL, S3 and the hevlayer services locally."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from hevlayer.devstack.errors import DevstackError
from hevlayer.devstack.stack import SERVICES, DevStack, ServiceSpec


class _Terminated(Exception):
    """SIGTERM arrived."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def up(
    data_dir: str | Path = ".hevlayer",
    *,
    once: bool = False,
    services: Sequence[ServiceSpec] = SERVICES,
    poll_interval: float = 0.5,
) -> int:
    """Start the stack, print where it is, wait for Ctrl-C/SIGTERM, stop it.

    With ``once`` it stops right after printing. Returns the exit status: 0,
    or 1 when something failed to start or a service died.
    """
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    stack = DevStack(data_dir, services)
    try:
        try:
            stack.start()
        except DevstackError as exc:
            print(f"hevlayer-devstack: {exc}", file=sys.stderr, flush=True)
            return 1
        print("", flush=True)
        print(stack.summary(), flush=True)
        if once:
            return 0
        print("\nCtrl-C stops everything.", flush=True)
        while True:
            dead = stack.dead_services()
            if dead:
                for service in dead:
                    print(
                        f"hevlayer-devstack: {service.spec.name} exited with "
                        f"{service.process.returncode}\n--- {service.process.log_path} ---\n"
                        f"{service.process.log_tail()}",
                        file=sys.stderr,
                        flush=True,
                    )
                return 1
            time.sleep(poll_interval)
    except (KeyboardInterrupt, _Terminated):
        with contextlib.suppress(OSError):  # stdout may be a pipe that died with us
            print("\nstopping ...", flush=True)
        return 0
    finally:
        stack.stop()
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hevlayer-devstack", description="Local servers for hevlayer development."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="start PostgreSQL, S3 and the services; Ctrl-C stops them")
    up_parser.add_argument(
        "--data-dir",
        default=".hevlayer",
        type=Path,
        help="where the persistent data and logs live (default: .hevlayer)",
    )
    up_parser.add_argument("--once", action="store_true", help="stop again right after everything is up")
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args.data_dir, once=args.once)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
