"""The main results table: one row per method, one column per task, in two metrics.

`main_table` builds a tidy frame in percent at full precision; the Markdown and
LaTeX renderings format exactly those numbers to one decimal, so every printed
number is the CSV value rounded. Absolute-accuracy rows carry the published
average (`mergeflow.report.published`) and our difference from it, where one applies.
Given each row's per-image test correctness (`mergeflow.evaluation.correctness`), every
number also gets a 95% bootstrap interval over test images, and every row the paired
difference of its average from CART's (`mergeflow.report.bootstrap`). A run with the multi-task encoder
(config `multitask`) has its reference row after the individual models', and every normalized row also its
average normalized to the multi-task model (`multitask_normalized`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mergeflow.adaptive.settings import SETTINGS_CLASSES, is_adaptive, non_default_settings
from mergeflow.evaluation.correctness import INDIVIDUAL_ROW, MULTITASK_ROW, ZERO_SHOT_ROW, PerImageCorrectness
from mergeflow.evaluation.results import MULTITASK_COLUMN, PathLike, source_of
from mergeflow.io import InputError, atomic_path, write_text
from mergeflow.merging.entries import VARIANT_SEPARATOR, base_method, entry_modifiers
from mergeflow.merging.registry import METHODS, MODIFIERS, NEEDS_GROUPS
from mergeflow.report.bootstrap import (
    CONFIDENCE,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    BootstrapIntervals,
    bootstrap_intervals,
    resampled_accuracies,
)
from mergeflow.report.published import PublishedNumber, published_for

METRIC_TITLES = {
    "accuracy": "Absolute accuracy (%), test split",
    "normalized_accuracy": "Normalized accuracy (%), test split",
}
LEADING_COLUMNS = ("metric", "method", "setting")
AVERAGE_COLUMN = "average"
PUBLISHED_COLUMN = "published"
DIFFERENCE_COLUMN = "difference"
PUBLISHED_SOURCE_COLUMN = "published_source"
# Columns after the task columns: ours, the published average, ours minus published, and where it is from.
TRAILING_COLUMNS = (AVERAGE_COLUMN, PUBLISHED_COLUMN, DIFFERENCE_COLUMN, PUBLISHED_SOURCE_COLUMN)
# The bounds of a number's 95% bootstrap interval: `<task>_ci_low`, `average_ci_high`, ...
CI_LOW_SUFFIX = "_ci_low"
CI_HIGH_SUFFIX = "_ci_high"
# The row's average minus CART's (the `cart` entry), and the paired bootstrap interval of that difference.
BASELINE_METHOD = "cart"
CART_DIFFERENCE_COLUMN = "cart_difference"
CART_DIFFERENCE_COLUMNS = (
    CART_DIFFERENCE_COLUMN,
    f"{CART_DIFFERENCE_COLUMN}{CI_LOW_SUFFIX}",
    f"{CART_DIFFERENCE_COLUMN}{CI_HIGH_SUFFIX}",
)
CART_DIFFERENCE_HEADER = "vs CART"
# On normalized rows of a run with the multi-task encoder: the row's accuracy over the multi-task model's, averaged
# over tasks (percent), and its bootstrap interval; after the group column, so every other column stays put.
MULTITASK_NORMALIZED_COLUMN = "multitask_normalized"
MULTITASK_NORMALIZED_COLUMNS = (
    MULTITASK_NORMALIZED_COLUMN,
    f"{MULTITASK_NORMALIZED_COLUMN}{CI_LOW_SUFFIX}",
    f"{MULTITASK_NORMALIZED_COLUMN}{CI_HIGH_SUFFIX}",
)
MULTITASK_NORMALIZED_HEADER = "normalized to multi-task"
# What a row's method assumes besides θ_0 and the experts (`group_of`); the reference rows have none.
GROUP_COLUMN = "group"
# main_table's frame.attrs entry: (resamples, seed) of its intervals, for the notes under the rendered tables.
BOOTSTRAP_ATTR = "bootstrap"
# frame.attrs entries set by `mark_approximate_val`: the marked task columns, and the note explaining the mark.
APPROXIMATE_VAL_ATTR = "approximate_val"
APPROXIMATE_VAL_NOTE_ATTR = "approximate_val_note"
# Per-image correctness must give the CSV's accuracy: both are counts over the same images (float noise aside).
_CORRECTNESS_TOLERANCE = 1e-9
SETTING_HEADER = "hyper-parameters"
# Reference rows are matched to published numbers under these method names.
REFERENCE_METHODS = {ZERO_SHOT_ROW: "zeroshot", INDIVIDUAL_ROW: "individual", MULTITASK_ROW: "multitask"}
# The file's normalized accuracy must agree with accuracy / individual up to float noise;
# a larger gap means the method was normalized against a different reference run.
_NORMALIZATION_TOLERANCE = 1e-6
_LATEX_ESCAPES = str.maketrans(
    {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
)


def method_display_name(name: str) -> str:
    """A method's display name, from its declaration (registry entry or adaptive settings class); else the name."""
    if name in METHODS:
        return METHODS[name].display
    if name in SETTINGS_CLASSES:
        return SETTINGS_CLASSES[name].display
    return name


