"""Give each GPU job a device of its own on a workstation: an exclusive file lock per device.

Snakemake's `--resources gpu=N` bounds how many GPU jobs run at once, but not which device each uses.
A job takes the first free device of the pool (the entries of an existing CUDA_VISIBLE_DEVICES, else
the GPUs `nvidia-smi` lists), holds an `flock` on `<lease_dir>/<host>-<device>.lock` for its whole life
and sets CUDA_VISIBLE_DEVICES to that one device before CUDA starts. The kernel drops the lock when the
process ends, however it ends, so a crashed or killed job never keeps a device.

Inside a SLURM allocation (SLURM_JOB_ID set) SLURM has already chosen the devices; the pool is not
leased there, and CUDA_VISIBLE_DEVICES is left as SLURM set it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_LEASE_DIR = Path(".snakemake") / "gpu-leases"
LEASE_DIR_ENV = "MERGEFLOW_LEASE_DIR"
# Devices whose requested device string may be leased: an explicit cuda:N is the user's own choice.
LEASABLE_REQUESTS = ("auto", "cuda")


@dataclass
class Lease:
    """A held device lock; the open file descriptor is the lock."""

    device: str
    path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def device_pool(env: Mapping[str, str] | None = None) -> list[str]:
    """The devices this job may choose from: CUDA_VISIBLE_DEVICES's entries if set, else nvidia-smi's GPUs.

    An empty or "-1" CUDA_VISIBLE_DEVICES means no GPU; no nvidia-smi means no GPU either.
    """
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
        return [] if entries in ([], ["-1"]) else entries
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, check=False
    )
    return [line.strip() for line in listing.stdout.splitlines() if line.strip()] if listing.returncode == 0 else []


def _lock_path(lease_dir: Path, device: str) -> Path:
    # The host name keeps two machines sharing a working directory (NFS) from contending for each other's GPUs.
    safe_device = "".join(c if c.isalnum() or c in "-_" else "_" for c in device)
    return lease_dir / f"{socket.gethostname()}-{safe_device}.lock"


def try_acquire(lease_dir: Path, devices: Sequence[str]) -> Lease | None:
    """The first device of `devices` whose lock is free, locked; None when every device is held."""
    lease_dir.mkdir(parents=True, exist_ok=True)
    for device in devices:
        path = _lock_path(lease_dir, device)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        return Lease(device, path, fd)
    return None


def acquire(lease_dir: Path, devices: Sequence[str], *, poll_seconds: float = 1.0, report_every: float = 60.0) -> Lease:
    """Wait for a free device. Waiting only happens when more GPU jobs run than there are devices
    (`--resources gpu=N` larger than the pool), and it is logged so that such a run does not look hung."""
    if not devices:
        raise ValueError("no devices to lease")
    started = last_report = time.monotonic()
    while (lease := try_acquire(lease_dir, devices)) is None:
        now = time.monotonic()
        if now - last_report >= report_every:
            log.warning("all %d GPUs %s are leased; waited %.0f s so far", len(devices), list(devices), now - started)
            last_report = now
        time.sleep(poll_seconds)
    return lease


_held: list[Lease] = []


def lease_device_for_job(requested: str, env: dict[str, str] | None = None) -> Lease | None:
    """Pin this process to one free GPU by setting CUDA_VISIBLE_DEVICES; call before CUDA is initialised.

    Does nothing for an explicit device (`cpu`, `cuda:N`), inside a SLURM job, or when no GPU is visible.
    The lease lasts until the process exits.
    """
    env = os.environ if env is None else env
    if requested not in LEASABLE_REQUESTS or "SLURM_JOB_ID" in env:
        return None
    devices = device_pool(env)
    if not devices:
        return None
    lease = acquire(Path(env.get(LEASE_DIR_ENV, DEFAULT_LEASE_DIR)), devices)
    env["CUDA_VISIBLE_DEVICES"] = lease.device
    _held.append(lease)
    return lease
