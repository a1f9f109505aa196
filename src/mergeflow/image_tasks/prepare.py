"""Download one task and store it in `mergeflow.data`'s layout without holding a split in memory.

Steps: resolve both source splits (files and row counts, before any decoding) -> build the label maps -> allocate
`{train,val,test}_images.npy` as memory maps at temporary names -> decode each image once, resize and crop, write it
at its row -> rename the arrays into place -> write `classnames.json` last (the completion marker). A failure at any
point leaves no `*.npy` or `classnames.json` behind that was not there before, and the marker is removed up front.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mergeflow.data import TaskClasses, classes_path, save_classes
from mergeflow.image_tasks import hub_datasets
from mergeflow.image_tasks.images import to_array_or_error
from mergeflow.image_tasks.labels import LabelMap, build_label_map
from mergeflow.image_tasks.provenance import resolve_data_source
from mergeflow.image_tasks.readers import (
    SplitReader,
    folder_split,
    parquet_split,
    torchvision_split,
    webdataset_split,
)
from mergeflow.image_tasks.registry import ROLES, HubSource, ImageTask, TorchvisionSource, get_task
from mergeflow.image_tasks.val_split import experts_train_val_indices, val_size
from mergeflow.io import InputError, atomic_path

log = logging.getLogger("mergeflow.image_tasks")


# ------------------------------------------------------------------------------------------------ open splits


def _split_patterns(source: HubSource, card: dict[str, Any], split: str) -> list[str]:
    declared = hub_datasets.card_data_files(card, source.config, split)
    return declared if declared else [source.data_files[split]]


def open_hub_splits(
    source: HubSource, *, revision: str, cache_dir: str | os.PathLike[str] | None
) -> dict[str, SplitReader]:
    """Resolve the train and test splits of a hub source to local files; nothing is decoded yet."""
    cache = None if cache_dir is None else str(cache_dir)
    extra = [source.names_file] if source.names_file else []
    card_folder = hub_datasets.snapshot(source, ["README.md", *extra], revision=revision, cache_dir=cache)
    card = hub_datasets.read_card(card_folder)
    patterns = {role: _split_patterns(source, card, source.splits[role]) for role in ROLES}
    # The snapshot folder is named by the commit `revision` resolved to: fetch the data files at that same commit.
    commit = card_folder.name
    log.info("%s: commit %s", hub_datasets.describe(source, revision), commit)
    folder = hub_datasets.snapshot(
        source, [p for role in ROLES for p in patterns[role]], revision=commit, cache_dir=cache
    )
    names_from_repo = hub_datasets.card_label_names(card, source.config, source.label_column)
    names_from_repo = names_from_repo or hub_datasets.names_file_labels(folder, source.names_file)
    readers = {}
    for role in ROLES:
        where = f"{hub_datasets.describe(source, revision)} split {source.splits[role]!r}"
        files = hub_datasets.match_files(folder, patterns[role], source.file_format)
        if not files:
            raise InputError(f"{where}: no {source.file_format} files match {patterns[role]} in {folder}")
        if source.file_format == "webdataset":
            readers[role] = webdataset_split(files, source, where, names_from_repo or source.label_names)
        else:
            reader = parquet_split(files, source, where)
            names = reader.label_names or names_from_repo or source.label_names
            readers[role] = dataclasses.replace(reader, label_names=names)
    return {role: dataclasses.replace(reader, commit=commit) for role, reader in readers.items()}


def open_splits(
    task: ImageTask,
    source: str,
    *,
    revision: str,
    cache_dir: str | os.PathLike[str] | None,
    root: str | os.PathLike[str] | None,
) -> dict[str, SplitReader]:
    spec = task.source(source)
    if isinstance(spec, HubSource):
        return open_hub_splits(spec, revision=revision, cache_dir=cache_dir)
    if root is None:
        raise InputError(f"source={source!r} needs root=<directory holding the {source} data> (data.root)")
    if isinstance(spec, TorchvisionSource):
        return {role: torchvision_split(spec, role, root) for role in ROLES}
    return {role: folder_split(spec, role, root) for role in spec.splits}


def label_maps(task: ImageTask, source: str, readers: dict[str, SplitReader]) -> dict[str, LabelMap]:
    unused = task.torchvision.unused_names if source == "torchvision" and task.torchvision else frozenset()
    column = {"huggingface": task.hub.label_column, "folder": "class folder"}.get(source, "target")
    return {
        role: build_label_map(
            reader.label_names,
            task.classnames,
            where=f"{reader.where} column {column!r}",
            aliases=task.aliases,
            unused=unused,
        )
        for role, reader in readers.items()
    }


# --------------------------------------------------------------------------------------------------- writing


class _SplitWriter:
    """`<split>_images.npy` as a memory map at a temporary name (renamed when the ExitStack closes cleanly)."""

    def __init__(self, stack: contextlib.ExitStack, directory: Path, split: str, rows: int, size: int) -> None:
        images_tmp = stack.enter_context(atomic_path(directory / f"{split}_images.npy"))
        self.labels_tmp = stack.enter_context(atomic_path(directory / f"{split}_labels.npy"))
        self.images = np.lib.format.open_memmap(images_tmp, mode="w+", dtype=np.uint8, shape=(rows, size, size, 3))
        self.labels = np.full(rows, -1, dtype=np.int64)

    def finish(self) -> None:
        self.images.flush()
        del self.images
        with open(self.labels_tmp, "wb") as handle:
            np.save(handle, self.labels, allow_pickle=False)


SKIP = -1  # route of a source row that no prepared split keeps (training rows when no job fine-tunes)


@dataclasses.dataclass(frozen=True)
class _Destination:
    """Where each source row of a split goes: writers[route[row]] at position[row], or nowhere (route SKIP)."""

    writers: tuple[_SplitWriter, ...]
    route: np.ndarray
    position: np.ndarray

    @classmethod
    def train_val(cls, train: _SplitWriter | None, val: _SplitWriter, n_rows: int, val_seed: int) -> _Destination:
        """Val is the experts' random_split of the base training set; train the rest, or skipped without a writer."""
        train_idx, val_idx = experts_train_val_indices(n_rows, seed=val_seed)
        route = np.full(n_rows, SKIP, dtype=np.int8)
        route[val_idx] = 0
        position = np.empty(n_rows, dtype=np.int64)
        position[val_idx] = np.arange(len(val_idx))
        writers: tuple[_SplitWriter, ...] = (val,)
        if train is not None:
            route[train_idx] = 1
            position[train_idx] = np.arange(len(train_idx))
            writers = (val, train)
        return cls(writers, route, position)

    @classmethod
    def whole(cls, writer: _SplitWriter | None, n_rows: int) -> _Destination:
        route = np.full(n_rows, 0 if writer is not None else SKIP, dtype=np.int8)
        return cls((writer,) if writer is not None else (), route, np.arange(n_rows, dtype=np.int64))


Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], Iterable[Any]]