def display_name(method: str) -> str:
    """The name a reader sees for a method entry (`cart`, a variant `cart@released`, a modified merge `cart+svc`:
    "CART + SVC"); unknown names stay."""
    _, _, variant = method.partition(VARIANT_SEPARATOR)
    shown = " + ".join(
        [method_display_name(base_method(method)), *(MODIFIERS[name].display if name in MODIFIERS else name
                                                      for name in entry_modifiers(method))]
    )  # fmt: skip
    return f"{shown} ({variant})" if variant else shown


ADAPTATION_GROUP = "test-time adaptation"
# The groups in table order, each with what its rows assume, for the captions.
GROUP_NOTES: dict[str, str] = {
    NEEDS_GROUPS["nothing"]: "data-free rows merge from θ_0 and the experts' weights alone.",
    NEEDS_GROUPS["training_data"]: (
        "rows that need training data also read each expert's own task's training images (a seeded sample per "
        "task: Gram matrices of layer inputs, diagonal Fisher, or the images themselves)."
    ),
    NEEDS_GROUPS["task_at_inference"]: (
        "rows that need the task at inference keep one model per task (EMR: a mask and a rescaler each) and "
        "classify every test image with its own task's model: an upper reference, not one merged model."
    ),
    ADAPTATION_GROUP: (
        "test-time adaptation rows learn their coefficients from each task's unlabeled test images (the papers' "
        "transductive protocol); labels are never read during adaptation, only afterwards to measure accuracy."
    ),
}


def group_of(method: str) -> str:
    """A method entry's group: what it needs besides θ_0 and the experts (a GROUP_NOTES key)."""
    if is_adaptive(method):
        return ADAPTATION_GROUP
    registered = METHODS.get(base_method(method))
    return registered.group if registered is not None else NEEDS_GROUPS["nothing"]


