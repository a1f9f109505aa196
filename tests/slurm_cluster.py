"""A real single-node SLURM cluster on this machine, for tests that submit Snakemake jobs with sbatch.

`running_cluster()` starts a private `munged` (its own key and socket, as the `munge` user), writes
`/etc/slurm/slurm.conf` for one node (this host, with the CPUs and memory `slurmd -C` reports) and one
partition, starts `slurmctld` and `slurmd` in the foreground as child processes, and waits until
`sinfo` shows the node idle. On exit it cancels the cluster's jobs, stops every process it started (and
only those), and restores `/etc/slurm/slurm.conf` to what it was (removing it if there was none).

Why these choices:

- `/etc/slurm/slurm.conf` rather than `SLURM_CONF`: the SLURM executor plugin's job step strips every
  `SLURM_*` variable except the job identity before its nested `srun`, so only the compiled-in default
  path is seen by every client inside a job.
- A private munged (own key, socket, pid and log files): nothing of the machine's own munge setup is
  read or changed, and a munged the system may run keeps running.
- Free ports chosen at start and a unique `ClusterName`, state and spool directories: no clash with a
  SLURM installation or an earlier run.
- No accounting storage and `MinJobAge=3600`: `squeue` keeps finished jobs for an hour, which is what
  the plugin's `squeue` status command needs; `proctrack/linuxproc` and `task/none` need no cgroups.
- Every daemon started gets `MERGEFLOW_SLURM_CLUSTER=<state dir>` in its environment; `cluster_processes()`
  finds them by it, and the `slurmstepd`s and job processes by the state directory's log file and their
  session. That is how teardown knows it left nothing behind.
- A machine-wide lock (one test cluster at a time, as `/etc/slurm/slurm.conf` is shared); whoever holds
  it ends the processes of a test cluster whose session was killed before its teardown.

Requires root (slurmd launches jobs, munged runs as another user). When the SLURM or munge binaries are
missing, `ensure_installed()` installs the Debian packages with apt-get as root, and skips the test only
where that is impossible (not root, or no apt-get).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARKER_ENV = "MERGEFLOW_SLURM_CLUSTER"
CONF_HEADER = "# Written by mergeflow tests/slurm_cluster.py for a throw-away test cluster; removed on teardown."
PARTITION = "mergeflow-test"
# Binaries the cluster needs, and the Debian packages that provide them.
REQUIRED_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "srun", "scontrol")
APT_PACKAGES = ("slurm-wlm", "munge")
STARTUP_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
STATE_DIR_PREFIX = "mergeflow-slurm-"
# Not under STATE_DIR_PREFIX: a session waiting for the lock holds this file open and must not look stale.
LOCK_PATH = Path(tempfile.gettempdir()) / "mergeflow-test-cluster.lock"
LOCK_TIMEOUT_S = 900.0


class ClusterError(RuntimeError):
    """The test cluster could not be brought up or torn down; the message names the daemon and its log."""


def binary(name: str) -> str | None:
    """Where `name` is, looking in the sbin directories too: the daemons live there, and a CI job's PATH
    may leave them out."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"]))


def missing_binaries() -> list[str]:
    return [name for name in REQUIRED_BINARIES if binary(name) is None]


