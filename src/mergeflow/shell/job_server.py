"""A warm process that runs local `mergeflow` jobs by forking, so no job pays torch's start-up again.

Every job of a local Snakemake run is one `mergeflow` command, and most of a small job's time is spent
importing torch and open_clip (about 5 s on two CPU cores). The server imports them once, then for each
connection from `mergeflow.shell.launcher` forks a child that takes over the client's stdin/stdout/stderr,
working directory and environment, runs the command, and reports its exit status back. Nothing else is
shared: a child starts from the server's freshly imported, never-used modules, so its results are those of
a new process. The server declines a job (the client then runs it itself) when the client's Python, package
or any import-time environment variable differs from its own. A child dies with its client (Snakemake
cancelling a job kills it), and the server exits when the Snakemake process that started it is gone.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from mergeflow.runtime.process import mark_forked_by_server
from mergeflow.shell.launcher import SERVER_ENV

# Read when a library is first imported (here, in the server), so a job whose value differs must not be
# forked from it. Thread counts and CUDA_VISIBLE_DEVICES are applied per job and may differ. The CPU kernel
# sets of torch, oneDNN, MKL and NumPy are read once per process, and they change the bytes of results.
IMPORT_TIME_PREFIXES = ("PYTHON", "LD_", "HF_", "HUGGINGFACE", "TORCH", "PYTORCH", "MPL", "MATPLOTLIB", "KMP_", "GOMP",
                        "ATEN_CPU_CAPABILITY", "ONEDNN_", "DNNL_", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR",
                        "NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES")  # fmt: skip
PER_JOB_VARIABLES = frozenset({"PYTORCH_CUDA_ALLOC_CONF"})  # read when CUDA starts, which is in the job


def import_sensitive_difference(server_env: dict[str, str], job_env: dict[str, str]) -> list[str]:
    """Names of import-time variables whose value differs between the server's and a job's environment."""
    names = {name for name in server_env.keys() | job_env.keys() if name.startswith(IMPORT_TIME_PREFIXES)}
    return sorted(n for n in names - PER_JOB_VARIABLES if server_env.get(n) != job_env.get(n))


def decline_reason(job: dict[str, object], server_env: dict[str, str]) -> str | None:
    import mergeflow

    if job.get("prefix") != sys.prefix:
        return f"client Python {job.get('prefix')} is not the server's {sys.prefix}"
    if job.get("package") != os.path.dirname(os.path.abspath(mergeflow.__file__)):
        return f"client mergeflow package {job.get('package')} is not the server's"
    different = import_sensitive_difference(server_env, dict(job["env"]))  # type: ignore[arg-type]
    if different:
        return f"environment variables {different} differ from the server's"
    return None


def warm_imports() -> None:
    """Everything a job imports that costs start-up time; none of it may run torch operations or touch CUDA."""
    sys.modules.setdefault("transformers", None)  # type: ignore[arg-type]  (as mergeflow.commands.main.run does)
    import matplotlib  # noqa: F401
    import numpy  # noqa: F401
    import open_clip  # noqa: F401
    import pandas  # noqa: F401
    import torch  # noqa: F401

    import mergeflow.commands.main
    import mergeflow.evaluation.accuracy
    import mergeflow.evaluation.sweep
    import mergeflow.merging.engine
    import mergeflow.training.finetune
    import mergeflow.training.pretrain  # noqa: F401

    mergeflow.commands.main.build_parser()  # imports every verb's module-level dependencies


def _run_child(conn: socket.socket, fds: list[int], env: dict[str, str], job: dict[str, object]) -> int:
    """In the forked child: become the client's process, run the command, return its exit status."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(str(job["cwd"]))
    os.environ.clear()
    os.environ.update(env)
    argv = [str(arg) for arg in job["argv"]]  # type: ignore[union-attr]
    sys.argv = ["mergeflow", *argv]
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))  # what a new process takes from OMP_NUM_THREADS when torch loads

    def die_with_client() -> None:
        while conn.recv(1024):
            pass
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=die_with_client, daemon=True).start()
    mark_forked_by_server(os.getppid())
    from mergeflow.commands.main import main

    try:
        return int(main(argv))
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        return 1


