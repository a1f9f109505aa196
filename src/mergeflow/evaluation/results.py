"""Load and validate the evaluation CSVs that every report table and figure is built from.

Both loaders return typed frames (floats, booleans, stripped strings) so that the
table and figure code can trust their inputs; anything malformed is an `InputError`
that names the file and says what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mergeflow.io import InputError

PathLike = str | os.PathLike[str]

SPLITS = ("val", "test")
REFERENCE_COLUMNS = ("task", "split", "zeroshot", "individual")
# The multi-task encoder's accuracy, in runs that train one (config `multitask`).
MULTITASK_COLUMN = "multitask"
RESULT_COLUMNS = (
    "method",
    "setting",
    "rank",
    "lam",
    "split",
    "task",
    "accuracy",
    "normalized_accuracy",
    "best",
    "best_at_sweep",
)
# Added by `load_method_results` so that later errors can name the file a row came from.
SOURCE_COLUMN = "source"

_TRUE_TEXT = frozenset({"true", "1"})
_FALSE_TEXT = frozenset({"false", "0"})


def load_reference(path: PathLike) -> pd.DataFrame:
    """Read `reference.csv`: zero-shot and individual fine-tuned accuracy per (task, split), and the multi-task
    encoder's (column `multitask`) when the file has it.

    The file path is kept in `frame.attrs["source"]` for error messages downstream.
    """
    frame = read_text_csv(path, REFERENCE_COLUMNS)
    _check_splits(frame, path)
    columns = [*REFERENCE_COLUMNS, *([MULTITASK_COLUMN] if MULTITASK_COLUMN in frame.columns else [])]
    for column in columns[2:]:
        frame[column] = _parse_floats(frame, column, path, allow_missing=False, upper=1.0)
    not_positive = frame.index[frame["individual"] <= 0]
    if len(not_positive):
        raise InputError(
            f"{path}: column 'individual' must be > 0 (it divides normalized accuracy); "
            f"line {_line_number(not_positive[0])} has {frame.at[not_positive[0], 'individual']}"
        )
    _check_unique_rows(frame, ["task", "split"], path)
    reference = frame.loc[:, columns].reset_index(drop=True)
    reference.attrs["source"] = str(path)
    return reference


def individual_accuracies(path: PathLike, tasks: Sequence[str]) -> dict[str, dict[str, float]]:
    """Split → task → the individual model's accuracy, from `evaluate-reference`'s CSV (the normalisers)."""
    table = load_reference(path)
    reference = {split: dict(zip(group["task"], group["individual"])) for split, group in table.groupby("split")}
    missing = [t for t in tasks if t not in reference.get("val", {}) or t not in reference.get("test", {})]
    if missing:
        raise InputError(f"{path}: no val/test rows for tasks {missing}")
    return reference


def load_method_results(paths: Sequence[PathLike], tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Read one CSV per merging method and concatenate them in the given order.

    With `tasks`, every file must hold exactly those tasks; without, every setting and
    split of a file must hold the same tasks as the rest of that file. A `source`
    column records the file of each row.
    """
    if not paths:
        raise InputError("no method result files given (expected one CSV per merging method)")
    frames = [_load_method_file(path, tasks) for path in paths]
    _check_one_file_per_method(frames)
    return pd.concat(frames, ignore_index=True)


def source_of(results: pd.DataFrame, method: str) -> str:
    """The file `method`'s rows were read from, for error messages (frames built in memory have none)."""
    if SOURCE_COLUMN in results:
        return str(results.loc[results["method"] == method, SOURCE_COLUMN].iloc[0])
    return f"method {method}"


