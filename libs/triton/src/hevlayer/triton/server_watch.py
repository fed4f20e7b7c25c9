"""A Python-backend model's stub process dies with its ``tritonserver``.

``tritonserver`` starts one ``triton_python_backend_stub`` process per model instance and passes
its own pid as the stub's sixth argument (``argv[5]``). The stub checks that pid itself
(``kill(pid, 0)`` every 300 ms) and exits once it is gone, but a dead server that nobody has
reaped yet is a zombie, which ``kill(pid, 0)`` still finds. That happens when the server's parent
dies with it: ``hevlayer-triton-local`` killed with SIGKILL takes its server along
(``PR_SET_PDEATHSIG``), and the server is reparented to whoever reaps orphans, which under a
process that does not wait for them (a container's PID 1 that is no init, a subreaper that does
not reap) is never. The stub then kept running, holding the model and its memory.

:func:`exit_with_server`, called from a model's ``initialize``, starts a daemon thread that reads
``/proc/<server pid>/stat`` twice a second and ends the stub process (``os._exit``) once the server
is gone or a zombie. It runs inside the stub, never in the embedder.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

SERVER_PID_ARGUMENT = 5
"""Where ``triton_python_backend_stub``'s argv holds the pid of the server that started it."""


def stub_server_pid(cmdline: bytes) -> int:
    """The server pid in a stub's ``/proc/<pid>/cmdline`` (NUL-separated argv)."""
    argv = cmdline.split(b"\0")
    if len(argv) <= SERVER_PID_ARGUMENT or not argv[SERVER_PID_ARGUMENT].isdigit():
        raise ValueError(
            f"not a Triton Python backend stub's argv (argv[{SERVER_PID_ARGUMENT}] is no pid): {argv[:8]!r}"
        )
    return int(argv[SERVER_PID_ARGUMENT])


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs: it exists and is not a zombie (``/proc/<pid>/stat``, Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) state ...": comm may hold spaces and parentheses; the state follows the last ")".
    state = stat[stat.rfind(")") + 2 :][:1]
    return state not in ("Z", "X", "x", "")


def exit_with_server(interval: float = 0.5) -> threading.Thread:
    """Watch the server that started this stub; ``os._exit(1)`` once it is gone.

    Call from ``TritonPythonModel.initialize`` (several instances may call it: each starts its own
    watcher, which is cheap). Returns the started daemon thread."""
    server = stub_server_pid(Path("/proc/self/cmdline").read_bytes())

    def watch() -> None:
        stopped = threading.Event()
        while not stopped.wait(interval):
            if not process_alive(server):
                print(f"tritonserver (pid {server}) is gone: the Python backend stub exits", file=sys.stderr)
                sys.stderr.flush()
                os._exit(1)

    thread = threading.Thread(target=watch, name=f"exit-with-tritonserver-{server}", daemon=True)
    thread.start()
    return thread
