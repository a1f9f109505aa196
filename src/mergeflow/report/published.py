"""Published average accuracies, for the "published" column of the tables and our difference from it.

`published.csv` (package data beside this module) holds the average absolute test accuracy (%) that the
CART authors report (arXiv 2412.12153) for open_clip ViT-B-32 and ViT-L-14 with OpenAI weights on the
8-, 14- and 20-task benchmarks, plus TSV-M on ViT-B-32, one row per (model, num_tasks, method) with its
source. Methods use `mergeflow` names; `zeroshot` and `individual` are the reference rows.

A published number applies to a run only when the run's model is that open_clip model with OpenAI weights
(the caller decides that and passes the model name) and its tasks are exactly the paper's suite of that
size (checked here against `mergeflow.image_tasks.registry.TASK_GROUPS`). A method entry with a variant
(`cart@released`) takes its own row if the file has one, else its base method's: the authors' released
settings are what produced their table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeVar

import pandas as pd

from mergeflow.image_tasks.registry import TASK_GROUPS
from mergeflow.io import InputError
from mergeflow.report.results import PathLike, read_text_csv

T = TypeVar("T", int, float)

PUBLISHED_COLUMNS = ("model", "num_tasks", "method", "average_accuracy", "source")


@dataclass(frozen=True)
class PublishedNumber:
    average_accuracy: float  # percent
    source: str


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
    empty = frame.index[(frame["model"] == "") | (frame["method"] == "") | (frame["source"] == "")]
    if len(empty):
        raise InputError(f"{path}: line {empty[0] + 2} has an empty model, method or source; expected all three")
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


def published_averages(published: pd.DataFrame, model: str | None, tasks: Sequence[str]) -> dict[str, PublishedNumber]:
    """Method → published number for a run of `model` on `tasks`; empty when none applies.

    `model` is None for models the paper did not evaluate (the tiny model, other pretrained weights).
    """
    if model is None or set(tasks) != set(TASK_GROUPS.get(len(tasks), ())):
        return {}
    rows = published[(published["model"] == model) & (published["num_tasks"] == len(tasks))]
    return {row.method: PublishedNumber(float(row.average_accuracy), str(row.source)) for row in rows.itertuples()}


def published_for(method: str, numbers: Mapping[str, PublishedNumber]) -> PublishedNumber | None:
    """The published number of a method entry: its own, else (for a variant `name@label`) its base method's."""
    if method in numbers:
        return numbers[method]
    return numbers.get(method.partition("@")[0])
