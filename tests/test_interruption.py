"""A run killed with SIGKILL (the whole Snakemake process group, as a lost node or an OOM kill would) during a
fine-tuning job and again during a merge_eval sweep resumes to exactly the bytes of an uninterrupted run; a
second Snakemake started in the same directory while the resumed run works is refused and changes nothing."""

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
# The shipped θ_0 still matches (model, pretrain and domain style unchanged); everything else is small.
CONFIG = copy.deepcopy(DEFAULT)
CONFIG.update(
    benchmark="interrupted",
    tasks=["shapes", "colours"],
    multitask=False,
    methods={
        "weight_averaging": {},
        "task_arithmetic": {"lam": [0.2, 0.3, 0.5]},
        "cart": {"rank": [0.0, 0.1, 0.5], "lam": [1.0, 2.0, 4.0]},
    },
)
CONFIG["data"].update(train_size=300, val_size=30, test_size=100)
# Never the shipped encoders: the first kill lands while a task fine-tunes.
CONFIG["finetune"].update(steps=60, batch_size=32, shipped=None)
# Run records (logs, timings) legitimately differ between runs; every other file must be identical.
VARYING = ("logs", "benchmarks")


def command(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]  # fmt: skip


def unlock(workdir: Path) -> None:
    """What a user does after a crash: the killed Snakemake left its lock behind."""
    run = subprocess.run(command(workdir, "--unlock"), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]


def run_to_end(workdir: Path) -> None:
    unlock(workdir)
    run = subprocess.run(command(workdir), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-5000:]


def start_until_running(workdir: Path, rule: str, settle: float) -> subprocess.Popen:
    """Start the workflow in its own process group; return `settle` seconds after a `rule` job logged its
    first line (the job is running), or at once when an earlier run's `rule` log is already there."""
    unlock(workdir)
    logs = workdir / "results" / "logs" / rule
    before = {path: path.stat().st_size for path in logs.rglob("*.log")} if logs.is_dir() else {}
    process = subprocess.Popen(command(workdir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while not before and not any(path.stat().st_size for path in logs.rglob("*.log")):
        assert process.poll() is None, f"the workflow ended before a {rule} job started"
        assert time.monotonic() < deadline, f"no {rule} job started within 10 minutes"
        time.sleep(0.01)
    time.sleep(settle)
    assert process.poll() is None, f"the workflow ended while its {rule} job ran"
    return process


def kill_when_running(workdir: Path, rule: str, settle: float) -> None:
    process = start_until_running(workdir, rule, settle)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    time.sleep(1.0)  # forked jobs see their client's socket close and are killed


def outputs(workdir: Path) -> dict[str, bytes]:
    results = workdir / "results"
    return {
        str(path.relative_to(results)): path.read_bytes()
        for path in sorted(results.rglob("*"))
        if path.is_file() and path.relative_to(results).parts[0] not in VARYING
    }


def test_killed_runs_resume_to_the_bytes_of_an_uninterrupted_run(tmp_path: Path) -> None:
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    for workdir in (reference, interrupted):
        workdir.mkdir()
        (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    run_to_end(reference)

    kill_when_running(interrupted, "finetune", settle=0.2)
    finetuned = list((interrupted / "results" / "finetuned").rglob("*.safetensors"))
    assert len(finetuned) < len(CONFIG["tasks"])  # killed before every encoder was written
    # Sweeps on this small config take about a second: kill as soon as one has started.
    kill_when_running(interrupted, "merge_eval", settle=0.0)
    evaluations = interrupted / "results" / "interrupted" / "tiny-clip" / "eval"
    assert [method for method in CONFIG["methods"] if not (evaluations / f"{method}.csv").exists()]

    resumed = start_until_running(interrupted, "merge_eval", settle=0.0)
    locks = interrupted / ".snakemake" / "locks"
    deadline = time.monotonic() + 120
    while not (locks.is_dir() and any(locks.iterdir())):
        assert resumed.poll() is None and time.monotonic() < deadline, "the resumed run never locked its directory"
        time.sleep(0.05)
    second = subprocess.run(command(interrupted), capture_output=True, text=True, timeout=120)
    assert second.returncode != 0 and "Directory cannot be locked" in second.stderr
    assert "Traceback" not in second.stderr
    _, errors = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, errors[-5000:]

    expected, actual = outputs(reference), outputs(interrupted)
    assert any(name.endswith("tables/main.csv") for name in expected)
    assert sorted(actual) == sorted(expected)
    assert [name for name in expected if actual[name] != expected[name]] == []
    assert not [path for path in (interrupted / "results").rglob("*") if path.name.endswith(".tmp")]