def main_table(
    reference: pd.DataFrame,
    results: pd.DataFrame,
    tasks: Sequence[str],
    published: Mapping[str, PublishedNumber] | None = None,
    correctness: PerImageCorrectness | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> pd.DataFrame:
    """Test-split accuracy of the zero-shot model, the individual models and every method's best setting.

    Columns: metric ("accuracy" | "normalized_accuracy"), method (display name),
    setting (the method's chosen hyper-parameters as JSON, empty for the reference
    rows), one column per task in the given order, `average` (mean over tasks),
    all in percent; then, on absolute-accuracy rows with a published number
    (`published`: method name → number, see `mergeflow.report.published`),
    `published`, `difference` (average − published) and `published_source`,
    empty elsewhere. Then the bounds `<task>_ci_low`, `<task>_ci_high`, ..., `average_ci_low`,
    `average_ci_high` of each number's 95% bootstrap interval over test images, and `cart_difference`
    (average − CART's average, same metric) with the bounds of its paired bootstrap interval; the
    intervals need `correctness` (every row's per-image test correctness, rows named as the method
    entries and `zero-shot` / `individual` / `multi-task`) and are empty without it, the CART columns are empty
    when no method is `cart`. `resamples` and `seed`: see `mergeflow.report.bootstrap`. Then `group`: what the
    row's method needs (`group_of`; empty for the reference rows). Methods appear by group in GROUP_NOTES order
    (data-free, needs training data, needs the task at inference, test-time adaptation), within a group in the
    order of their first row in `results`.

    When `reference` has the multi-task encoder's column (`multitask`), its row `multi-task` follows the
    individual models', and the table ends with MULTITASK_NORMALIZED_COLUMNS: on normalized rows, the mean over
    tasks of the row's accuracy over the multi-task model's (percent) and its bootstrap interval (the same ratio
    on every resample), empty on absolute rows. Without it, the table is what it was without the feature.
    """
    task_list = _checked_tasks(tasks)
    numbers = published or {}
    references = _reference_test_accuracies(reference, task_list)
    individual = references[INDIVIDUAL_ROW]
    keys = list(references)
    fractions = list(references.values())
    accuracy_rows = [
        _table_row("accuracy", row, "", accuracy, published_for(REFERENCE_METHODS[row], numbers))
        for row, accuracy in references.items()
    ]
    normalized_rows = [
        _table_row("normalized_accuracy", row, "", accuracy / individual, None) for row, accuracy in references.items()
    ]
    methods = list(pd.unique(results["method"]))
    order = list(GROUP_NOTES)
    groups = ["" for _ in references]
    for method in sorted(methods, key=lambda m: order.index(group_of(m))):
        groups.append(group_of(method))
        setting, accuracy, normalized = _best_test_accuracies(results, method, task_list, individual)
        if is_adaptive(method):
            setting = json.dumps(non_default_settings(method, json.loads(setting)))
        name = display_name(method)
        keys.append(method)
        fractions.append(accuracy)
        accuracy_rows.append(_table_row("accuracy", name, setting, accuracy, published_for(method, numbers)))
        normalized_rows.append(_table_row("normalized_accuracy", name, setting, normalized, None))
    baseline = keys.index(BASELINE_METHOD) if BASELINE_METHOD in keys else None
    absolute, relative, over_multitask = (None, None, None)
    if correctness is not None:
        samples = resampled_accuracies(
            _correctness_matrices(correctness, keys, task_list, np.array(fractions)), resamples, seed
        )
        absolute = bootstrap_intervals(100.0 * samples, baseline)
        relative = bootstrap_intervals(100.0 * _over_row(samples, keys.index(INDIVIDUAL_ROW)), baseline)
        if MULTITASK_ROW in keys:
            over_multitask = bootstrap_intervals(100.0 * _over_row(samples, keys.index(MULTITASK_ROW)))
    for rows, intervals in ((accuracy_rows, absolute), (normalized_rows, relative)):
        averages = [row[len(LEADING_COLUMNS) + len(task_list)] for row in rows]
        for index, row in enumerate(rows):
            row += _interval_cells(intervals, index, len(task_list))
            row += _difference_cells(intervals, index, averages, baseline)
    for rows in (accuracy_rows, normalized_rows):
        for row, group in zip(rows, groups, strict=True):
            row.append(group)
    columns = [*LEADING_COLUMNS, *task_list, *TRAILING_COLUMNS, *interval_columns(task_list), *CART_DIFFERENCE_COLUMNS,
               GROUP_COLUMN]  # fmt: skip
    if MULTITASK_ROW in references:
        for row in accuracy_rows:
            row += [math.nan] * len(MULTITASK_NORMALIZED_COLUMNS)
        for index, (row, accuracy) in enumerate(zip(normalized_rows, fractions, strict=True)):
            row += _multitask_normalized_cells(accuracy, references[MULTITASK_ROW], over_multitask, index)
        columns += MULTITASK_NORMALIZED_COLUMNS
    table = pd.DataFrame(accuracy_rows + normalized_rows, columns=columns)
    if correctness is not None:
        table.attrs[BOOTSTRAP_ATTR] = (resamples, seed)
    return table


def interval_columns(tasks: Sequence[str]) -> list[str]:
    """The interval bounds of every task and of the average, in table order: `<column>_ci_low`, `_ci_high`."""
    return [f"{column}{suffix}" for column in [*tasks, AVERAGE_COLUMN] for suffix in (CI_LOW_SUFFIX, CI_HIGH_SUFFIX)]


def _correctness_matrices(
    correctness: PerImageCorrectness, keys: list[str], tasks: list[str], fractions: np.ndarray
) -> list[np.ndarray]:
    """Per task, the (images, rows) correctness of every table row, checked against the row's accuracy."""
    missing = [key for key in keys if key not in correctness.rows]
    if missing:
        raise InputError(
            f"no per-image correctness for row(s) {', '.join(missing)}; expected each method's "
            f"<method>.correct.safetensors and reference.correct.safetensors ({ZERO_SHOT_ROW}, {INDIVIDUAL_ROW}, "
            f"and {MULTITASK_ROW} in a run with the multi-task encoder)"
        )
    matrices = []
    for task_index, task in enumerate(tasks):
        columns = []
        for row_index, key in enumerate(keys):
            source = correctness.source(key)
            vector = correctness.rows[key].get(task)
            if vector is None:
                raise InputError(f"{source}: no vector {key}/{task}; expected one per benchmark task")
            if len(vector) == 0 or (columns and len(vector) != len(columns[0])):
                expected = f"{len(columns[0])} like {keys[0]}" if columns else "at least one"
                raise InputError(f"{source}: {key}/{task} holds {len(vector)} test images; expected {expected}")
            observed = int(np.count_nonzero(vector)) / len(vector)
            recorded = float(fractions[row_index, task_index])
            if abs(observed - recorded) > _CORRECTNESS_TOLERANCE:
                raise InputError(
                    f"{source}: {key}/{task} gives accuracy {observed!r} but the evaluation CSV says {recorded!r}; "
                    "expected both from the same test pass (rerun its job)"
                )
            columns.append(vector)
        matrices.append(np.stack(columns, axis=1))
    return matrices


def _over_row(samples: np.ndarray, reference: int) -> np.ndarray:
    """Resampled normalized accuracy: each row over the reference row (the individual or the multi-task model) on
    the same resample (NaN over 0)."""
    denominator = samples[:, [reference], :]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, samples / denominator, np.nan)