def daemon(name: str) -> str:
    path = binary(name)
    if path is None:
        raise ClusterError(f"{name} not found on PATH, /usr/sbin or /sbin")
    return path


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt-get when a binary is missing; skip only where that cannot work.

    CI runs as root on Debian, so there the packages are installed on first use rather than skipped.
    """
    missing = missing_binaries()
    if not missing:
        return
    if os.geteuid() != 0:
        pytest.skip(f"SLURM test cluster needs root to install and run {', '.join(missing)} (not root)")
    if shutil.which("apt-get") is None:
        pytest.skip(f"SLURM test cluster: {', '.join(missing)} missing and no apt-get to install {APT_PACKAGES}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Only what the cluster needs: slurm-wlm's recommended extra plugins are some 40 more packages.
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES]
    for command in (["apt-get", "update", "-qq"], install):
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if run.returncode != 0:
            raise ClusterError(f"`{' '.join(command)}` failed ({run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}")
    still_missing = missing_binaries()
    if still_missing:
        raise ClusterError(f"after installing {APT_PACKAGES}, still not on PATH: {', '.join(still_missing)}")


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's choice); the daemons bind it moments later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def node_hardware() -> dict[str, str]:
    """This host as `slurmd -C` sees it (CPUs, sockets, cores, threads, RealMemory).

    Declaring exactly what slurmd detects keeps the node from being drained for "low socket*core*thread
    count" or "low RealMemory".
    """
    run = subprocess.run([daemon("slurmd"), "-C"], capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        raise ClusterError(f"`slurmd -C` failed ({run.returncode}): {run.stderr.strip()}")
    first_line = run.stdout.splitlines()[0]
    fields = dict(re.findall(r"(\w+)=(\S+)", first_line))
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    absent = [key for key in keys if key not in fields]
    if absent:
        raise ClusterError(f"`slurmd -C` printed no {', '.join(absent)}: {first_line!r}")
    return {key: fields[key] for key in keys}


def tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as error:
        return f"<cannot read {path}: {error}>"


def _session(pid: int) -> int | None:
    """The session id of a live `pid` (field 6 of /proc/<pid>/stat); None for a zombie or a finished process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2 :].split()[:4]
    return None if state in ("Z", "X") else int(session)


def is_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for its parent to reap it is not)."""
    return _session(pid) is not None


def _is_cluster_process(proc: Path, env_entry: bytes | None, path_prefix: str) -> bool:
    """Whether a process carries the marker in its environment or holds a file under the state directory."""
    try:
        entries = (proc / "environ").read_bytes().split(b"\0")
        if any(entry == env_entry if env_entry else entry.startswith(f"{MARKER_ENV}=".encode()) for entry in entries):
            return True
        return any(os.readlink(fd).startswith(path_prefix) for fd in (proc / "fd").iterdir())
    except OSError:  # gone meanwhile, or a kernel thread
        return False


def cluster_processes(marker: str | None) -> list[int]:
    """Pids of live processes of the test cluster whose state directory is `marker` (of any test cluster if None).

    The daemons carry `MERGEFLOW_SLURM_CLUSTER=<state dir>` in their environment. A `slurmstepd` gets a
    clean environment from slurmd but keeps slurmd's log file (in the state directory) open, and the job
    processes it starts share its session; so a process belongs to the cluster when it has the marker or an
    open file under the state directory, or shares the session of one that does. Zombies hold no
    files and are not listed.
    """
    env_entry = None if marker is None else f"{MARKER_ENV}={marker}".encode()
    path_prefix = os.path.join(tempfile.gettempdir(), STATE_DIR_PREFIX) if marker is None else marker + os.sep
    own_session = os.getsid(0)
    procs = [proc for proc in Path("/proc").iterdir() if proc.name.isdigit() and int(proc.name) != os.getpid()]
    found = {int(proc.name) for proc in procs if _is_cluster_process(proc, env_entry, path_prefix)}
    sessions = {_session(pid) for pid in found} - {None, own_session}
    found |= {int(proc.name) for proc in procs if _session(int(proc.name)) in sessions}
    return sorted(pid for pid in found if is_alive(pid))


def _kill_and_wait(pids: list[int], marker: str | None) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while cluster_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)


@contextlib.contextmanager
def _exclusive_machine_lock() -> Iterator[None]:
    """One test cluster per machine at a time: /etc/slurm/slurm.conf is shared by every SLURM client.

    A second pytest session waits here for the first to finish. Holding the lock also proves that any
    process still marked as a test-cluster process belongs to a session that died without its teardown
    (killed with SIGKILL); those are ended before a new cluster starts.
    """
    with LOCK_PATH.open("w") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ClusterError(f"another test cluster held {LOCK_PATH} for {LOCK_TIMEOUT_S:.0f} s") from None
                time.sleep(1)
        stale = cluster_processes(None)
        if stale:
            _kill_and_wait(stale, None)
        for state_dir in Path(tempfile.gettempdir()).glob(f"{STATE_DIR_PREFIX}*"):
            if state_dir.is_dir():  # a state directory left by such a session
                shutil.rmtree(state_dir, ignore_errors=True)
        yield


@dataclass
class SlurmCluster:
    """A running single-node cluster: its partition, node, files and daemons."""

    root: Path  # state directory: munge key and socket, spool, state save, logs, pid files
    node: str
    partition: str
    marker: str
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def logs(self) -> dict[str, Path]:
        return {
            "munged": self.root / "munge" / "munged.log",
            "slurmctld": self.root / "log" / "slurmctld.log",
            "slurmd": self.root / "log" / "slurmd.log",
        }

    @property
    def env(self) -> dict[str, str]:
        """The environment for SLURM clients run against this cluster (no stray SLURM_CONF or job ids)."""
        return {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "SBATCH_", "SRUN_"))}

    def client(self, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(command), capture_output=True, text=True, env=self.env, timeout=timeout)

    def diagnostics(self) -> str:
        """Every daemon's exit status and log tail, for error messages."""
        parts = []
        for name, path in self.logs.items():
            process = self.daemons.get(name)
            state = "not started" if process is None else f"pid {process.pid}, exit code {process.poll()}"
            parts.append(f"--- {name} ({state}), {path}:\n{tail(path)}")
            out = self.root / "log" / f"{name}.out"
            if out.exists() and out.stat().st_size:
                parts.append(f"--- {name} stdout/stderr, {out}:\n{tail(out)}")
        return "\n".join(parts)

    def node_state(self) -> str:
        run = self.client("sinfo", "--noheader", "--Node", "--nodes", self.node, "--format", "%T")
        return run.stdout.strip() if run.returncode == 0 else f"<sinfo failed: {run.stderr.strip()}>"

    def job_ids(self, finished: bool = False) -> list[str]:
        """Ids of the jobs slurmctld knows: pending and running ones, or also finished ones (MinJobAge)."""
        states = ["--states", "all"] if finished else []
        run = self.client("squeue", "--noheader", "--format", "%i", *states)
        return run.stdout.split() if run.returncode == 0 else []