def _load_method_file(path: PathLike, tasks: Sequence[str] | None) -> pd.DataFrame:
    frame = read_text_csv(path, RESULT_COLUMNS)
    _check_splits(frame, path)
    frame["rank"] = _parse_floats(frame, "rank", path, allow_missing=True, upper=1.0)
    frame["lam"] = _parse_floats(frame, "lam", path, allow_missing=True, upper=None)
    frame["accuracy"] = _parse_floats(frame, "accuracy", path, allow_missing=False, upper=1.0)
    frame["normalized_accuracy"] = _parse_floats(frame, "normalized_accuracy", path, allow_missing=False, upper=None)
    frame["best"] = _parse_bools(frame, "best", path)
    frame["best_at_sweep"] = _parse_bools(frame, "best_at_sweep", path)
    methods = list(pd.unique(frame["method"]))
    if len(methods) != 1:
        raise InputError(f"{path}: column 'method' holds {methods}; expected exactly one method per file")
    _check_unique_rows(frame, ["setting", "split", "task"], path)
    _check_task_coverage(frame, path, tasks)
    _check_best_rows(frame, path)
    _check_sweep_rows(frame, path)
    results = frame.loc[:, list(RESULT_COLUMNS)].reset_index(drop=True)
    results[SOURCE_COLUMN] = str(path)
    return results


def read_sweep_table(path: PathLike) -> pd.DataFrame:
    """A table `merge-eval` wrote, every float exactly as written (Python's own parser), for `combine-sweep`.

    Unlike `load_method_results`, which validates for the report, this keeps the values bit for bit, so that a
    table rewritten from parts has the bytes a single job would have written.
    """
    table = read_text_csv(path, RESULT_COLUMNS)
    for column in ("rank", "lam", "accuracy", "normalized_accuracy"):
        try:
            table[column] = [float(value) if value else float("nan") for value in table[column]]
        except ValueError as err:
            raise InputError(f"{path}: column {column!r} holds {err}, expected numbers") from None
    for column in ("best", "best_at_sweep"):
        try:
            table[column] = [{"True": True, "False": False}[value] for value in table[column]]
        except KeyError as err:
            raise InputError(f"{path}: column {column!r} holds {err}, expected True or False") from None
    return table


def read_text_csv(path: PathLike, columns: Sequence[str]) -> pd.DataFrame:
    """Read every cell as stripped text so that parsing, and its error messages, stay ours."""
    expected = ", ".join(columns)
    if not Path(path).is_file():
        raise InputError(f"{path}: file not found (expected a CSV with columns {expected})")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable CSV ({err}); expected columns {expected}") from None
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(repr(column) for column in missing)}; expected columns {expected}"
        )
    if frame.empty:
        raise InputError(f"{path}: no rows (expected columns {expected} and at least one row)")
    for column in columns:
        frame[column] = frame[column].str.strip()
    return frame


def _line_number(index: int) -> int:
    # Row 0 of the frame is line 2 of the file, after the header.
    return int(index) + 2


def _check_splits(frame: pd.DataFrame, path: PathLike) -> None:
    unknown = sorted(set(frame["split"]) - set(SPLITS))
    if unknown:
        raise InputError(
            f"{path}: column 'split' has unknown value(s) {', '.join(repr(v) for v in unknown)}; "
            f"expected one of {', '.join(SPLITS)}"
        )


def _parse_floats(
    frame: pd.DataFrame, column: str, path: PathLike, *, allow_missing: bool, upper: float | None
) -> pd.Series:
    """Parse a numeric column; values must be >= 0 and, when `upper` is given, <= upper."""
    text = frame[column]
    values = pd.to_numeric(text.where(text != ""), errors="coerce").astype(float)
    missing = text == ""
    if not allow_missing and missing.any():
        line = _line_number(missing.idxmax())
        raise InputError(f"{path}: column {column!r} is empty on line {line}; expected a number")
    unparsable = values.isna() & ~missing & ~text.str.lower().isin({"nan"})
    if unparsable.any():
        bad = unparsable.idxmax()
        raise InputError(f"{path}: column {column!r} has {text[bad]!r} on line {_line_number(bad)}; expected a number")
    if not allow_missing and values.isna().any():
        raise InputError(
            f"{path}: column {column!r} is NaN on line {_line_number(values.isna().idxmax())}; expected a number"
        )
    bounds = f"between 0 and {upper:g}" if upper is not None else ">= 0"
    out_of_range = (values < 0) | (values > upper if upper is not None else False)
    if out_of_range.any():
        bad = out_of_range.idxmax()
        raise InputError(
            f"{path}: column {column!r} has {values[bad]!r} on line {_line_number(bad)}; expected a fraction {bounds}"
        )
    return values


