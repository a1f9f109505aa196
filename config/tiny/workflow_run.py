"""What the ship scripts share: running the workflow's own rules in a scratch directory, and naming the machine."""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def made_with(script: str, threads: int) -> dict[str, str]:
    """The provenance a shipped recipe records: the command, the machine, its torch kernel set and the torch build."""
    import torch

    return {
        "command": f"python config/tiny/{script}",
        "machine": f"{platform.machine()} {cpu_name()}, {threads} thread{'s' if threads > 1 else ''}",
        "kernels": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
    }


def check_only(doc: str, what: str) -> bool:
    """Parse a ship script's command line: True with --check (compare a fresh run with the shipped files)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help=f"compare a fresh {what} with the shipped files")
    return parser.parse_args().check


def default_config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def run_targets(config: dict[str, Any], work: Path, targets: list[str], cores: int = 2) -> None:
    """Build `targets` (paths under `work`) with the repository's Snakefile and `config`, on the CPU."""
    (work / "config.yaml").write_text(yaml.safe_dump({**config, "device": "cpu"}))
    # Targets first: --quiet takes any number of values after it.
    command = [sys.executable, "-m", "snakemake", *targets, "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(work), "--configfile", str(work / "config.yaml"), "--cores", str(cores), "--quiet"]  # fmt: skip
    subprocess.run(command, check=True)