def _start(cluster: SlurmCluster, name: str, command: list[str], user: pwd.struct_passwd | None = None) -> None:
    """Start a daemon in the foreground, in a session of its own, with the cluster's marker in its environment.

    Its own session keeps a Ctrl-C in the terminal away from it: teardown stops it in order instead.
    """
    out = (cluster.root / "log" / f"{name}.out").open("wb")
    env = {**cluster.env, MARKER_ENV: cluster.marker}
    as_user = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    try:
        cluster.daemons[name] = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            **as_user,
        )
    finally:
        out.close()


def _wait_for(cluster: SlurmCluster, what: str, ready: Callable[[], bool], timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Poll `ready()` every 0.25 s; fail early when a daemon exits, with every log on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        exited = [name for name, process in cluster.daemons.items() if process.poll() is not None]
        if exited:
            raise ClusterError(f"{', '.join(exited)} exited while waiting for {what}\n{cluster.diagnostics()}")
        time.sleep(0.25)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{cluster.diagnostics()}")


def _start_munged(cluster: SlurmCluster) -> Path:
    """A munged of our own, as the munge user, with a fresh key; returns its socket."""
    try:
        munge_user = pwd.getpwnam("munge")
    except KeyError:
        raise ClusterError("no `munge` user: the munge package creates it; reinstall munge") from None
    munge_dir = cluster.root / "munge"
    munge_dir.mkdir()
    munge_dir.chmod(0o755)  # munged requires its socket directory to be searchable by everyone
    key = munge_dir / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    for path in (munge_dir, key):
        os.chown(path, munge_user.pw_uid, munge_user.pw_gid)
    socket_path = munge_dir / "munge.socket"
    command = [
        daemon("munged"), "--foreground", f"--key-file={key}", f"--socket={socket_path}",
        f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={cluster.logs['munged']}",
        f"--seed-file={munge_dir / 'munged.seed'}", "--num-threads=2",
    ]  # fmt: skip
    _start(cluster, "munged", command, user=munge_user)
    _wait_for(cluster, f"munged's socket {socket_path}", socket_path.exists, timeout=30)
    return socket_path


def slurm_conf(cluster: SlurmCluster, munge_socket: Path, hardware: Mapping[str, str]) -> str:
    root = cluster.root
    hardware_fields = " ".join(f"{key}={value}" for key, value in hardware.items())
    return f"""{CONF_HEADER}
# State directory {root}
ClusterName=mergeflow{secrets.token_hex(3)}
SlurmctldHost={cluster.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={cluster.logs["slurmctld"]}
SlurmdLogFile={cluster.logs["slurmd"]}
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
NodeName={cluster.node} NodeHostname={cluster.node} NodeAddr=127.0.0.1 {hardware_fields} State=UNKNOWN
PartitionName={cluster.partition} Nodes={cluster.node} Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def _installed_conf(text: str) -> Iterator[Path]:
    """Write /etc/slurm/slurm.conf for the cluster's lifetime; put back what was there (or nothing)."""
    created_dir = not SLURM_CONF.parent.exists()
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    previous = SLURM_CONF.read_bytes() if SLURM_CONF.exists() else None
    if previous is not None and previous.startswith(CONF_HEADER.encode()):
        previous = None  # left behind by a run that was killed before its teardown: ours, not the machine's
    SLURM_CONF.write_text(text)
    try:
        yield SLURM_CONF
    finally:
        if previous is None:
            SLURM_CONF.unlink(missing_ok=True)
            if created_dir:
                with contextlib.suppress(OSError):
                    SLURM_CONF.parent.rmdir()
        else:
            SLURM_CONF.write_bytes(previous)


def _stop(cluster: SlurmCluster) -> None:
    """Cancel the cluster's jobs, stop slurmd, slurmctld and munged (in that order), then any stragglers."""
    slurmctld = cluster.daemons.get("slurmctld")
    if slurmctld is not None and slurmctld.poll() is None:
        active = cluster.job_ids()
        if active:
            cluster.client("scancel", *active)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while cluster.job_ids() and time.monotonic() < deadline:
                time.sleep(0.25)
    for name in ("slurmd", "slurmctld", "munged"):
        process = cluster.daemons.get(name)
        if process is None or process.poll() is not None:
            continue
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
    # A slurmstepd outlives slurmd by design (it finishes its step); with the cluster gone, end it.
    _kill_and_wait(cluster_processes(cluster.marker), cluster.marker)


@contextlib.contextmanager
def running_cluster(root: Path | None = None) -> Iterator[SlurmCluster]:
    """A single-node SLURM cluster, up and idle inside the block and fully gone after it.

    `root` holds the cluster's state; by default a fresh directory under the system temp dir (it must be
    traversable by the munge user, which pytest's 0700 tmp_path is not) that is removed afterwards.
    Raises ClusterError (naming the daemon and its log) when the cluster does not come up or go down.
    """
    ensure_installed()
    if os.geteuid() != 0:
        pytest.skip("SLURM test cluster needs root: slurmd launches jobs and munged runs as the munge user")
    with _exclusive_machine_lock():
        owned_root = root is None
        root = Path(tempfile.mkdtemp(prefix=STATE_DIR_PREFIX)) if root is None else root
        root.chmod(0o755)
        for sub in ("state", "spool", "log"):
            (root / sub).mkdir(exist_ok=True)
        node = socket.gethostname().split(".")[0]
        cluster = SlurmCluster(root=root, node=node, partition=PARTITION, marker=str(root.resolve()))
        try:
            munge_socket = _start_munged(cluster)
            with _installed_conf(slurm_conf(cluster, munge_socket, node_hardware())) as conf:
                try:
                    _start(cluster, "slurmctld", [daemon("slurmctld"), "-D", "-c", "-f", str(conf)])
                    _wait_for(cluster, "slurmctld to answer sinfo", lambda: cluster.client("sinfo").returncode == 0)
                    _start(cluster, "slurmd", [daemon("slurmd"), "-D", "-f", str(conf), "-N", node])
                    _wait_for(cluster, f"node {node} to be idle", lambda: cluster.node_state() == "idle")
                    yield cluster
                finally:
                    _stop(cluster)  # while slurm.conf is still there for scancel and squeue
        finally:
            _stop(cluster)  # munged alone, when slurm.conf could not be written
            leftovers = cluster_processes(cluster.marker)
            if leftovers:
                raise ClusterError(f"processes of the test cluster still running after teardown: {leftovers}")
            if owned_root:
                shutil.rmtree(root, ignore_errors=True)