def _multitask_normalized_cells(
    accuracy: pd.Series, multitask: pd.Series, intervals: BootstrapIntervals | None, row: int
) -> list[float]:
    """A normalized row's average accuracy over the multi-task model's (percent; a task it gets all wrong is NaN),
    with the bounds of its interval."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(multitask.to_numpy() > 0, accuracy.to_numpy() / multitask.to_numpy(), np.nan)
    value = 100.0 * math.fsum(ratios) / len(ratios)
    if intervals is None:
        return [value, math.nan, math.nan]
    return [value, float(intervals.average_low[row]), float(intervals.average_high[row])]


def _interval_cells(intervals: BootstrapIntervals | None, row: int, num_tasks: int) -> list[float]:
    if intervals is None:
        return [math.nan] * 2 * (num_tasks + 1)
    bounds = zip([*intervals.task_low[row], intervals.average_low[row]],
                 [*intervals.task_high[row], intervals.average_high[row]], strict=True)  # fmt: skip
    return [float(value) for pair in bounds for value in pair]


def _difference_cells(
    intervals: BootstrapIntervals | None, row: int, averages: list[float], baseline: int | None
) -> list[float]:
    if baseline is None or intervals is None or intervals.difference_low is None or intervals.difference_high is None:
        return [math.nan] * 3
    difference = averages[row] - averages[baseline]
    return [difference, float(intervals.difference_low[row]), float(intervals.difference_high[row])]


def _checked_tasks(tasks: Sequence[str]) -> list[str]:
    task_list = [str(task) for task in tasks]
    if not task_list:
        raise InputError("no tasks given (expected the benchmark's task names in table order)")
    repeated = sorted({task for task in task_list if task_list.count(task) > 1})
    if repeated:
        raise InputError(f"task(s) {', '.join(repeated)} given more than once (expected distinct task names)")
    reserved = [task for task in task_list if _is_reserved(task)]
    if reserved:
        raise InputError(f"task name(s) {', '.join(reserved)} clash with table columns; expected other task names")
    return task_list


def _reference_test_accuracies(reference: pd.DataFrame, tasks: list[str]) -> dict[str, pd.Series]:
    """Reference row → its test accuracy (fractions) indexed by task, in task order: zero-shot, individual and,
    when `reference` has its column, multi-task."""
    test = reference[reference["split"] == "test"].set_index("task")
    missing = [task for task in tasks if task not in test.index]
    if missing:
        source = reference.attrs.get("source", "reference")
        raise InputError(f"{source}: no test row for task(s) {', '.join(missing)}; expected one per benchmark task")
    columns = {ZERO_SHOT_ROW: "zeroshot", INDIVIDUAL_ROW: "individual", MULTITASK_ROW: MULTITASK_COLUMN}
    return {row: test.loc[tasks, column] for row, column in columns.items() if column in test.columns}


def _best_test_accuracies(
    results: pd.DataFrame, method: str, tasks: list[str], individual: pd.Series
) -> tuple[str, pd.Series, pd.Series]:
    """The val-selected setting of `method` and its test accuracy and normalized accuracy per task."""
    rows = results[(results["method"] == method) & results["best"] & (results["split"] == "test")]
    source = source_of(results, method)
    if rows.empty:
        raise InputError(f"{source}: no test rows with best=True; expected the test rows of the val-selected setting")
    by_task = rows.set_index("task")
    missing = [task for task in tasks if task not in by_task.index]
    if missing:
        raise InputError(f"{source}: best test rows lack task(s) {', '.join(missing)}; expected every benchmark task")
    accuracy = by_task.loc[tasks, "accuracy"]
    normalized = accuracy / individual
    gap = (by_task.loc[tasks, "normalized_accuracy"] - normalized).abs()
    if (gap > _NORMALIZATION_TOLERANCE).any():
        task = gap.idxmax()
        raise InputError(
            f"{source}: normalized_accuracy of task {task} is {by_task.at[task, 'normalized_accuracy']!r} but "
            f"accuracy / individual = {normalized[task]!r}; expected them to agree (same reference run)"
        )
    return str(by_task["setting"].iloc[0]), accuracy, normalized


def _table_row(
    metric: str, method: str, setting: str, fractions: pd.Series, published: PublishedNumber | None
) -> list[object]:
    percent = [100.0 * float(value) for value in fractions]
    average = math.fsum(percent) / len(percent)
    if published is None:
        return [metric, method, setting, *percent, average, math.nan, math.nan, ""]
    reported = published.average_accuracy
    # Ours minus a number made with other experts would measure the experts as much as the method.
    difference = average - reported if published.comparable else math.nan
    return [metric, method, setting, *percent, average, reported, difference, published.source]


def _is_reserved(column: str) -> bool:
    """A column of the table that is not a task: leading, trailing, CART difference or an interval bound."""
    fixed = (*LEADING_COLUMNS, *TRAILING_COLUMNS, *CART_DIFFERENCE_COLUMNS, GROUP_COLUMN, MULTITASK_NORMALIZED_COLUMN)
    return column in fixed or column.endswith((CI_LOW_SUFFIX, CI_HIGH_SUFFIX))


def task_columns(table: pd.DataFrame) -> list[str]:
    return [column for column in table.columns if not _is_reserved(column)]


def mark_approximate_val(table: pd.DataFrame, tasks: Sequence[str], mark: str, note: str | None) -> None:
    """Render `tasks`' column headers with `mark` and `note` under every metric's table (main.csv is unchanged)."""
    table.attrs[APPROXIMATE_VAL_ATTR] = {task: mark for task in tasks}
    table.attrs[APPROXIMATE_VAL_NOTE_ATTR] = note


def _task_headers(table: pd.DataFrame) -> list[str]:
    marks = table.attrs.get(APPROXIMATE_VAL_ATTR, {})
    return [f"{task} {marks[task]}" if task in marks else task for task in task_columns(table)]


def _approximate_val_note(table: pd.DataFrame) -> str | None:
    return table.attrs.get(APPROXIMATE_VAL_NOTE_ATTR)


def format_setting(setting: object) -> str:
    """`{"lam": 1.5, "rank": 0.08}` → `lam=1.5, rank=0.08`; the reference rows have none."""
    if not isinstance(setting, str) or not setting:
        return ""
    try:
        parameters = json.loads(setting)
    except json.JSONDecodeError:
        return setting
    if not isinstance(parameters, dict):
        return setting
    return ", ".join(
        f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in parameters.items()
    )


def _one_decimal(value: float) -> str:
    return f"{value:.1f}"


def _signed_one_decimal(value: float) -> str:
    return f"{value:+.1f}"


def _has_published_columns(metric: str) -> bool:
    # Published numbers are average absolute accuracies; normalized rows never have one.
    return metric == "accuracy"


def _optional(value: float, render: Callable[[float], str]) -> str:
    return "" if pd.isna(value) else render(value)


def _bounds(row: pd.Series, column: str) -> tuple[float, float]:
    """The interval bounds of `column` in `row`: NaN where there are none (no correctness, or an older table)."""
    return row.get(f"{column}{CI_LOW_SUFFIX}", math.nan), row.get(f"{column}{CI_HIGH_SUFFIX}", math.nan)


def _with_interval(value: float, bounds: tuple[float, float], render: Callable[[float], str]) -> str:
    """`84.3 [83.9, 84.7]`, or the value alone without an interval."""
    low, high = bounds
    if pd.isna(low) or pd.isna(high):
        return render(value)
    return f"{render(value)} [{render(low)}, {render(high)}]"


def _has_cart_difference(table: pd.DataFrame, metric: str) -> bool:
    rows = table[table["metric"] == metric]
    return CART_DIFFERENCE_COLUMN in table.columns and bool(rows[CART_DIFFERENCE_COLUMN].notna().any())


def _has_multitask_normalized(table: pd.DataFrame, metric: str) -> bool:
    rows = table[table["metric"] == metric]
    return MULTITASK_NORMALIZED_COLUMN in table.columns and bool(rows[MULTITASK_NORMALIZED_COLUMN].notna().any())


def _rendered_rows(table: pd.DataFrame, metric: str) -> list[tuple[str, list[str]]]:
    """Per row its group ("" for the reference rows) and its cells: method, task accuracies, average [interval],
    [vs CART,] [normalized to multi-task [interval],] [published, difference,] hyper-parameters."""
    rows = table[table["metric"] == metric]
    tasks = task_columns(table)
    with_cart = _has_cart_difference(table, metric)
    with_multitask = _has_multitask_normalized(table, metric)
    rendered = []
    for _, row in rows.iterrows():
        group = row.get(GROUP_COLUMN, "")
        group = "" if pd.isna(group) else str(group)
        cells = [row["method"], *(_one_decimal(row[column]) for column in tasks)]
        cells.append(_with_interval(row[AVERAGE_COLUMN], _bounds(row, AVERAGE_COLUMN), _one_decimal))
        if with_cart:
            difference = row[CART_DIFFERENCE_COLUMN]
            bounds = _bounds(row, CART_DIFFERENCE_COLUMN)
            cells.append("" if pd.isna(difference) else _with_interval(difference, bounds, _signed_one_decimal))
        if with_multitask:
            value = row[MULTITASK_NORMALIZED_COLUMN]
            bounds = _bounds(row, MULTITASK_NORMALIZED_COLUMN)
            cells.append("" if pd.isna(value) else _with_interval(value, bounds, _one_decimal))
        if _has_published_columns(metric):
            cells += [
                _optional(row[PUBLISHED_COLUMN], _one_decimal),
                _optional(row[DIFFERENCE_COLUMN], _signed_one_decimal),
            ]
        rendered.append((group, [*cells, format_setting(row["setting"])]))
    return rendered


def published_sources(table: pd.DataFrame) -> list[str]:
    """The distinct sources of the table's published numbers, in row order."""
    sources = table[PUBLISHED_SOURCE_COLUMN].fillna("")
    return list(dict.fromkeys(source for source in sources if source))


