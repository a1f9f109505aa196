"""The real workflow as SLURM jobs on a single-node cluster started on this machine (tests/slurm_cluster.py).

A reduced tiny benchmark (2 tasks, 2 methods, `device: cpu` so that no job asks the GPU-less cluster for
a GPU) runs twice from scratch: locally with `--cores 2`, and through `profiles/slurm` with the
partition placeholder overridden to the test partition and no account. The SLURM run must have run every
job inside a SLURM allocation (each rule's log names its SLURM_JOB_ID, a job the cluster knows), produce
the same main table byte for byte (CPU results are deterministic), and support `snakemake --report`.
The cluster needs root; it is installed with apt-get when missing (see slurm_cluster.ensure_installed).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from slurm_cluster import SLURM_CONF, SlurmCluster, cluster_processes, is_alive, running_cluster
from test_integration_workflow import REDUCED_CONFIG, deep_update

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = REPO / "profiles" / "slurm"
TASKS = ["colours", "orientation"]
CONFIG = deep_update(
    REDUCED_CONFIG,
    {
        "benchmark": "slurm2",
        "device": "cpu",
        "tasks": TASKS,
        "methods": {"weight_averaging": {}, "cart": {"rank": [0.0, 1.0], "lam": [1.0, 2.0]}},
    },
)
MAIN_TABLE = Path("results/slurm2/mini-clip/tables/main.csv")
# Rules every run of this config has; the full set of jobs is whatever the local run ran.
CORE_RULES = {"prepare_data", "pretrain", "build_head", "finetune", "evaluate_reference", "decompose", "merge_eval"}
STATUS_INTERVAL_S = 5
JOB_ID_LINE = re.compile(r"SLURM_JOB_ID=(\d+)")


def snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Snakemake on the test config in `workdir`, with no SLURM job context inherited from the caller."""
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"), *args,
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir)


def slurm_args(cluster: SlurmCluster) -> list[str]:
    """The SLURM profile, with its placeholders replaced on the command line as a user would.

    A command-line --default-resources replaces the profile's whole block, so this also drops the account
    (the test cluster has none: the plugin then submits without -A). Status polling: the plugin polls
    squeue I s after a poll that found a job finished, then waits 10 s longer after each poll that found
    none (I+10, I+20, ...), so a job is seen I, 2I+10 or 3I+30 s after the previous completion. Each job
    here takes 13-14 s from sbatch to its end (two Snakemake start-ups and the mergeflow verb), so I = 5
    (the default is 40) sees it after 20 s with 6 s to spare, where I = 1 would just miss 12 s and wait 33.
    """
    return [
        "--workflow-profile", str(SLURM_PROFILE),
        "--default-resources", f"slurm_partition={cluster.partition}", "mem_mb=1000", "runtime=30",
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", str(STATUS_INTERVAL_S),
        "--slurm-keep-successful-logs",
    ]  # fmt: skip


def new_workdir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    workdir = tmp_path_factory.mktemp(name)
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return workdir


def require_tools() -> None:
    if shutil.which("mergeflow") is None:
        pytest.fail("the `mergeflow` command is not on PATH: install the package (pip install -e .) first")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.fail("snakemake-executor-plugin-slurm is not installed: pip install -e '.[test]'")


def rule_logs(workdir: Path) -> dict[str, str]:
    """Each job's log under results/logs, by its path relative to the run directory."""
    logs = (workdir / "results" / "logs").rglob("*.log")
    return {str(log.relative_to(workdir)): log.read_text(errors="replace") for log in sorted(logs)}


def conf_state() -> bytes | None:
    return SLURM_CONF.read_bytes() if SLURM_CONF.exists() else None


