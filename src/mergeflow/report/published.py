"""Published average accuracies, for the "published" column of the tables and our difference from it.

`published.csv` (package data beside this module) holds the average absolute test accuracy (%) that the
CART authors report (arXiv 2412.12153) for open_clip ViT-B-32 and ViT-L-14 with OpenAI weights on the
8-, 14- and 20-task benchmarks, plus TSV-M on ViT-B-32, one row per (model, num_tasks, method) with its
source. Methods use `mergeflow` names; `zeroshot`, `individual` and `multitask` (one encoder fine-tuned on all
tasks at once) are the reference rows.

Its `experts` column says whose fine-tuned encoders produced each number, in the names
`mergeflow.checkpoints.tables.expert_origin` gives our fetched experts: the CART table used the task_vectors
release for the 8 tasks and TALL masks' for the 12 added ones (CART README, github.com/JH-GEECS/CART @ 964cfd7,
L42-44), hence `task_vectors` for 8 tasks and `task_vectors+tall_masks` for 14 and 20; the TSV-M and Iso
numbers used TALL masks' (the CART table's ViT-B-32 TSV-M numbers are the TSV paper's own); zero-shot numbers
involve no experts (`none`). A multi-task number names `published_multitask`, the paper's own multi-task encoder:
ours is always fine-tuned by this pipeline (`mergeflow.training.multitask`), so that number is shown, never
compared. A difference from a published number is taken only when the run's experts are the
number's (`RunExperts`, read from the `<task>.json` records of `mergeflow fetch-finetuned`); otherwise the
number is still shown and the note says why no difference is.

A published number applies to a run only when the run's model is that open_clip model with OpenAI weights
(the caller decides that and passes the model name) and its tasks are exactly the paper's suite of that
size (checked here against `mergeflow.image_tasks.registry.TASK_GROUPS`). A method entry with a variant
(`cart@released`) takes its own row if the file has one, else its base method's: the authors' released
settings are what produced their table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from mergeflow.checkpoints.tables import EXPERTS_ORDER
from mergeflow.evaluation.results import PathLike, read_text_csv
from mergeflow.image_tasks.registry import TASK_GROUPS
from mergeflow.io import InputError, read_json

T = TypeVar("T", int, float)

PUBLISHED_COLUMNS = ("model", "num_tasks", "method", "average_accuracy", "experts", "source")
NO_EXPERTS = "none"  # the number involves no fine-tuned encoder (zero-shot), so it compares with any run
# Hub coordinates a record may hold, in the order a reader wants them.
_RECORD_COORDINATES = ("repo_id", "revision", "commit", "origin", "url")


@dataclass(frozen=True)
class PublishedNumber:
    average_accuracy: float  # percent
    source: str
    experts: str | None = None  # published.csv's `experts`; None: not stated
    comparable: bool = True  # whether our rows used the same experts, so that a difference means something


@dataclass(frozen=True)
class RunExperts:
    """Whose fine-tuned encoders produced our rows."""

    label: str | None  # in published.csv's `experts` names; None: not recorded
    description: str  # source, repository, revision asked for and commit resolved, for the table's note


def packaged_published_path() -> Path:
    """The reference CSV shipped with mergeflow."""
    return Path(str(resources.files("mergeflow.report").joinpath("published.csv")))


def load_published(path: PathLike) -> pd.DataFrame:
    """Read and check a published-numbers CSV: columns `PUBLISHED_COLUMNS`, one row per (model, num_tasks, method)."""
    frame = read_text_csv(path, PUBLISHED_COLUMNS).loc[:, list(PUBLISHED_COLUMNS)]
    frame["num_tasks"] = _parsed(frame["num_tasks"], int, lambda value: value > 0, "a positive whole number", path)
    frame["average_accuracy"] = _parsed(
        frame["average_accuracy"], float, lambda value: 0.0 <= value <= 100.0, "an accuracy in percent, 0-100", path
    )
    empty = frame.index[(frame[["model", "method", "experts", "source"]] == "").any(axis=1)]
    if len(empty):
        raise InputError(
            f"{path}: line {empty[0] + 2} has an empty model, method, experts or source; expected all four "
            f"(experts: whose fine-tuned encoders, e.g. tall_masks, or {NO_EXPERTS!r})"
        )
    repeated = frame.duplicated(subset=["model", "num_tasks", "method"])
    if repeated.any():
        line = int(repeated.idxmax()) + 2
        raise InputError(f"{path}: line {line} repeats a (model, num_tasks, method); expected one row each")
    return frame


def _parsed(
    column: pd.Series, parse: Callable[[str], T], valid: Callable[[T], bool], expected: str, path: PathLike
) -> list[T]:
    values = []
    for index, text in column.items():
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise InputError(f"{path}: column {column.name!r} has {text!r} on line {index + 2}; expected {expected}")
        values.append(value)
    return values


def published_averages(
    published: pd.DataFrame, model: str | None, tasks: Sequence[str], experts: RunExperts | None = None
) -> dict[str, PublishedNumber]:
    """Method → published number for a run of `model` on `tasks` with `experts`; empty when none applies.

    `model` is None for models the paper did not evaluate (the tiny model, other pretrained weights). A number
    is `comparable` when it involves no experts or the run's experts are its own; unknown experts (None) match
    nothing.
    """
    if model is None or set(tasks) != set(TASK_GROUPS.get(len(tasks), ())):
        return {}
    label = experts.label if experts else None
    rows = published[(published["model"] == model) & (published["num_tasks"] == len(tasks))]
    return {
        row.method: PublishedNumber(
            float(row.average_accuracy), str(row.source), str(row.experts), row.experts in (NO_EXPERTS, label)
        )
        for row in rows.itertuples()
    }


def published_for(method: str, numbers: Mapping[str, PublishedNumber]) -> PublishedNumber | None:
    """The published number of a method entry: its own, else (for a variant `name@label`) its base method's."""
    if method in numbers:
        return numbers[method]
    return numbers.get(method.partition("@")[0])