def _groups_note(table: pd.DataFrame) -> str:
    """What each group of rows in the table assumes, in table order."""
    if GROUP_COLUMN not in table.columns:
        return ""
    present = [group for group in GROUP_NOTES if (table[GROUP_COLUMN] == group).any()]
    return " ".join(f"*{group}*: {GROUP_NOTES[group]}" for group in present)


def _bootstrap_note(table: pd.DataFrame) -> str:
    """How the intervals were computed, when the table has them."""
    if BOOTSTRAP_ATTR not in table.attrs:
        return ""
    resamples, seed = table.attrs[BOOTSTRAP_ATTR]
    note = (
        f"[low, high]: {CONFIDENCE:.0%} percentile bootstrap interval over test images ({resamples} resamples, "
        f"seed {seed}; each task's images resampled on their own, the same draws for every row; per-task "
        "intervals in main.csv). Normalized rows divide by the individual model's accuracy on the same resample."
    )
    if CART_DIFFERENCE_COLUMN in table.columns and table[CART_DIFFERENCE_COLUMN].notna().any():
        note += (
            f" {CART_DIFFERENCE_HEADER}: the row's average minus CART's, with the interval of that difference "
            "over the same resamples (paired); an interval that excludes 0 ranks the two on this test set."
        )
    if _has_multitask_normalized(table, "normalized_accuracy"):
        note += (
            f" {MULTITASK_NORMALIZED_HEADER}: the row's accuracy divided by the multi-task model's, task by task "
            "on the same resample, averaged over tasks."
        )
    return note


