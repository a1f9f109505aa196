"""Run one benchmark case in a fresh Python interpreter and read its peak memory (shared by the benchmarks).

The case's script is rerun as `python <script> --child <case JSON>`; it prints a JSON object as its last
line. The peak RSS is the child's own `ru_maxrss`, read with `os.wait4` when it exits, so imports and
allocations of the parent never count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parent.parent / "src"


def measure_child(script: str, case: dict[str, Any], threads: int) -> dict[str, Any]:
    """The child's JSON result and its peak RSS in MiB (`peak_rss_mib`); RuntimeError if it fails."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(SRC)}
    child = subprocess.Popen(
        [sys.executable, script, "--child", json.dumps(case)], stdout=subprocess.PIPE, env=environment, text=True
    )
    output = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"case {case} failed with exit code {code}")
    return {**json.loads(output.strip().splitlines()[-1]), "peak_rss_mib": usage.ru_maxrss / 1024}
