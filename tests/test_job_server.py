"""The warm job server with real processes: a forked job gives the bytes, exit status and log of a new process,
dies with its client, declines what it cannot run faithfully, and the server dies with the workflow."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mergeflow.io import load_state_dict
from mergeflow.shell.job_server import import_sensitive_difference, start, stop_server
from mergeflow.shell.launcher import SERVER_ENV

ARCH = {
    "image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "embed_dim": 16,
    "context_length": 12, "text_width": 32, "text_layers": 1, "text_heads": 2,
}  # fmt: skip


def pretrain_command(out: Path, steps: int) -> list[str]:
    return [
        "mergeflow", "pretrain", "--name", "toy", "--architecture", json.dumps(ARCH), "--tasks", "shapes", "colours",
        "--images-per-task", "40", "--steps", str(steps), "--batch-size", "16", "--lr", "1e-3", "--seed", "3",
        "--threads", "1", "--no-progress", "--out", str(out),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def server():
    process = start(timeout_s=120)
    address = os.environ[SERVER_ENV]
    assert os.path.exists(address), "the job server did not come up within 120 s"
    yield address
    stop_server(process)
    assert process.returncode == 0
    assert not os.path.exists(os.path.dirname(address))


def run(command: list[str], address: str | None, log: Path) -> int:
    env = {key: value for key, value in os.environ.items() if key not in (SERVER_ENV, "SLURM_JOB_ID")}
    if address:
        env[SERVER_ENV] = address
    with open(log, "w") as handle:
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=300).returncode


def test_a_forked_job_writes_the_bytes_of_a_new_process(server: str, tmp_path: Path) -> None:
    assert run(pretrain_command(tmp_path / "forked", 4), server, tmp_path / "forked.log") == 0
    assert run(pretrain_command(tmp_path / "alone", 4), None, tmp_path / "alone.log") == 0
    for name in ("pretrained.safetensors", "text.safetensors", "model.json"):
        assert (tmp_path / "forked" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes(), name
    forked_log = (tmp_path / "forked.log").read_text()
    assert "forked by the mergeflow job server" in forked_log
    assert "pretrain loss: first" in forked_log  # the job's own log lines land in the client's stderr
    assert "job server" not in (tmp_path / "alone.log").read_text()
    # A second job from the same server starts from the same untouched state.
    assert run(pretrain_command(tmp_path / "again", 4), server, tmp_path / "again.log") == 0
    again = load_state_dict(tmp_path / "again" / "pretrained.safetensors")
    alone = load_state_dict(tmp_path / "alone" / "pretrained.safetensors")
    assert all(again[key].equal(alone[key]) for key in alone)


def test_exit_status_and_error_message_come_back(server: str, tmp_path: Path) -> None:
    absent = str(tmp_path / "absent.safetensors")
    command = ["mergeflow", "merge", "--method", "weight_averaging", "--pretrained", absent, "--finetuned", absent,
               "--output", str(tmp_path / "out.safetensors")]  # fmt: skip
    forked = run(command, server, tmp_path / "forked.log")
    alone = run(command, None, tmp_path / "alone.log")
    assert forked == alone != 0
    assert "absent.safetensors" in (tmp_path / "forked.log").read_text()
    assert run(["mergeflow", "no-such-verb"], server, tmp_path / "usage.log") == 2
    assert "invalid choice" in (tmp_path / "usage.log").read_text()


def test_a_job_dies_with_its_client_and_leaves_no_output(server: str, tmp_path: Path) -> None:
    env = dict(os.environ, **{SERVER_ENV: server})
    out = tmp_path / "model"
    log = open(tmp_path / "job.log", "w")
    client = subprocess.Popen(pretrain_command(out, 100000), stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while "forked by the mergeflow job server" not in (tmp_path / "job.log").read_text():
        assert time.monotonic() < deadline and client.poll() is None, (tmp_path / "job.log").read_text()
        time.sleep(0.1)
    job_pid = int(re.search(r"forked by the mergeflow job server as pid (\d+)", (tmp_path / "job.log").read_text())[1])
    assert job_pid != client.pid and _alive(job_pid)
    client.send_signal(signal.SIGKILL)
    client.wait()
    deadline = time.monotonic() + 10
    while _alive(job_pid):
        assert time.monotonic() < deadline, "the job outlived its client by 10 s"
        time.sleep(0.1)
    assert not (out / "pretrained.safetensors").exists()


def test_a_job_with_different_import_time_settings_is_declined_and_runs_itself(server: str, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "SLURM_JOB_ID"}
    env.update({SERVER_ENV: server, "HF_HOME": str(tmp_path / "elsewhere")})
    with open(tmp_path / "job.log", "w") as handle:
        command = pretrain_command(tmp_path / "model", 2)
        status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    log = (tmp_path / "job.log").read_text()
    assert status.returncode == 0, log
    assert "job server declined" in log and "HF_HOME" in log
    assert "forked by the mergeflow job server" not in log
    assert (tmp_path / "model" / "pretrained.safetensors").exists()


def test_only_import_time_variables_count() -> None:
    server = {"HF_HOME": "/a", "OMP_NUM_THREADS": "4", "PATH": "/bin"}
    job = {"HF_HOME": "/a", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin", "PYTHONPATH": "/src"}
    assert import_sensitive_difference(server, job) == ["PYTHONPATH"]
    assert import_sensitive_difference(server, {**job, "HF_HOME": "/b", "PYTHONPATH": ""}) == ["HF_HOME", "PYTHONPATH"]
    avx2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    assert import_sensitive_difference(server, {**server, **avx2}) == sorted(avx2)  # another CPU kernel set


def test_the_server_exits_when_its_workflow_is_gone(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from mergeflow.shell.job_server import start\n"
        "server = start(timeout_s=120)\n"
        f"print(server.pid, os.environ[{SERVER_ENV!r}], flush=True)\n"
        "os._exit(0)\n"  # as Snakemake killed by SIGKILL: no onsuccess/onerror hook runs
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    pid_text, address = output.stdout.split()
    deadline = time.monotonic() + 15
    while _alive(int(pid_text)):
        assert time.monotonic() < deadline, "the job server outlived its workflow by 15 s"
        time.sleep(0.2)
    assert not os.path.exists(address)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"
