"""Stream one split of a source as batches of (encoded image or PIL image, label), with its row count known first.

Row counts come from metadata (Parquet footers, tar headers, `len()` of a torchvision dataset) so that output arrays
can be allocated before any image is decoded. `locate(row)` turns a split-wide row number into "file X, row Y" for
error messages.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mergeflow.image_tasks.hub_datasets import schema_label_names
from mergeflow.image_tasks.registry import FolderSource, HubSource, TorchvisionSource
from mergeflow.io import InputError

Payload = Any  # encoded bytes, a PIL image or a uint8 array
Batch = tuple[list[Payload], np.ndarray]


@dataclass(frozen=True)
class SplitReader:
    where: str
    num_rows: int
    label_names: tuple[str, ...] | None
    batches: Callable[[int], Iterator[Batch]]
    locate: Callable[[int], str]
    commit: str | None = None  # hub sources: the commit the revision resolved to


def _locator(files: Sequence[Path], counts: Sequence[int]) -> Callable[[int], str]:
    starts = np.cumsum([0, *counts])

    def locate(row: int) -> str:
        index = int(np.searchsorted(starts, row, side="right")) - 1
        index = min(max(index, 0), len(files) - 1)
        return f"row {row} (file {files[index].name}, row {row - int(starts[index])})"

    return locate


# ---------------------------------------------------------------------------------------------------- Parquet


def _image_kind(field_type: Any) -> str | None:
    import pyarrow as pa

    if pa.types.is_struct(field_type) and field_type.get_field_index("bytes") >= 0:
        return "struct"
    if pa.types.is_binary(field_type) or pa.types.is_large_binary(field_type):
        return "binary"
    return None


def _check_parquet_schema(schema: Any, path: Path, source: HubSource, where: str) -> None:
    import pyarrow as pa

    columns = schema.names
    for column in (source.image_column, source.label_column):
        if column not in columns:
            raise InputError(f"{where}: {path.name} has no column {column!r}; its columns are {columns}")
    image_type = schema.field(source.image_column).type
    if _image_kind(image_type) is None:
        raise InputError(
            f"{where}: {path.name} column {source.image_column!r} is {image_type}; expected the `datasets` Image "
            "feature (struct<bytes, path>) or binary image bytes"
        )
    label_type = schema.field(source.label_column).type
    if not (pa.types.is_integer(label_type) or pa.types.is_boolean(label_type)):
        column = source.label_column
        raise InputError(f"{where}: {path.name} column {column!r} is {label_type}; expected integer labels")


def _open_parquet(path: Path, where: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise InputError(f"{where}: {path.name} is not a readable Parquet file ({err})") from None


def _image_bytes(column: Any, kind: str) -> tuple[list[Any], list[Any]]:
    if kind == "struct":
        children = {column.type.field(i).name: child for i, child in enumerate(column.flatten())}
        paths = children["path"].to_pylist() if "path" in children else [None] * len(column)
        return children["bytes"].to_pylist(), paths
    return column.to_pylist(), [None] * len(column)


def parquet_split(files: Sequence[Path], source: HubSource, where: str) -> SplitReader:
    """A split stored as Parquet files, read in file order; class names from the schema metadata if present."""
    counts, names = [], None
    for path in files:
        handle = _open_parquet(path, where)
        _check_parquet_schema(handle.schema_arrow, path, source, where)
        counts.append(handle.metadata.num_rows)
        names = names or schema_label_names(handle.schema_arrow.metadata, source.label_column)
    locate = _locator(files, counts)

    def batches(batch_rows: int) -> Iterator[Batch]:
        row = 0
        for path in files:
            handle = _open_parquet(path, where)
            kind = _image_kind(handle.schema_arrow.field(source.image_column).type)
            columns = [source.image_column, source.label_column]
            for batch in handle.iter_batches(batch_size=batch_rows, columns=columns):
                payloads, paths = _image_bytes(batch.column(0), kind)
                labels = batch.column(1)
                for k, payload in enumerate(payloads):
                    if payload is None:
                        stored = f" (stored as a path reference {paths[k]!r})" if paths[k] else ""
                        raise InputError(f"{where}, {locate(row + k)}: image bytes missing{stored}")
                if labels.null_count:
                    first = labels.to_pylist().index(None)
                    raise InputError(f"{where}, {locate(row + first)}: label is missing")
                yield payloads, labels.to_numpy(zero_copy_only=False).astype(np.int64)
                row += len(payloads)

    return SplitReader(where, sum(counts), names, batches, locate)


# ------------------------------------------------------------------------------------------------- WebDataset


def _sample_key(member_name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the base name, the rest is the field."""
    folder, base = posixpath.split(member_name)
    stem, _, field = base.partition(".")
    return posixpath.join(folder, stem), field.lower()