def _fill(
    reader: SplitReader, labels: LabelMap, to: _Destination, *, size: int, mapper: Mapper, batch_rows: int, bar: Any
) -> None:
    """Stream `reader` into its destination, decoding each image once (in `mapper`'s workers)."""
    row = 0
    for payloads, source_labels in reader.batches(batch_rows):
        if row + len(payloads) > reader.num_rows:
            raise InputError(f"{reader.where}: more rows than the {reader.num_rows} its metadata declares")
        mapped = labels.apply(source_labels, row, reader.locate)
        kept = [k for k in range(len(payloads)) if to.route[row + k] != SKIP]
        results = mapper(to_array_or_error, [(payloads[k], size) for k in kept])
        for k, result in zip(kept, results, strict=True):
            if isinstance(result, str):
                raise InputError(f"{reader.where}, {reader.locate(row + k)}: {result}")
            writer, at = to.writers[to.route[row + k]], to.position[row + k]
            writer.images[at] = result
            writer.labels[at] = mapped[k]
        row += len(payloads)
        bar.update(len(payloads))
    if row != reader.num_rows:
        raise InputError(f"{reader.where}: read {row} rows but its metadata declares {reader.num_rows}")


@contextlib.contextmanager
def _mapper(workers: int) -> Any:
    """Builtin map, or a spawned process pool for decoding (fork is unsafe next to pyarrow's and tqdm's threads)."""
    if workers <= 1:
        yield lambda fn, items: map(fn, items)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield lambda fn, items: pool.map(fn, items, chunksize=max(1, len(items) // (4 * workers)))


# ------------------------------------------------------------------------------------------------ entry point


def prepare_image_task(
    task: str,
    out_dir: str | os.PathLike[str],
    *,
    image_size: int,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str = "main",
    emnist_split: str = "digits",
    val_seed: int = 0,
    progress: bool = True,
    source: str = "huggingface",
    root: str | os.PathLike[str] | None = None,
    workers: int = 1,
    batch_rows: int = 256,
    with_train: bool = True,
) -> dict[str, int]:
    """Download `task` and store it as `mergeflow.data` expects; returns the number of examples per split.

    source "huggingface": the registry's Hugging Face dataset repo at `revision`, through the hub cache at `cache_dir`
    (HF_HUB_OFFLINE=1 resolves from the cache only). "torchvision": `torchvision.datasets` with `download=True`
    into `root` (Stanford Cars: files placed there by hand). "folder": the experts' image folders under `root`.
    "experts": per task, whichever of those lists the training set in the experts' order
    (`mergeflow.image_tasks.provenance`). Val is the experts' own val folder where their code has one (EuroSAT),
    else `random_split`'s held-out part of the source training split (`mergeflow.image_tasks.val_split`, seeded by
    `val_seed`, 0 as theirs); train is the rest, written only `with_train` (only fine-tuning reads it).
    `workers` > 1 decodes in that many spawned processes (the calling program's main module must be importable,
    as for any spawn pool); memory stays bounded by `batch_rows` encoded images at a time. `classnames.json`
    records where the data came from.
    """
    spec = get_task(task, emnist_split=emnist_split)
    if image_size < 1 or batch_rows < 1:
        raise InputError(f"image_size={image_size}, batch_rows={batch_rows}: both must be positive")
    source = resolve_data_source(spec.name, source)
    readers = open_splits(spec, source, revision=revision, cache_dir=cache_dir, root=root)
    for reader in readers.values():
        if reader.num_rows == 0:
            raise InputError(f"{reader.where}: the split has no rows")
    maps = label_maps(spec, source, readers)
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    classes_path(directory).unlink(missing_ok=True)
    plan = _WritePlan(spec.name, image_size, val_seed, with_train, workers, batch_rows, progress)
    counts = _write_splits(directory, readers, maps, plan)
    record = {
        "source": source,
        "where": {role: reader.where for role, reader in readers.items()},
        "val": "own val split" if "val" in readers else f"random_split, seed {val_seed}",
        "counts": counts,
        **_source_version(spec, source, revision, readers["train"].commit, root),
    }
    save_classes(directory, spec.name, TaskClasses(spec.classnames, spec.templates), data=record)
    log.info("%s: wrote %s to %s", spec.name, counts, directory)
    return counts


def _source_version(
    spec: ImageTask, source: str, revision: str, commit: str | None, root: str | os.PathLike[str] | None
) -> dict[str, str]:
    if source == "huggingface":
        return {"repo_id": spec.hub.repo_id, "revision": revision, "commit": str(commit)}
    import torchvision

    return {"root": str(Path(str(root)).resolve()), "torchvision": torchvision.__version__}


@dataclasses.dataclass(frozen=True)
class _WritePlan:
    name: str
    size: int
    val_seed: int
    with_train: bool
    workers: int
    batch_rows: int
    progress: bool


def _write_splits(
    directory: Path, readers: dict[str, SplitReader], maps: dict[str, LabelMap], plan: _WritePlan
) -> dict[str, int]:
    """The `*.npy` pairs, renamed into place only once every row has been written; a stale train pair is removed."""
    from tqdm import tqdm

    n_source, n_test = readers["train"].num_rows, readers["test"].num_rows
    own_val = "val" in readers
    n_val = readers["val"].num_rows if own_val else val_size(n_source)
    counts = {"train": n_source if own_val else n_source - n_val, "val": n_val, "test": n_test}
    if not plan.with_train:
        del counts["train"]
        for stale in (directory / "train_images.npy", directory / "train_labels.npy"):
            stale.unlink(missing_ok=True)
    log.info("%s: %d source training rows -> %s", plan.name, n_source, counts)
    with contextlib.ExitStack() as stack:
        writers = {split: _SplitWriter(stack, directory, split, rows, plan.size) for split, rows in counts.items()}
        mapper = stack.enter_context(_mapper(plan.workers))
        if own_val:
            destinations = {
                "train": _Destination.whole(writers.get("train"), n_source),
                "val": _Destination.whole(writers["val"], n_val),
            }
        else:
            destinations = {
                "train": _Destination.train_val(writers.get("train"), writers["val"], n_source, plan.val_seed)
            }
        destinations["test"] = _Destination.whole(writers["test"], n_test)
        for role, destination in destinations.items():
            if not destination.writers:
                continue
            reader = readers[role]
            bar = tqdm(
                total=reader.num_rows, desc=f"{plan.name} {role}", unit="img", mininterval=5, disable=not plan.progress
            )
            with bar:
                _fill(
                    reader, maps[role], destination, size=plan.size, mapper=mapper, batch_rows=plan.batch_rows, bar=bar
                )
        for writer in writers.values():
            writer.finish()
    return counts