def unrecorded_experts() -> RunExperts:
    return RunExperts(
        None,
        "not recorded: no `<task>.json` fetch records were given (with finetuned.source finetune the experts are "
        "fine-tuned by this pipeline)",
    )


def _read_record(path: Path) -> dict[str, Any]:
    record = read_json(path)
    if not isinstance(record, dict):
        raise InputError(f"{path}: expected a JSON object written by `mergeflow fetch-finetuned`")
    missing = [key for key in ("task", "source", "experts") if not isinstance(record.get(key), str)]
    if missing:
        raise InputError(
            f"{path}: no {', '.join(missing)}; expected a record of `mergeflow fetch-finetuned` (fetch it again "
            "if it was written before records named their experts)"
        )
    return record


def run_experts(records: Sequence[PathLike]) -> RunExperts:
    """Our experts from the `<task>.json` records of the fetched encoders (one per task).

    The label joins the distinct `experts` of the records (task_vectors before tall_masks, others sorted by
    name), so a 14-task run on the CART authors' re-uploads reads `task_vectors+tall_masks`.
    """
    if not records:
        return unrecorded_experts()
    read = [_read_record(Path(path)) for path in records]
    names = {record["experts"] for record in read}
    ordered = [name for name in EXPERTS_ORDER if name in names] + sorted(names - set(EXPERTS_ORDER))
    groups: dict[str, list[str]] = {}
    for record in read:
        coordinates = ", ".join(f"{key} {record[key]}" for key in _RECORD_COORDINATES if record.get(key))
        where = f"{record['source']} ({coordinates})" if coordinates else str(record["source"])
        groups.setdefault(where, []).append(str(record["task"]))
    described = "; ".join(f"{where}: {', '.join(tasks)}" for where, tasks in groups.items())
    return RunExperts("+".join(ordered), described)


def experts_notes(numbers: Mapping[str, PublishedNumber], experts: RunExperts, methods: Iterable[str]) -> list[str]:
    """The table's notes: whose experts made our rows and, if any shown number was not compared, why not.

    `methods` are the table's method entries (`zeroshot`, `individual` and `multitask` for the reference rows).
    """
    notes = [f"Experts of our rows: {experts.description}."]
    shown = [number for number in (published_for(method, numbers) for method in methods) if number is not None]
    others = sorted({str(number.experts) for number in shown if not number.comparable})
    if others:
        ours = experts.label or "not recorded"
        notes.append(
            f"difference left empty where the published number was made with other experts ({', '.join(others)}) "
            f"than ours ({ours}): such numbers are shown, not compared."
        )
    return notes