def _sources_note(table: pd.DataFrame) -> str:
    sources = published_sources(table)
    if not sources:
        return "No published numbers for this model and task list."
    return (
        f"{PUBLISHED_COLUMN}: average test accuracy reported in {'; '.join(sources)}; "
        f"{DIFFERENCE_COLUMN}: our average minus it."
    )


def markdown_table(table: pd.DataFrame, metric: str) -> str:
    """One metric as a GitHub Markdown table, numbers to one decimal."""
    published = [PUBLISHED_COLUMN, DIFFERENCE_COLUMN] if _has_published_columns(metric) else []
    cart = [CART_DIFFERENCE_HEADER] if _has_cart_difference(table, metric) else []
    multitask = [MULTITASK_NORMALIZED_HEADER] if _has_multitask_normalized(table, metric) else []
    header = ["method", *_task_headers(table), AVERAGE_COLUMN, *cart, *multitask, *published, SETTING_HEADER]
    alignment = [":---", *("---:" for _ in header[1:-1]), ":---"]
    lines = [_markdown_line(header), _markdown_line(alignment)]
    current = ""
    for group, row in _rendered_rows(table, metric):
        if group and group != current:
            lines.append(_markdown_line([f"*{group}*", *("" for _ in header[1:])]))
        current = group
        lines.append(_markdown_line(row))
    return "\n".join(lines) + "\n"


