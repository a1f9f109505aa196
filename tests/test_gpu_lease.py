"""GPU leases between real processes: concurrent jobs never share a device, a killed job's device is freed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mergeflow.runtime.gpu_lease import device_pool, lease_device_for_job, try_acquire

# A job: lease a device from a fake pool, record when it held which device, hold it for a while.
JOB = """
import json, os, sys, time
from mergeflow.runtime.gpu_lease import lease_device_for_job
lease = lease_device_for_job("auto")
start = time.time()
time.sleep(float(sys.argv[1]))
print(json.dumps({"device": os.environ["CUDA_VISIBLE_DEVICES"], "start": start, "end": time.time()}))
"""


def _job_env(lease_dir: Path, visible: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "SLURM_JOB_ID"}
    return env | {"CUDA_VISIBLE_DEVICES": visible, "MERGEFLOW_LEASE_DIR": str(lease_dir)}


def test_pool_comes_from_cuda_visible_devices():
    assert device_pool({"CUDA_VISIBLE_DEVICES": "0,1,3"}) == ["0", "1", "3"]
    assert device_pool({"CUDA_VISIBLE_DEVICES": "GPU-5f1c, MIG-2a"}) == ["GPU-5f1c", "MIG-2a"]
    assert device_pool({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert device_pool({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_concurrent_jobs_never_share_a_device(tmp_path):
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", JOB, "0.4"], env=_job_env(tmp_path, "4,7"), stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    records = [json.loads(job.communicate(timeout=60)[0]) for job in jobs]
    assert all(job.returncode == 0 for job in jobs)
    assert {record["device"] for record in records} == {"4", "7"}
    for device in ("4", "7"):
        spans = sorted((r["start"], r["end"]) for r in records if r["device"] == device)
        assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:])), spans
    # Six jobs on two devices: at least three rounds of 0.4 s, so jobs did wait for each other.
    assert max(r["end"] for r in records) - min(r["start"] for r in records) >= 1.1


def test_a_killed_jobs_lease_is_reclaimed(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", JOB, "120"], env=_job_env(tmp_path, "0"), stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    # The holder writes its pid into the lock file once it holds the lock.
    while not any(path.read_text().startswith("pid") for path in tmp_path.glob("*-0.lock")):
        assert time.monotonic() < deadline and holder.poll() is None, "the job never took its lease"
        time.sleep(0.05)
    assert try_acquire(tmp_path, ["0"]) is None, "the device must be held while the job lives"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    lease = try_acquire(tmp_path, ["0"])
    assert lease is not None and lease.device == "0"
    lease.release()


@pytest.mark.parametrize(
    ("requested", "env"),
    [
        ("cpu", {"CUDA_VISIBLE_DEVICES": "0,1"}),
        ("cuda:1", {"CUDA_VISIBLE_DEVICES": "0,1"}),
        ("auto", {"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_ID": "42"}),
        ("auto", {"CUDA_VISIBLE_DEVICES": ""}),
    ],
)
def test_no_lease_for_explicit_devices_inside_slurm_or_without_gpus(tmp_path, requested, env):
    env = env | {"MERGEFLOW_LEASE_DIR": str(tmp_path)}
    before = dict(env)
    assert lease_device_for_job(requested, env) is None
    assert env == before
    assert not any(tmp_path.iterdir())


def test_lease_pins_the_job_to_one_device_of_an_existing_selection(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "2,5", "MERGEFLOW_LEASE_DIR": str(tmp_path)}
    first = lease_device_for_job("auto", env)
    assert first is not None and env["CUDA_VISIBLE_DEVICES"] == "2"
    second_env = {"CUDA_VISIBLE_DEVICES": "2,5", "MERGEFLOW_LEASE_DIR": str(tmp_path)}
    second = lease_device_for_job("cuda", second_env)
    assert second is not None and second_env["CUDA_VISIBLE_DEVICES"] == "5"
    assert try_acquire(tmp_path, ["2", "5"]) is None
    first.release()
    second.release()
    assert try_acquire(tmp_path, ["2", "5"]).device == "2"
