"""Which tasks of a run have a val split that is not exactly the one their experts held out, and why.

Read from each prepared task's `data` record (`mergeflow.data.load_data_record`) and the run's expert source; the
judgement itself is `mergeflow.image_tasks.provenance.val_provenance`. Tiny tasks carry no record: their experts are
fine-tuned here, on the split our val was held out of.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import pandas as pd

from mergeflow.data import load_data_record
from mergeflow.image_tasks.provenance import val_provenance

APPROXIMATE_MARK = "†"


def task_provenance(tasks: Sequence[str], data_dirs: Sequence[str | os.PathLike[str]], experts: str) -> pd.DataFrame:
    """One row per task: its data source and version, and whether its val is exactly the experts'."""
    rows = []
    for task, directory in zip(tasks, data_dirs, strict=True):
        record = load_data_record(directory)
        if record is None:
            reason = "generated here; the experts are fine-tuned on the rest of its training split"
            rows.append({"task": task, "data_source": "tiny", "data_version": "", "val_exact": True,
                         "val_reason": reason})  # fmt: skip
            continue
        source = str(record.get("source"))
        version = record.get("commit") or record.get("torchvision") or record.get("root") or ""
        val = val_provenance(task, source, experts)
        rows.append({"task": task, "data_source": source, "data_version": str(version), "val_exact": val.exact,
                     "val_reason": val.reason})  # fmt: skip
    return pd.DataFrame(rows, columns=["task", "data_source", "data_version", "val_exact", "val_reason"])


def approximate_val(provenance: pd.DataFrame) -> Mapping[str, str]:
    """task -> why its val is approximate, for the tasks whose val is not the experts' own."""
    inexact = provenance[~provenance["val_exact"].astype(bool)]
    return dict(zip(inexact["task"], inexact["val_reason"], strict=True))


def approximate_val_note(approximate: Mapping[str, str], experts: str) -> str | None:
    """The note under a table whose task columns carry the mark."""
    if not approximate:
        return None
    reasons = "; ".join(f"{task}: {reason}" for task, reason in approximate.items())
    return (
        f"{APPROXIMATE_MARK} val approximate: these tasks' val split is not shown to be the one the {experts} "
        f"experts held out, so hyper-parameters selected on it may favour what the experts saw in training "
        f"({reasons})."
    )
