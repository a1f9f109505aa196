"""The `mergeflow` console command: hand the job to a warm job server when one is offered, else run it here.

Only the standard library is imported here, so a job forwarded to `mergeflow.shell.job_server` starts in
milliseconds instead of paying torch's and open_clip's imports (seconds) again.
"""

from __future__ import annotations

import json
import os
import socket
import sys

# Set by the Snakefile's onstart hook for local runs: the Unix socket of the workflow's job server.
SERVER_ENV = "MERGEFLOW_JOB_SERVER"


def request(argv: list[str]) -> dict[str, object]:
    """What the server needs to run `mergeflow argv` as if it were this process."""
    import mergeflow

    return {
        "argv": argv,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "prefix": sys.prefix,
        "package": os.path.dirname(os.path.abspath(mergeflow.__file__)),
    }


def forward(address: str, argv: list[str]) -> int | None:
    """Run the job in the server at `address` with this process's stdin, stdout and stderr.

    Returns the job's exit status, or None when no server answers or it declines the job (this
    process then runs it itself).
    """
    if os.environ.get("SLURM_JOB_ID"):
        return None  # inside a scheduler's allocation the job must run in it, not in a server outside it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)
        socket.send_fds(sock, [b"J"], [0, 1, 2])
        sock.sendall(json.dumps(request(argv)).encode() + b"\n")
        line = sock.makefile("rb").readline()
    except OSError:
        return None
    finally:
        sock.close()
    if not line:
        print("mergeflow: the job server closed the connection without an exit status", file=sys.stderr)
        return 1
    reply = json.loads(line)
    if "declined" in reply:
        print(f"mergeflow: job server declined ({reply['declined']}); running the job here", file=sys.stderr)
        return None
    return int(reply["exit"])


def run() -> int:
    address = os.environ.get(SERVER_ENV)
    if address:
        status = forward(address, sys.argv[1:])
        if status is not None:
            return status
    from mergeflow.commands.main import run as run_here

    return run_here()


if __name__ == "__main__":
    sys.exit(run())
