"""The main results table: one row per method, one column per task, in two metrics.

`main_table` builds a tidy frame in percent at full precision; the Markdown and
LaTeX renderings format exactly those numbers to one decimal, so every printed
number is the CSV value rounded. Absolute-accuracy rows carry the published
average (`mergeflow.report.published`) and our difference from it, where one applies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from mergeflow.adaptive.settings import non_default_settings
from mergeflow.io import InputError, atomic_path, write_text
from mergeflow.method_entries import ADAPTIVE_METHODS, is_adaptive
from mergeflow.report.published import PublishedNumber, published_for
from mergeflow.report.results import PathLike, source_of

METHOD_DISPLAY_NAMES = {
    "zeroshot": "zero-shot merge",
    "weight_averaging": "weight averaging",
    "task_arithmetic": "task arithmetic",
    "ties": "TIES",
    "dare": "DARE",
    "magmax": "MagMax",
    "consensus": "consensus",
    "tsv_m": "TSV-M",
    "iso_c": "Iso-C",
    "iso_cts": "Iso-CTS",
    "lowrank_ta": "low-rank TA",
    "cart": "CART",
    "adamerging": "AdaMerging",
    "adamerging_cart": "AdaMerging + CART",
    "adarank": "AdaRank",
}
ZERO_SHOT_ROW = "zero-shot"
INDIVIDUAL_ROW = "individual"
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
SETTING_HEADER = "hyper-parameters"
# Reference rows are matched to published numbers under these method names.
REFERENCE_METHODS = {"zero-shot": "zeroshot", "individual": "individual"}
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


def display_name(method: str) -> str:
    """The name a reader sees for a method entry (`cart`, or a variant `cart@released`); unknown names stay."""
    name, _, variant = method.partition("@")
    shown = METHOD_DISPLAY_NAMES.get(name, name)
    return f"{shown} ({variant})" if variant else shown


def main_table(
    reference: pd.DataFrame,
    results: pd.DataFrame,
    tasks: Sequence[str],
    published: Mapping[str, PublishedNumber] | None = None,
) -> pd.DataFrame:
    """Test-split accuracy of the zero-shot model, the individual models and every method's best setting.

    Columns: metric ("accuracy" | "normalized_accuracy"), method (display name),
    setting (the method's chosen hyper-parameters as JSON, empty for the reference
    rows), one column per task in the given order, `average` (mean over tasks),
    all in percent; then, on absolute-accuracy rows with a published number
    (`published`: method name → number, see `mergeflow.report.published`),
    `published`, `difference` (average − published) and `published_source`,
    empty elsewhere. Methods appear in the order of their first row in `results`, the test-time
    adaptive ones (`mergeflow.method_entries.ADAPTIVE_METHODS`) after all others.
    """
    task_list = _checked_tasks(tasks)
    numbers = published or {}
    zeroshot, individual = _reference_test_accuracies(reference, task_list)
    accuracy_rows = [
        _table_row("accuracy", row, "", accuracy, published_for(REFERENCE_METHODS[row], numbers))
        for row, accuracy in ((ZERO_SHOT_ROW, zeroshot), (INDIVIDUAL_ROW, individual))
    ]
    normalized_rows = [
        _table_row("normalized_accuracy", ZERO_SHOT_ROW, "", zeroshot / individual, None),
        _table_row("normalized_accuracy", INDIVIDUAL_ROW, "", individual / individual, None),
    ]
    methods = list(pd.unique(results["method"]))
    # The test-time adaptive methods form a group of their own, after every static merge.
    for method in [m for m in methods if not is_adaptive(m)] + [m for m in methods if is_adaptive(m)]:
        setting, accuracy, normalized = _best_test_accuracies(results, method, task_list, individual)
        if is_adaptive(method):
            setting = json.dumps(non_default_settings(method, json.loads(setting)))
        name = display_name(method)
        accuracy_rows.append(_table_row("accuracy", name, setting, accuracy, published_for(method, numbers)))
        normalized_rows.append(_table_row("normalized_accuracy", name, setting, normalized, None))
    return pd.DataFrame(accuracy_rows + normalized_rows, columns=[*LEADING_COLUMNS, *task_list, *TRAILING_COLUMNS])


def _checked_tasks(tasks: Sequence[str]) -> list[str]:
    task_list = [str(task) for task in tasks]
    if not task_list:
        raise InputError("no tasks given (expected the benchmark's task names in table order)")
    repeated = sorted({task for task in task_list if task_list.count(task) > 1})
    if repeated:
        raise InputError(f"task(s) {', '.join(repeated)} given more than once (expected distinct task names)")
    reserved = [task for task in task_list if task in (*LEADING_COLUMNS, *TRAILING_COLUMNS)]
    if reserved:
        raise InputError(f"task name(s) {', '.join(reserved)} clash with table columns; expected other task names")
    return task_list


def _reference_test_accuracies(reference: pd.DataFrame, tasks: list[str]) -> tuple[pd.Series, pd.Series]:
    """Zero-shot and individual test accuracy (fractions) indexed by task, in task order."""
    test = reference[reference["split"] == "test"].set_index("task")
    missing = [task for task in tasks if task not in test.index]
    if missing:
        source = reference.attrs.get("source", "reference")
        raise InputError(f"{source}: no test row for task(s) {', '.join(missing)}; expected one per benchmark task")
    return test.loc[tasks, "zeroshot"], test.loc[tasks, "individual"]


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
    return [metric, method, setting, *percent, average, reported, average - reported, published.source]


def task_columns(table: pd.DataFrame) -> list[str]:
    return [column for column in table.columns if column not in (*LEADING_COLUMNS, *TRAILING_COLUMNS)]


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


def _rendered_rows(table: pd.DataFrame, metric: str) -> list[list[str]]:
    """Method, task accuracies, average, [published, difference,] hyper-parameters: the printed cells."""
    rows = table[table["metric"] == metric]
    numeric = [*task_columns(table), AVERAGE_COLUMN]
    rendered = []
    for _, row in rows.iterrows():
        cells = [row["method"], *(_one_decimal(row[column]) for column in numeric)]
        if _has_published_columns(metric):
            cells += [
                _optional(row[PUBLISHED_COLUMN], _one_decimal),
                _optional(row[DIFFERENCE_COLUMN], _signed_one_decimal),
            ]
        rendered.append([*cells, format_setting(row["setting"])])
    return rendered


def published_sources(table: pd.DataFrame) -> list[str]:
    """The distinct sources of the table's published numbers, in row order."""
    sources = table[PUBLISHED_SOURCE_COLUMN].fillna("")
    return list(dict.fromkeys(source for source in sources if source))