def _open_tar(path: Path, where: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (OSError, tarfile.TarError) as err:
        raise InputError(f"{where}: {path.name} is not a readable tar shard ({err})") from None


def _count_samples(path: Path, where: str) -> int:
    keys = set()
    with _open_tar(path, where) as tar:
        for member in tar:
            if member.isfile():
                keys.add(_sample_key(member.name)[0])
    return len(keys)


def _tar_samples(path: Path, where: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {field: bytes}) for consecutive members sharing a key, in shard order."""
    key, fields = None, {}
    with _open_tar(path, where) as tar:
        for member in tar:
            if not member.isfile():
                continue
            member_key, field = _sample_key(member.name)
            if member_key != key and fields:
                yield key, fields
                fields = {}
            key = member_key
            fields[field] = tar.extractfile(member).read()
    if fields:
        yield key, fields


def webdataset_split(
    files: Sequence[Path], source: HubSource, where: str, names: tuple[str, ...] | None
) -> SplitReader:
    """A split stored as WebDataset tar shards: `<key>.<image_column>` image bytes and `<key>.<label_column>` text."""
    counts = [_count_samples(path, where) for path in files]
    locate = _locator(files, counts)

    def parse(key: str, fields: dict[str, bytes], row: int) -> tuple[bytes, int]:
        for field in (source.image_column, source.label_column):
            if field not in fields:
                raise InputError(f"{where}, {locate(row)}: sample {key!r} has no {field!r} entry ({sorted(fields)})")
        text = fields[source.label_column].decode("utf-8", errors="replace").strip()
        try:
            return fields[source.image_column], int(text)
        except ValueError:
            raise InputError(f"{where}, {locate(row)}: sample {key!r} label {text!r} is not an integer") from None

    def batches(batch_rows: int) -> Iterator[Batch]:
        row, payloads, labels = 0, [], []
        for path in files:
            for key, fields in _tar_samples(path, where):
                payload, label = parse(key, fields, row)
                payloads.append(payload)
                labels.append(label)
                row += 1
                if len(payloads) == batch_rows:
                    yield payloads, np.asarray(labels, dtype=np.int64)
                    payloads, labels = [], []
        if payloads:
            yield payloads, np.asarray(labels, dtype=np.int64)

    return SplitReader(where, sum(counts), names, batches, locate)


# ------------------------------------------------------------------------------------------------ torchvision


def torchvision_split(spec: TorchvisionSource, role: str, root: str | Path) -> SplitReader:
    """`torchvision.datasets.<spec.dataset>(root, download=True, ...)`: downloads unless the files are already there."""
    import torchvision.datasets

    kwargs = {**spec.kwargs, **spec.splits[role]}
    where = f"torchvision.datasets.{spec.dataset}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) in {root}"
    factory = getattr(torchvision.datasets, spec.dataset)
    try:
        dataset = factory(root=str(root), download=spec.download, **kwargs)
    except (RuntimeError, OSError, ValueError) as err:
        action = "download or open" if spec.download else "open (its files must be placed under root by hand)"
        raise InputError(f"{where}: could not {action} the dataset ({type(err).__name__}: {err})") from err
    names = spec.label_names or getattr(dataset, "classes", None)
    size = len(dataset)

    def locate(row: int) -> str:
        return f"row {row}"

    def batches(batch_rows: int) -> Iterator[Batch]:
        for start in range(0, size, batch_rows):
            items = [dataset[i] for i in range(start, min(size, start + batch_rows))]
            yield [image for image, _ in items], np.asarray([int(label) for _, label in items], dtype=np.int64)

    return SplitReader(where, size, tuple(names) if names is not None else None, batches, locate)


# ----------------------------------------------------------------------------------------------------- folders


def _listed_names(path: Path, where: str) -> frozenset[str]:
    try:
        return frozenset(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{where}: cannot read the split list {path} ({err})") from None


def folder_split(spec: FolderSource, role: str, root: str | Path) -> SplitReader:
    """One role of a folder source, in `ImageFolder`'s order: torchvision's own `find_classes` and `make_dataset`."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    directory = Path(root) / spec.splits[role]
    where = f"image folder {directory}"
    if not directory.is_dir():
        raise InputError(f"{where}: not a directory (data.root must hold the experts' data_location layout)")
    listed = None
    if role in spec.file_lists:
        listed = _listed_names(Path(root) / spec.file_lists[role], where)
        where += f" filtered by {spec.file_lists[role]}"
    try:
        folders, class_to_idx = find_classes(str(directory))
        samples = make_dataset(
            str(directory),
            class_to_idx,
            extensions=None if listed is not None else IMG_EXTENSIONS,
            is_valid_file=None if listed is None else (lambda path: Path(path).name in listed),
        )
    except (FileNotFoundError, OSError) as err:
        raise InputError(f"{where}: {err}") from None
    names = tuple(folder[spec.strip_prefix :].replace("_", " ") for folder in folders)

    def locate(row: int) -> str:
        return f"row {row} ({samples[row][0]})"

    def batches(batch_rows: int) -> Iterator[Batch]:
        for start in range(0, len(samples), batch_rows):
            chunk = samples[start : start + batch_rows]
            yield [Path(path).read_bytes() for path, _ in chunk], np.asarray([t for _, t in chunk], dtype=np.int64)

    return SplitReader(where, len(samples), names, batches, locate)