def test_cluster_runs_jobs_and_teardown_leaves_nothing_behind(tmp_path: Path) -> None:
    """The fixture's own contract: a batch job runs a nested srun; teardown cancels a job still running,
    stops every daemon and slurmstepd, and puts /etc/slurm/slurm.conf back as it was."""
    conf_before = conf_state()
    with running_cluster() as cluster:
        assert set(cluster.daemons) == {"munged", "slurmctld", "slurmd"}
        assert cluster.node_state() == "idle"
        sbatch = ["sbatch", "--parsable", "--partition", cluster.partition, "--mem", "100", "--time", "5"]
        running = cluster.client(*sbatch, "--output", "/dev/null", "--wrap", "srun --ntasks 1 sleep 300")
        out = tmp_path / "job.out"
        wrap = "echo SLURM_JOB_ID=$SLURM_JOB_ID; srun --ntasks 1 hostname"
        finished = cluster.client(*sbatch, "--output", str(out), "--wrap", wrap)
        assert running.returncode == 0 and finished.returncode == 0, running.stderr + finished.stderr
        job_id = finished.stdout.strip().split(";")[0]
        deadline = time.monotonic() + 60
        while "COMPLETED" not in cluster.client("squeue", "-h", "-j", job_id, "-t", "all", "-o", "%T").stdout:
            assert time.monotonic() < deadline, f"job {job_id} did not complete\n{cluster.diagnostics()}"
            time.sleep(0.25)
        assert out.read_text().split() == [f"SLURM_JOB_ID={job_id}", cluster.node]
        processes = cluster_processes(cluster.marker)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() for pid in processes]
        assert any(command.startswith("slurmstepd") for command in commands), commands  # the sleeping job
        assert any(command.endswith("sleep") for command in commands), commands
    assert [pid for pid in processes if is_alive(pid)] == []
    assert cluster_processes(cluster.marker) == []
    assert conf_state() == conf_before


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    """One cluster for the workflow tests; on teardown, every daemon it started must be gone."""
    require_tools()
    conf_before = conf_state()
    with running_cluster() as running:
        pids = [process.pid for process in running.daemons.values()]
        yield running
    alive = [pid for pid in pids if is_alive(pid)]
    assert alive == [], f"daemons of the test cluster still running: {alive}"
    assert cluster_processes(running.marker) == []
    assert conf_state() == conf_before, f"{SLURM_CONF} not restored"


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools()
    workdir = new_workdir(tmp_path_factory, "local")
    run = snakemake(workdir, "--cores", "2")
    assert run.returncode == 0, run.stderr[-5000:]
    return workdir


@pytest.fixture(scope="module")
def slurm_run(cluster: SlurmCluster, local_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same workflow as SLURM jobs (after the local run, so that the two never share the 2 cores)."""
    workdir = new_workdir(tmp_path_factory, "slurm")
    run = snakemake(workdir, *slurm_args(cluster))
    assert run.returncode == 0, f"{run.stderr[-6000:]}\n{cluster.diagnostics()}"
    (workdir / "snakemake.log").write_text(run.stderr)
    return workdir


def test_every_rule_ran_as_its_own_slurm_job(slurm_run: Path, local_run: Path, cluster: SlurmCluster) -> None:
    logs = rule_logs(slurm_run)
    assert sorted(logs) == sorted(rule_logs(local_run)), "the SLURM run ran other jobs than the local run"
    assert CORE_RULES <= {Path(name).parts[2] for name in logs}, sorted(logs)
    job_ids = {}
    for name, text in logs.items():
        found = JOB_ID_LINE.findall(text)
        assert len(found) == 1, f"{name}: expected one SLURM_JOB_ID= line, found {found}"
        job_ids[name] = found[0]
    assert len(set(job_ids.values())) == len(job_ids), f"jobs shared an allocation: {job_ids}"
    known = set(cluster.job_ids(finished=True))
    assert set(job_ids.values()) <= known, f"job ids the test cluster never ran: {job_ids}, cluster: {known}"
    # The plugin submitted each of them with its own sbatch (one sbatch log per job).
    assert len(list((slurm_run / ".snakemake" / "slurm_logs").rglob("*.log"))) == len(logs)


def test_job_states_came_from_squeue(slurm_run: Path) -> None:
    """The plugin falls back to sacct when it judges MinJobAge too short for squeue; the cluster's 3600 s is not."""
    log = (slurm_run / "snakemake.log").read_text()
    assert "Falling back to 'sacct'" not in log
    assert "--slurm-status-command squeue" in log


def test_local_run_is_not_a_slurm_job(local_run: Path) -> None:
    logs = rule_logs(local_run)
    assert logs
    assert [name for name, text in logs.items() if "SLURM_JOB_ID=" in text] == []


def test_slurm_table_equals_the_local_table_byte_for_byte(slurm_run: Path, local_run: Path) -> None:
    local = (local_run / MAIN_TABLE).read_bytes()
    assert local, "the local run wrote an empty table"
    assert (slurm_run / MAIN_TABLE).read_bytes() == local


@pytest.mark.parametrize("profile", ["slurm", "default"])
def test_report_of_the_slurm_run(slurm_run: Path, cluster: SlurmCluster, profile: str) -> None:
    """`--report` reads the SLURM run's metadata; with either profile it submits nothing."""
    report = slurm_run / f"report-{profile}.html"
    args = slurm_args(cluster) if profile == "slurm" else ["--workflow-profile", str(REPO / "profiles" / "default")]
    run = snakemake(slurm_run, *args, "--report", str(report), timeout=300)
    assert run.returncode == 0, run.stderr[-5000:]
    assert report.stat().st_size > 10_000
    assert "rank_sweep" in report.read_text(errors="replace")
