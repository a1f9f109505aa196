"""Map a source's label indices to our class indices by class name, so that a source's label order never matters.

Sources disagree on order (FER2013: alphabetical in clip-benchmark's webdataset, original order in torchvision) and
on spelling ("apple_pie" vs "apple pie", "T - shirt / top" vs "T-shirt/top", hiragana vs romanised KMNIST). Names
are compared after `normalise_name`, then through the task's aliases; anything unmatched is an error, never a guess.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mergeflow.io import InputError

log = logging.getLogger("mergeflow.image_tasks")


def normalise_name(name: str) -> str:
    """Case-fold and turn every run of non-alphanumeric characters into one space ("Apple_Pie!" -> "apple pie")."""
    text = unicodedata.normalize("NFKC", str(name)).casefold()
    return " ".join("".join(ch if ch.isalnum() else " " for ch in text).split())


@dataclass(frozen=True)
class LabelMap:
    """Source label index -> our class index. `lookup` None means the source already uses our indices."""

    where: str
    n_classes: int
    lookup: np.ndarray | None = None
    source_names: tuple[str, ...] | None = None

    def apply(self, labels: np.ndarray, first_row: int, locate: Callable[[int], str]) -> np.ndarray:
        """Map one batch of source labels (rows `first_row`...); errors name the offending row and value."""
        labels = np.asarray(labels, dtype=np.int64)
        limit = self.n_classes if self.lookup is None else len(self.lookup)
        bad = np.flatnonzero((labels < 0) | (labels >= limit))
        if bad.size:
            row = first_row + int(bad[0])
            raise InputError(f"{self.where}, {locate(row)}: label {int(labels[bad[0]])} is outside [0, {limit})")
        if self.lookup is None:
            return labels
        mapped = self.lookup[labels]
        unused = np.flatnonzero(mapped < 0)
        if unused.size:
            row = first_row + int(unused[0])
            name = self.source_names[labels[unused[0]]] if self.source_names else labels[unused[0]]
            raise InputError(f"{self.where}, {locate(row)}: source class {name!r} has no counterpart in our classes")
        return mapped


def _index_names(names: Sequence[str]) -> bool:
    return all(name == str(i) for i, name in enumerate(names))


def build_label_map(
    source_names: Sequence[str] | None,
    classnames: Sequence[str],
    *,
    where: str,
    aliases: Mapping[str, str] | None = None,
    unused: frozenset[str] = frozenset(),
) -> LabelMap:
    """Build the mapping for one source column; `where` names the dataset, split and column in every error.

    `source_names` None (the files carry no class names and the registry documents none) means the source labels
    are our indices; they are range-checked row by row. Names that are only their own index ("0", "1", ...) carry no
    information and are treated the same way unless they match our names.
    """
    n_classes = len(classnames)
    if source_names is None:
        return LabelMap(where, n_classes)
    source_names = tuple(str(name) for name in source_names)
    ours = {normalise_name(name): index for index, name in enumerate(classnames)}
    if len(ours) != n_classes:
        raise ValueError(f"{where}: our class names are not distinct after normalisation: {list(classnames)}")
    if _index_names(source_names) and not _index_names(classnames) and len(source_names) == n_classes:
        log.info("%s: class names are bare indices 0..%d; taking them as our class indices", where, n_classes - 1)
        return LabelMap(where, n_classes)
    alias = {normalise_name(k): normalise_name(v) for k, v in (aliases or {}).items()}
    lookup = np.full(len(source_names), -1, dtype=np.int64)
    unmatched = []
    for j, name in enumerate(source_names):
        if name in unused:
            continue
        key = normalise_name(name)
        key = alias.get(key, key)
        if key in ours:
            lookup[j] = ours[key]
        else:
            unmatched.append(name)
    if unmatched:
        raise InputError(
            f"{where}: source class names {unmatched} match none of our {n_classes} classes "
            f"(compared case-insensitively, punctuation as spaces); our classes start {list(classnames[:5])}"
        )
    _check_bijection(lookup, classnames, source_names, where)
    return LabelMap(where, n_classes, lookup, source_names)


def _check_bijection(lookup: np.ndarray, classnames: Sequence[str], source_names: Sequence[str], where: str) -> None:
    used = lookup[lookup >= 0]
    counts = np.bincount(used, minlength=len(classnames))
    if (counts > 1).any():
        twice = [classnames[i] for i in np.flatnonzero(counts > 1)]
        raise InputError(f"{where}: several source classes {list(source_names)} map onto our classes {twice}")
    if (counts == 0).any():
        missing = [classnames[i] for i in np.flatnonzero(counts == 0)]
        raise InputError(f"{where}: the source has no class for our classes {missing} (source: {list(source_names)})")
