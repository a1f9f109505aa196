"""The paper's 20 image-classification tasks: where each one is downloaded from and how its labels map to ours.

Class names and prompt templates live in `classes.json` (package data); they follow the TALL / task-vectors line
(the CLIP per-dataset templates), with class names cleaned to readable text. Our class order is the order of that
file; a source's labels are remapped to it by class name (see `mergeflow.image_tasks.labels`).

Each `HubSource` records the repo as it is served: file layout, split names, column names. `README.md`'s `configs`
section, when present, overrides the `data_files` globs kept here (see `mergeflow.image_tasks.hub_datasets`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

from mergeflow.io import InputError

TASKS_8 = ("SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD")
TASKS_14 = TASKS_8 + ("CIFAR100", "STL10", "Flowers102", "OxfordIIITPet", "PCAM", "FER2013")
TASKS_20 = TASKS_14 + ("EMNIST", "CIFAR10", "Food101", "FashionMNIST", "RenderedSST2", "KMNIST")
TASK_GROUPS: Mapping[int, tuple[str, ...]] = {8: TASKS_8, 14: TASKS_14, 20: TASKS_20}

# EMNIST is the 10-class "digits" split in the TALL/CART line, but "letters" (26 classes) in FusionBench.
EMNIST_SPLITS = ("digits", "letters")
ROLES = ("train", "test")


@dataclass(frozen=True)
class HubSource:
    """A dataset repo on the Hugging Face hub, described as its files are served."""

    repo_id: str
    # role ("train" / "test") -> the repo's split name (Food101's test split is called "validation").
    splits: Mapping[str, str]
    # repo split name -> glob of its files in the repo; used when README.md declares no `configs` data files.
    data_files: Mapping[str, str]
    image_column: str
    label_column: str
    config: str | None = None
    file_format: Literal["parquet", "webdataset"] = "parquet"
    # Source class names in source label order, for files that carry no ClassLabel names (documented facts).
    label_names: tuple[str, ...] | None = None
    # A repo file listing the class names in source label order, one per line (webdataset repos).
    names_file: str | None = None


@dataclass(frozen=True)
class TorchvisionSource:
    """A `torchvision.datasets` class downloaded with `download=True` into a root directory."""

    dataset: str
    # role -> constructor keyword arguments selecting that split (e.g. {"train": True} or {"split": "test"}).
    splits: Mapping[str, Mapping[str, Any]]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    # Entries of the dataset's `classes` that have no counterpart among our classes and must never occur.
    unused_names: frozenset[str] = frozenset()
    # Class names in label order, replacing the dataset's `classes` where those are not plain names.
    label_names: tuple[str, ...] | None = None
    # False where torchvision can no longer download the files (Stanford Cars): they must already be under root.
    download: bool = True


@dataclass(frozen=True)
class FolderSource:
    """Image folders under the experts' `data_location`, read as `torchvision.datasets.ImageFolder` reads them.

    DTD, EuroSAT, SUN397 and RESISC45 were prepared as folders by hand for the task_vectors / TALL-masks / CART code
    (task_vectors issue #1; JH-GEECS/CART src/dataset/split_generator.py); the experts' base order is ImageFolder's:
    class folders sorted by name, files sorted within each.
    """

    # role ("train", "test", and "val" where the experts' code has its own val folder) -> folder under the root.
    splits: Mapping[str, str]
    # Characters dropped from the front of a folder name before "_" becomes " " (SUN397's "a_abbey" -> "abbey").
    strip_prefix: int = 0
    # role -> a file under the root listing the base names of that role's images (RESISC45's split lists).
    file_lists: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageTask:
    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    hub: HubSource
    torchvision: TorchvisionSource | None = None
    folder: FolderSource | None = None
    # The class texts exactly as the experts' code formats them, where they differ from our readable ones.
    experts_classnames: tuple[str, ...] | None = None
    # Other spellings of our class names used by sources: source name -> our class name.
    aliases: Mapping[str, str] = field(default_factory=dict)

    def source(self, kind: str) -> HubSource | TorchvisionSource | FolderSource:
        """Where this task comes from: "huggingface" (every task), "torchvision" or "folder" (tasks that have one)."""
        if kind == "huggingface":
            return self.hub
        if kind in ("torchvision", "folder"):
            found = self.torchvision if kind == "torchvision" else self.folder
            if found is None:
                having = [n for n, t in TASKS.items() if (t.torchvision if kind == "torchvision" else t.folder)]
                raise InputError(f"task {self.name!r} has no {kind} source; tasks with one: {having}")
            return found
        raise InputError(f"source={kind!r}: expected 'huggingface', 'torchvision' or 'folder'")


def _split_files(prefix: str, *splits: str, suffix: str = "-*.parquet") -> dict[str, str]:
    return {split: f"{prefix}{split}{suffix}" for split in splits}


def _train_test(train: str = "train", test: str = "test") -> dict[str, str]:
    return {"train": train, "test": test}


def _hub(repo_id: str, prefix: str = "data/", *, test: str = "test", **kwargs: Any) -> HubSource:
    """The layout `push_to_hub` / the hub's Parquet conversion writes: `<prefix><split>-NNNNN-of-NNNNN.parquet`."""
    kwargs.setdefault("image_column", "image")
    kwargs.setdefault("label_column", "label")
    return HubSource(
        repo_id=repo_id, splits=_train_test(test=test), data_files=_split_files(prefix, "train", test), **kwargs
    )


_TRAIN_FLAG = {"train": {"train": True}, "test": {"train": False}}


def _tv_train_flag(dataset: str, **kwargs: Any) -> TorchvisionSource:
    return TorchvisionSource(dataset, _TRAIN_FLAG, kwargs)


def _tv_split(dataset: str, train: str = "train", test: str = "test") -> TorchvisionSource:
    return TorchvisionSource(dataset, {"train": {"split": train}, "test": {"split": test}})


_HIRAGANA_TO_ROMAJI = dict(zip("おきすつなはまやれを", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")))

# EuroSAT's folder names (torchvision / most mirrors) -> the CLIP class names we use.
_EUROSAT_FOLDERS = {
    "AnnualCrop": "annual crop land",
    "Forest": "forest",
    "HerbaceousVegetation": "brushland or shrubland",
    "Highway": "highway or road",
    "Industrial": "industrial buildings or commercial buildings",
    "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments",
    "River": "river",
    "SeaLake": "lake or sea",
}

# FER2013 sources spell the emotions as nouns or base adjectives; ours are CLIP's adjectives.
_FER_SPELLINGS = {
    "anger": "angry",
    "disgust": "disgusted",
    "fear": "fearful",
    "happiness": "happy",
    "sadness": "sad",
    "surprise": "surprised",
}

# PCAM's bool label in source order: False (0), True (1).
_PCAM_NAMES = ("lymph node", "lymph node containing metastatic tumor tissue")

# Facts per task. Hub ids follow FusionBench's configs (tanganke/fusion_bench, config/dataset/image_classification)
# except where noted; file layouts and column names were checked against the repos' file trees and dataset cards.
_SOURCES: dict[str, dict[str, Any]] = {
    # Folder sources: the experts' `data_location` layout (src/datasets/{sun397,dtd,eurosat,resisc45}.py in
    # nik-dim/tall_masks @d10af8b). SUN397's folders are the category paths flattened with "_" ("a_abbey").
    "SUN397": {
        "hub": _hub("tanganke/sun397"),
        "folder": FolderSource({"train": "sun397/train", "test": "sun397/val"}, strip_prefix=2),
    },
    # torchvision's Stanford Cars download is dead; its reader still opens files placed under root by hand, in the
    # order of devkit/cars_train_annos.mat, as the experts' copy of it (src/datasets/cars.py) does.
    "Cars": {
        "hub": _hub("tanganke/stanford_cars"),
        "torchvision": TorchvisionSource(
            "StanfordCars", {"train": {"split": "train"}, "test": {"split": "test"}}, download=False
        ),
    },
    # The experts' RESISC45 is an ImageFolder over all images, filtered by the resisc45-{train,test}.txt lists.
    "RESISC45": {
        "hub": _hub("tanganke/resisc45"),
        "folder": FolderSource(
            {"train": "resisc45/NWPU-RESISC45", "test": "resisc45/NWPU-RESISC45"},
            file_lists={"train": "resisc45/resisc45-train.txt", "test": "resisc45/resisc45-test.txt"},
        ),
    },
    # EuroSAT is the one task whose experts' code has a val folder of its own (EuroSATVal in eurosat.py).
    "EuroSAT": {
        "hub": _hub("tanganke/eurosat"),
        "folder": FolderSource(
            {"train": "EuroSAT_splits/train", "val": "EuroSAT_splits/val", "test": "EuroSAT_splits/test"}
        ),
        "aliases": _EUROSAT_FOLDERS,
    },
    # The `cropped_digits` config (the other, `full_numbers`, is a detection set).
    "SVHN": {
        "hub": _hub("ufldl-stanford/svhn", "cropped_digits/", config="cropped_digits"),
        "torchvision": _tv_split("SVHN"),
    },
    "GTSRB": {"hub": _hub("tanganke/gtsrb"), "torchvision": _tv_split("GTSRB")},
    # torchvision's MNIST.classes read "0 - zero", ...; its labels are the digit values.
    "MNIST": {
        "hub": _hub("ylecun/mnist", "mnist/", config="mnist"),
        "torchvision": TorchvisionSource("MNIST", _TRAIN_FLAG, label_names=tuple("0123456789")),
    },
    # The experts' dtd/train holds DTD's train1 + val1 and dtd/val its test1 (task_vectors issue #1; the re-released
    # TALL-masks DTD expert has 376 val images, so N = 3,760).
    "DTD": {"hub": _hub("tanganke/dtd"), "folder": FolderSource({"train": "dtd/train", "test": "dtd/val"})},
    # uoft-cs/cifar100: columns `img`, `fine_label` (and `coarse_label`, unused).
    "CIFAR100": {
        "hub": _hub("uoft-cs/cifar100", "cifar100/", config="cifar100", image_column="img", label_column="fine_label"),
        "torchvision": _tv_train_flag("CIFAR100"),
    },
    "STL10": {"hub": _hub("tanganke/stl10"), "torchvision": _tv_split("STL10")},
    # Train split only (1,020 images), as torchvision's split="train" used by TALL; `validation` stays unused.
    "Flowers102": {"hub": _hub("dpdl-benchmark/oxford_flowers102"), "torchvision": _tv_split("Flowers102")},
    # timm/oxford-iiit-pet's train split is the official trainval list (3,680 images).
    "OxfordIIITPet": {
        "hub": _hub("timm/oxford-iiit-pet"),
        "torchvision": _tv_split("OxfordIIITPet", train="trainval"),
    },
    # 1aurent/PatchCamelyon stores the label as a bool (True: metastatic tissue); splits train/valid/test.
    "PCAM": {
        "hub": _hub("1aurent/PatchCamelyon", label_names=_PCAM_NAMES),
        "torchvision": _tv_split("PCAM"),
    },
    # FusionBench's source: webdataset shards `<split>/<n>.tar` with `<key>.jpg` + `<key>.cls`. Its label order is the
    # repo's classnames.txt (alphabetical: angry, disgusted, fearful, happy, neutral, sad, surprised); ours is the
    # original FER2013 order of TALL and torchvision (angry, disgusted, fearful, happy, sad, surprised, neutral).
    # (TALL itself read Jeneral/fer-2013, whose files are torch pickles, not Parquet, on its main branch.)
    "FER2013": {
        "hub": HubSource(
            repo_id="clip-benchmark/wds_fer2013",
            splits=_train_test(),
            data_files=_split_files("", "train", "test", suffix="/*.tar"),
            image_column="jpg",
            label_column="cls",
            file_format="webdataset",
            names_file="classnames.txt",
        ),
        "aliases": _FER_SPELLINGS,
    },
    # EMNIST "digits" (240,000 / 40,000), as torchvision's EMNIST(split="digits") used by TALL. Not a FusionBench repo:
    # FusionBench has only "letters" and "mnist" (tanganke/emnist_mnist, 60,000 images, a different split). The labels
    # are plain int64 digit values (no ClassLabel), so they are taken as our indices after a range check.
    "EMNIST": {
        "hub": _hub("ernestchu/emnist-digits"),
        "torchvision": _tv_train_flag("EMNIST", split="digits"),
    },
    "EMNIST/letters": {
        "hub": _hub("tanganke/emnist_letters", "emnist-letters/", config="emnist-letters"),
        # torchvision's letters labels run 1..26; class 0 is a placeholder named "N/A".
        "torchvision": TorchvisionSource("EMNIST", _TRAIN_FLAG, {"split": "letters"}, unused_names=frozenset({"N/A"})),
    },
    "CIFAR10": {
        "hub": _hub("uoft-cs/cifar10", "plain_text/", config="plain_text", image_column="img"),
        "torchvision": _tv_train_flag("CIFAR10"),
    },
    # ethz/food101 names its test split "validation" (25,250 images, the official test list).
    "Food101": {"hub": _hub("ethz/food101", test="validation"), "torchvision": _tv_split("Food101")},
    "FashionMNIST": {
        "hub": _hub("zalando-datasets/fashion_mnist", "fashion_mnist/", config="fashion_mnist"),
        "torchvision": _tv_train_flag("FashionMNIST"),
    },
    "RenderedSST2": {"hub": _hub("nateraw/rendered-sst2"), "torchvision": _tv_split("RenderedSST2")},
    # tanganke/kmnist names its classes in hiragana; torchvision (and we) use the romanisation.
    "KMNIST": {
        "hub": _hub("tanganke/kmnist", "kmnist/", config="kmnist"),
        "torchvision": _tv_train_flag("KMNIST"),
        "aliases": _HIRAGANA_TO_ROMAJI,
    },
}


@cache
def _classes_file() -> dict[str, dict[str, list[str]]]:
    text = resources.files("mergeflow.image_tasks").joinpath("classes.json").read_text(encoding="utf-8")
    return json.loads(text)


def _build(key: str) -> ImageTask:
    entry = _classes_file()[key]
    facts = _SOURCES[key]
    return ImageTask(
        name=key.split("/")[0],
        classnames=tuple(entry["classnames"]),
        templates=tuple(entry["templates"]),
        hub=facts["hub"],
        torchvision=facts.get("torchvision"),
        folder=facts.get("folder"),
        experts_classnames=tuple(entry["experts_classnames"]) if "experts_classnames" in entry else None,
        aliases=dict(facts.get("aliases", {})),
    )


TASKS: Mapping[str, ImageTask] = {name: _build(name) for name in TASKS_20}
EMNIST_LETTERS: ImageTask = _build("EMNIST/letters")


def get_task(name: str, *, emnist_split: str = "digits") -> ImageTask:
    """The task `name`; for EMNIST, `emnist_split` picks "digits" (TALL/CART, default) or "letters" (FusionBench)."""
    if name not in TASKS:
        raise InputError(f"unknown image task {name!r}; expected one of {list(TASKS)}")
    if emnist_split not in EMNIST_SPLITS:
        raise InputError(f"emnist_split={emnist_split!r}: expected one of {EMNIST_SPLITS}")
    if name == "EMNIST" and emnist_split == "letters":
        return EMNIST_LETTERS
    return TASKS[name]


def task_source(
    name: str, source: str = "huggingface", *, emnist_split: str = "digits"
) -> HubSource | TorchvisionSource | FolderSource:
    """Where task `name` comes from (`ImageTask.source`)."""
    return get_task(name, emnist_split=emnist_split).source(source)