def _exit_status(status: int) -> int:
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def serve(address: str, parent: int) -> None:
    """Accept jobs on the Unix socket `address` until the process `parent` is gone or SIGTERM arrives."""
    server_env = dict(os.environ)
    warm_imports()
    # Variables the imports themselves set (torch sets TORCHINDUCTOR_CACHE_DIR); a new process would have them too.
    set_by_imports = {name: value for name, value in os.environ.items() if name not in server_env}
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches Snakemake, which cancels the jobs
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address + ".binding")
    listener.listen(64)
    os.rename(address + ".binding", address)  # clients see the socket only once it accepts
    children: dict[int, socket.socket] = {}
    try:
        while not stopping and os.getppid() == parent:
            ready, _, _ = select.select([listener, wake_read], [], [], 1.0)
            if wake_read in ready:
                os.read(wake_read, 4096)
            _reap(children)
            if listener in ready and not stopping:
                _accept(listener, children, server_env, set_by_imports, [wake_read, wake_write])
    finally:
        listener.close()
        Path(address).unlink(missing_ok=True)
        try:
            os.rmdir(os.path.dirname(address))  # the private directory `start` made, once empty
        except OSError:
            pass
        for pid in list(children):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while children:
            _reap(children, block=True)


def _reap(children: dict[int, socket.socket], block: bool = False) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(json.dumps({"exit": _exit_status(status)}).encode() + b"\n")
            except OSError:
                pass  # the client is gone (it was cancelled)
            conn.close()


def _accept(
    listener: socket.socket,
    children: dict[int, socket.socket],
    server_env: dict[str, str],
    set_by_imports: dict[str, str],
    pipes: list[int],
) -> None:
    conn, _ = listener.accept()
    try:
        _, fds, _, _ = socket.recv_fds(conn, 1, 3)
        job = json.loads(conn.makefile("rb").readline())
    except (OSError, ValueError):
        conn.close()
        return
    reason = decline_reason(job, server_env) if len(fds) == 3 else "stdin, stdout and stderr were not passed"
    if reason is not None:
        for fd in fds:
            os.close(fd)
        conn.sendall(json.dumps({"declined": reason}).encode() + b"\n")
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        status = 70
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.setpgid(0, 0)  # the job and anything it starts form one group, killed together with its client
            listener.close()
            for other in children.values():
                other.close()
            for fd in pipes:
                os.close(fd)
            status = _run_child(conn, fds, set_by_imports | dict(job["env"]), job)  # type: ignore[arg-type]
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    try:
        os.setpgid(pid, pid)  # also here, so that the group exists whichever of parent and child runs first
    except OSError:
        pass  # the child already did it, or has exited
    for fd in fds:
        os.close(fd)
    children[pid] = conn


# The Snakefile's side: start one server per local run, offer it to the jobs, stop it at the end.


def start(timeout_s: float = 0.0) -> subprocess.Popen[bytes]:
    """Start a server for this process's jobs and export its address in SERVER_ENV.

    The socket lives in a new private directory, so only this user can submit jobs. The server comes up
    while the first jobs run (those that start before it is ready run on their own) unless `timeout_s`
    asks to wait for it.
    """
    directory = tempfile.mkdtemp(prefix="mergeflow-jobs-")
    address = os.path.join(directory, "socket")
    command = [sys.executable, "-m", "mergeflow.shell.job_server", "--address", address, "--parent", str(os.getpid())]
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    os.environ[SERVER_ENV] = address
    deadline = time.monotonic() + timeout_s
    while timeout_s and not os.path.exists(address) and time.monotonic() < deadline and server.poll() is None:
        time.sleep(0.05)
    return server


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """Stop the server started by `start` and remove its socket directory."""
    address = os.environ.pop(SERVER_ENV, None)
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    if address:
        shutil.rmtree(os.path.dirname(address), ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mergeflow.shell.job_server", description=__doc__)
    parser.add_argument("--address", required=True, help="Unix socket path to listen on")
    parser.add_argument("--parent", type=int, required=True, help="exit when this process is gone")
    args = parser.parse_args(argv)
    serve(args.address, args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