ADAPTATION_GROUP = "test-time adaptation"
ADAPTATION_NOTE = (
    "Test-time adaptation rows learn their coefficients from each task's unlabeled test images (the papers' "
    "transductive protocol); labels are never read during adaptation, only afterwards to measure accuracy."
)


def _is_adaptive_row(display: str) -> bool:
    shown = {METHOD_DISPLAY_NAMES[name] for name in ADAPTIVE_METHODS}
    return display.split(" (", 1)[0] in shown


def _adaptation_note(table: pd.DataFrame) -> str:
    return ADAPTATION_NOTE if table["method"].map(_is_adaptive_row).any() else ""


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
    header = ["method", *task_columns(table), AVERAGE_COLUMN, *published, SETTING_HEADER]
    alignment = [":---", *("---:" for _ in header[1:-1]), ":---"]
    lines = [_markdown_line(header), _markdown_line(alignment)]
    grouped = False
    for row in _rendered_rows(table, metric):
        if not grouped and _is_adaptive_row(row[0]):
            lines.append(_markdown_line([f"*{ADAPTATION_GROUP}*", *("" for _ in header[1:])]))
            grouped = True
        lines.append(_markdown_line(row))
    return "\n".join(lines) + "\n"


def _markdown_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |"


def markdown_document(table: pd.DataFrame, title: str | None = None) -> str:
    sections = [f"# {title}\n"] if title else []
    adaptation = _adaptation_note(table)
    for metric, heading in METRIC_TITLES.items():
        note = f"\n{_sources_note(table)}\n" if _has_published_columns(metric) else ""
        note += f"\n{adaptation}\n" if adaptation else ""
        sections.append(f"## {heading}\n\n{markdown_table(table, metric)}{note}")
    return "\n".join(sections)


def latex_escape(text: str) -> str:
    return text.translate(_LATEX_ESCAPES)


def latex_tabular(table: pd.DataFrame, metric: str) -> str:
    """One metric as a booktabs tabular; a rule separates the reference rows from the merges."""
    tasks = task_columns(table)
    published = ["Published", r"$\Delta$"] if _has_published_columns(metric) else []
    header = [*(latex_escape(cell) for cell in ["Method", *tasks, "Average"]), *published, "Hyper-parameters"]
    lines = [
        f"% {METRIC_TITLES[metric]}",
        r"\begin{tabular}{l" + "r" * (len(tasks) + 1 + len(published)) + "l}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    grouped = False
    for row in _rendered_rows(table, metric):
        if not grouped and _is_adaptive_row(row[0]):
            lines += [r"\midrule", rf"\multicolumn{{{len(header)}}}{{l}}{{\emph{{{ADAPTATION_GROUP}}}}} \\"]
            grouped = True
        lines.append(" & ".join(latex_escape(cell) for cell in row) + r" \\")
        if row[0] == INDIVIDUAL_ROW:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def latex_document(table: pd.DataFrame, title: str | None = None) -> str:
    # Only comments around the tabulars, so the file can be \input inside any table environment.
    preamble = ["% " + " ".join(title.splitlines())] if title else []
    preamble += [r"% Requires \usepackage{booktabs}.", f"% {_sources_note(table)}"]
    preamble += [f"% {_adaptation_note(table)}"] if _adaptation_note(table) else []
    return "\n".join(preamble) + "\n\n" + "\n".join(latex_tabular(table, metric) for metric in METRIC_TITLES)


def write_table_files(table: pd.DataFrame, stem: Path, markdown: str, latex: str) -> list[Path]:
    """Write `<stem>.csv` (full precision), `.md` and `.tex`, each atomically."""
    csv_path, markdown_path, latex_path = (stem.with_name(f"{stem.name}.{suffix}") for suffix in ("csv", "md", "tex"))
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")
    write_text(markdown_path, markdown)
    write_text(latex_path, latex)
    return [csv_path, markdown_path, latex_path]


def write_main_table(table: pd.DataFrame, out_dir: PathLike, title: str | None = None) -> list[Path]:
    """Write main.csv (full precision), main.md and main.tex into `out_dir`, each atomically."""
    return write_table_files(
        table, Path(out_dir) / "main", markdown_document(table, title), latex_document(table, title)
    )
