"""`mergeflow tasks`: per task, the data source, split sizes, val rule, head texts and expert file of one expert source.

It lets a reviewer check our protocol against the papers' without reading code; every field comes from the registry
(`mergeflow.image_tasks`) and the checkpoint tables (`mergeflow.checkpoints.tables`), nothing is restated here.
"""

from __future__ import annotations

from typing import Any

from mergeflow.checkpoints import tables
from mergeflow.image_tasks.provenance import (
    EXPERTS_CODE_SOURCES,
    class_texts,
    experts_data,
    head_texts_for,
    prepared_split_sizes,
    resolve_data_source,
    val_provenance,
)
from mergeflow.image_tasks.registry import TASKS_20, get_task
from mergeflow.io import InputError

EXPERT_SOURCES = ("tall_masks", "cart_authors", "task_vectors", "fusionbench", "finetune")


def expert_file(experts: str, model: str, task: str) -> str:
    """Where `experts` keeps the encoder fine-tuned on `task` ("repo: path" on the hub)."""
    if experts == "tall_masks":
        model_dir = tables.TALL_MASKS_MODEL_DIRS[model][0]
        path = tables.TALL_MASKS_PATTERN.format(model_dir=model_dir, task_dir=tables.TALL_MASKS_TASK_DIRS[task])
        return f"{tables.TALL_MASKS_REPO}: {path}"
    if experts == "cart_authors":
        repo = tables.CART_REPOS.get(model, f"(no CART authors' repository for {model})")
        return f"{repo}: {tables.CART_PATTERNS[0].format(task=task, model=model)}"
    if experts == "task_vectors":
        path = tables.TASK_VECTORS_PATTERNS[0].format(model=model, task=task)
        return f"the task_vectors release ({tables.TASK_VECTORS_DRIVE}): {path}"
    if experts == "fusionbench":
        repo = tables.FUSIONBENCH_REPO.format(
            hf_model=tables.FUSIONBENCH_MODELS[model], slug=tables.FUSIONBENCH_SLUGS[task]
        )
        return f"{repo}: {tables.FUSIONBENCH_WEIGHTS}"
    return f"ours: results/finetuned/{model}/{task}.safetensors"


def _data_version(task: str, source: str, revision: str) -> str:
    if source == "huggingface":
        return f"{get_task(task).hub.repo_id} @ {revision}"
    if source == "folder":
        layout = ", ".join(f"{role}: {path}" for role, path in get_task(task).folder.splits.items())
        return f"the experts' image folders under data.root ({layout})"
    import torchvision

    tv = get_task(task).torchvision
    return f"torchvision {torchvision.__version__} datasets.{tv.dataset}"


def task_protocol(task: str, experts: str, *, model: str, data_source: str, revision: str) -> dict[str, Any]:
    """One task's row of `mergeflow tasks`."""
    facts = experts_data(task)
    source = resolve_data_source(task, data_source)
    val = val_provenance(task, source, experts)
    texts = head_texts_for(experts)
    names, templates = class_texts(task, texts)
    return {
        "task": task,
        "data_source": source,
        "data_version": _data_version(task, source, revision),
        "experts_base_train": facts.base_train,
        "experts_code": f"nik-dim/tall_masks {facts.code}",
        "splits": {**prepared_split_sizes(task), "test": facts.n_test},
        "served_test": prepared_split_sizes(task)["test"],
        "val_rule": val.rule,
        "val_exact": val.exact,
        "val_reason": val.reason,
        "class_texts": texts,
        "classnames": list(names),
        "templates": list(templates),
        "experts": experts,
        "experts_trained_by": tables.expert_origin(experts, task),
        "expert_file": expert_file(experts, model, task),
    }


def tasks_protocol(
    experts: str, *, model: str = "ViT-B-32", data_source: str | None = None, revision: str = "main"
) -> list[dict[str, Any]]:
    """Every task of the 20-task suite as `experts` saw it; `data_source` defaults to the experts' own layout."""
    if experts not in EXPERT_SOURCES:
        raise InputError(f"--experts {experts!r}: expected one of {EXPERT_SOURCES}")
    if model not in tables.TALL_MASKS_MODEL_DIRS:
        raise InputError(f"--model {model!r}: expected one of {sorted(tables.TALL_MASKS_MODEL_DIRS)}")
    if data_source is None:
        data_source = "experts" if experts in EXPERTS_CODE_SOURCES else "huggingface"
    tasks = tables.TASK_VECTORS_TASKS if experts == "task_vectors" else TASKS_20
    return [task_protocol(t, experts, model=model, data_source=data_source, revision=revision) for t in tasks]


def format_protocol(rows: list[dict[str, Any]]) -> str:
    """A plain-text block per task."""
    blocks = []
    for row in rows:
        sizes = row["splits"]
        test = sizes["test"] if sizes["test"] is not None else f"not established (ours serves {row['served_test']})"
        names = row["classnames"]
        shown = ", ".join(repr(n) for n in names[:4]) + (f", … ({len(names)} classes)" if len(names) > 4 else "")
        blocks.append(
            "\n".join(
                [
                    f"{row['task']}",
                    f"  data        {row['data_source']}: {row['data_version']}",
                    f"  splits      train {sizes['train']}, val {sizes['val']}, test {test}",
                    f"  val         {'exact' if row['val_exact'] else 'APPROXIMATE'}: {row['val_rule']}",
                    f"              ({row['val_reason']})",
                    f"  experts'    {row['experts_base_train']} [{row['experts_code']}]",
                    f"  head texts  {row['class_texts']}: {shown}",
                    f"  templates   {len(row['templates'])}: {row['templates'][0]!r}, …",
                    f"  expert      {row['experts']} (trained by {row['experts_trained_by']}): {row['expert_file']}",
                ]
            )
        )
    exact = sum(row["val_exact"] for row in rows)
    blocks.append(f"val exact for {exact} of {len(rows)} tasks")
    return "\n\n".join(blocks)