def _markdown_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |"


def markdown_document(table: pd.DataFrame, title: str | None = None, notes: Sequence[str] = ()) -> str:
    """`notes` (e.g. `published.experts_notes`) follow the sources note under the absolute-accuracy table."""
    sections = [f"# {title}\n"] if title else []
    groups = _groups_note(table)
    bootstrap = _bootstrap_note(table)
    approximate = _approximate_val_note(table)
    for metric, heading in METRIC_TITLES.items():
        lines = (_sources_note(table), *notes) if _has_published_columns(metric) else ()
        note = f"\n{bootstrap}\n" if bootstrap else ""
        note += f"\n{approximate}\n" if approximate else ""
        note += "".join(f"\n{line}\n" for line in lines)
        note += f"\n{groups}\n" if groups else ""
        sections.append(f"## {heading}\n\n{markdown_table(table, metric)}{note}")
    return "\n".join(sections)


def latex_escape(text: str) -> str:
    return text.translate(_LATEX_ESCAPES)


def latex_tabular(table: pd.DataFrame, metric: str) -> str:
    """One metric as a booktabs tabular; a rule separates the reference rows from the merges."""
    tasks = task_columns(table)
    published = ["Published", r"$\Delta$"] if _has_published_columns(metric) else []
    cart = [CART_DIFFERENCE_HEADER] if _has_cart_difference(table, metric) else []
    multitask = [MULTITASK_NORMALIZED_HEADER] if _has_multitask_normalized(table, metric) else []
    names = _task_headers(table)
    header = [*(latex_escape(cell) for cell in ["Method", *names, "Average", *cart, *multitask]), *published,
              "Hyper-parameters"]  # fmt: skip
    # The rule under the reference rows: after the last of them (multi-task when the run has it).
    last_reference = MULTITASK_ROW if (table["method"] == MULTITASK_ROW).any() else INDIVIDUAL_ROW
    lines = [
        f"% {METRIC_TITLES[metric]}",
        r"\begin{tabular}{l" + "r" * (len(tasks) + 1 + len(cart) + len(multitask) + len(published)) + "l}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    current = ""
    for group, row in _rendered_rows(table, metric):
        if group and group != current:
            lines += [rf"\multicolumn{{{len(header)}}}{{l}}{{\emph{{{latex_escape(group)}}}}} \\"]
            if current:
                lines.insert(len(lines) - 1, r"\midrule")
        current = group
        lines.append(" & ".join(latex_escape(cell) for cell in row) + r" \\")
        if row[0] == last_reference:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def latex_document(table: pd.DataFrame, title: str | None = None, notes: Sequence[str] = ()) -> str:
    # Only comments around the tabulars, so the file can be \input inside any table environment.
    preamble = ["% " + " ".join(title.splitlines())] if title else []
    preamble += [r"% Requires \usepackage{booktabs}.", f"% {_sources_note(table)}", *(f"% {line}" for line in notes)]
    preamble += [f"% {_bootstrap_note(table)}"] if _bootstrap_note(table) else []
    preamble += [f"% {_approximate_val_note(table)}"] if _approximate_val_note(table) else []
    preamble += [f"% {_groups_note(table)}"] if _groups_note(table) else []
    return "\n".join(preamble) + "\n\n" + "\n".join(latex_tabular(table, metric) for metric in METRIC_TITLES)


def write_table_files(table: pd.DataFrame, stem: Path, markdown: str, latex: str) -> list[Path]:
    """Write `<stem>.csv` (full precision), `.md` and `.tex`, each atomically."""
    csv_path, markdown_path, latex_path = (stem.with_name(f"{stem.name}.{suffix}") for suffix in ("csv", "md", "tex"))
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")
    write_text(markdown_path, markdown)
    write_text(latex_path, latex)
    return [csv_path, markdown_path, latex_path]


def write_main_table(
    table: pd.DataFrame, out_dir: PathLike, title: str | None = None, notes: Sequence[str] = ()
) -> list[Path]:
    """Write main.csv (full precision), main.md and main.tex into `out_dir`, each atomically."""
    return write_table_files(
        table, Path(out_dir) / "main", markdown_document(table, title, notes), latex_document(table, title, notes)
    )