def _parse_bools(frame: pd.DataFrame, column: str, path: PathLike) -> pd.Series:
    lowered = frame[column].str.lower()
    invalid = ~lowered.isin(_TRUE_TEXT | _FALSE_TEXT)
    if invalid.any():
        bad = invalid.idxmax()
        raise InputError(
            f"{path}: column {column!r} has {frame[column][bad]!r} on line {_line_number(bad)}; expected True or False"
        )
    return lowered.isin(_TRUE_TEXT).astype(bool)


def _check_unique_rows(frame: pd.DataFrame, key: list[str], path: PathLike) -> None:
    duplicated = frame.duplicated(subset=key, keep="first")
    if duplicated.any():
        bad = duplicated.idxmax()
        values = ", ".join(f"{column}={frame.at[bad, column]!r}" for column in key)
        raise InputError(f"{path}: line {_line_number(bad)} repeats {values}; expected one row per ({', '.join(key)})")


def _check_task_coverage(frame: pd.DataFrame, path: PathLike, tasks: Sequence[str] | None) -> None:
    expected = list(tasks) if tasks is not None else list(pd.unique(frame["task"]))
    if tasks is not None:
        unexpected = sorted(set(frame["task"]) - set(expected))
        if unexpected:
            raise InputError(
                f"{path}: unexpected task(s) {', '.join(unexpected)}; expected only the tasks {', '.join(expected)}"
            )
    for (setting, split), group in frame.groupby(["setting", "split"], sort=False):
        missing = [task for task in expected if task not in set(group["task"])]
        if missing:
            raise InputError(
                f"{path}: task(s) {', '.join(missing)} missing for setting {setting} on split {split}; "
                f"expected rows for every task: {', '.join(expected)}"
            )


def _check_best_rows(frame: pd.DataFrame, path: PathLike) -> None:
    best = frame[frame["best"]]
    best_test_settings = list(pd.unique(best.loc[best["split"] == "test", "setting"]))
    if not best_test_settings:
        raise InputError(f"{path}: no test rows with best=True; expected the test rows of the val-selected setting")
    if len(set(best["setting"])) != 1:
        raise InputError(
            f"{path}: best=True on settings {sorted(set(best['setting']))}; expected exactly one val-selected setting"
        )
    if not (best["split"] == "val").any():
        raise InputError(
            f"{path}: setting {best_test_settings[0]} has best=True but no val rows; "
            "expected the setting chosen on val to have its val rows marked best"
        )


def _check_sweep_rows(frame: pd.DataFrame, path: PathLike) -> None:
    sweep = frame[frame["best_at_sweep"]]
    settings_with_test = set(sweep.loc[sweep["split"] == "test", "setting"])
    without_test = [setting for setting in pd.unique(sweep["setting"]) if setting not in settings_with_test]
    if without_test:
        raise InputError(
            f"{path}: setting {without_test[0]} has best_at_sweep=True but no test rows; "
            "expected test rows for every best_at_sweep setting"
        )


def _check_one_file_per_method(frames: Sequence[pd.DataFrame]) -> None:
    source_of_method: dict[str, str] = {}
    for frame in frames:
        method = frame.at[0, "method"]
        source = frame.at[0, SOURCE_COLUMN]
        if method in source_of_method:
            raise InputError(
                f"{source}: method {method!r} was already read from {source_of_method[method]}; "
                "expected one file per method"
            )
        source_of_method[method] = source
