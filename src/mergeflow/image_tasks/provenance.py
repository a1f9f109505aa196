"""How the experts' code loaded each task, and whether one of our data sources reproduces its validation split.

The published experts (task_vectors, TALL-masks, and the CART authors' copies of both) were fine-tuned on the
training part of "<Task>Val" (`mergeflow.image_tasks.val_split`), so our val split holds exactly the images they
never trained on only when our source lists the base training set in the same order as their code did. Facts below
were read in nik-dim/tall_masks @d10af8b (src/datasets/*.py; task_vectors @826a64c and CART @964cfd7 load the shared
tasks identically) and in torchvision's dataset classes; each `exact` entry says why that source's order is theirs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from mergeflow.data import classes_path
from mergeflow.image_tasks.registry import TASKS, get_task
from mergeflow.image_tasks.val_split import val_size
from mergeflow.io import InputError, read_json

# Expert sources fine-tuned by the task_vectors / TALL-masks code (CART re-uploads both): one split rule, one head code.
EXPERTS_CODE_SOURCES = frozenset({"tall_masks", "cart_authors", "task_vectors"})
HEAD_TEXTS = ("readable", "experts")

_TORCHVISION_SAME_CLASS = "the experts' code calls this torchvision class with the same split arguments"
_FOLDER_LAYOUT = (
    "the experts' folder layout read in ImageFolder order (class folders sorted, files sorted), exact when the "
    "folders follow their recipe: {recipe}"
)


@dataclass(frozen=True)
class ExpertsData:
    """One task as the experts' code loads it."""

    code: str  # the dataset file in nik-dim/tall_masks
    base_train: str  # the base training set, in words, with its order
    n_train: int  # images in the base training set (N)
    n_test: int | None  # images in the test set (None: not established)
    # data source -> why its training order equals the experts' base order (val is exact only through these).
    exact: Mapping[str, str] = field(default_factory=dict)
    # The source that reads the experts' layout, where none is exact (EuroSAT's folders, FER2013's hub repo).
    closest: str | None = None
    # The expert sources whose training split these facts describe (DTD: only TALL-masks' re-released expert).
    known_for: frozenset[str] = EXPERTS_CODE_SOURCES
    # Test images our `experts` source serves where the experts' own count is not established (FER2013: the public
    # and private test sets of clip-benchmark/wds_fer2013).
    served_n_test: int | None = None
    # Images in the experts' own val folder; None where val is random_split's last v of N.
    own_val: int | None = None
    note: str = ""

    @property
    def n_val(self) -> int:
        return self.own_val if self.own_val is not None else val_size(self.n_train)

    @property
    def val_rule(self) -> str:
        if self.own_val is not None:
            return f"the experts' own val folder ({self.own_val} images); training uses all {self.n_train}"
        return (
            f"random_split(train, [N - v, v], Generator().manual_seed(0)) with N = {self.n_train}, "
            f"v = min(5000, int(0.1·N)) = {self.n_val}"
        )


def _tv(
    n_train: int, n_test: int, code: str, base: str, reason: str = _TORCHVISION_SAME_CLASS, note: str = ""
) -> ExpertsData:
    return ExpertsData(code, base, n_train, n_test, {"torchvision": reason}, note=note)


EXPERTS_DATA: Mapping[str, ExpertsData] = {
    "SUN397": ExpertsData(
        "src/datasets/sun397.py",
        "ImageFolder(sun397/train): SUN397 Training_01 (JH-GEECS/CART src/dataset/split_generator.py)",
        19850,
        19850,
        {"folder": _FOLDER_LAYOUT.format(recipe="Training_01.txt -> sun397/train, Testing_01.txt -> sun397/val")},
    ),
    "Cars": _tv(
        8144,
        8041,
        "src/datasets/cars.py",
        "Stanford Cars train in the order of devkit/cars_train_annos.mat",
        "the experts' PytorchStanfordCars is a copy of torchvision's StanfordCars: same files, same order",
    ),
    "RESISC45": ExpertsData(
        "src/datasets/resisc45.py",
        "ImageFolder(resisc45/NWPU-RESISC45) filtered by resisc45-train.txt (the official val list is unused)",
        18900,
        6300,
        {"folder": _FOLDER_LAYOUT.format(recipe="all images in NWPU-RESISC45/<class>/, resisc45-{train,test}.txt")},
    ),
    "EuroSAT": ExpertsData(
        "src/datasets/eurosat.py",
        "ImageFolder(EuroSAT_splits/train), a random 21,600 / 2,700 / 2,700 split made once by hand",
        21600,
        2700,
        own_val=2700,
        closest="folder",
        note=(
            "the draw behind EuroSAT_splits is not public for the TALL-masks experts (CART's split_generator.py "
            "shuffles without a seed), so only the experts' own folders make val exact"
        ),
    ),
    "SVHN": _tv(73257, 26032, "src/datasets/svhn.py", "torchvision SVHN(split='train')"),
    "GTSRB": _tv(
        26640,
        12630,
        "src/datasets/gtsrb.py",
        "GTSRB/Training .ppm files, class folders and files sorted",
        "the experts' PyTorchGTSRB is a copy of torchvision's GTSRB: make_dataset over the same sorted folders",
    ),
    "MNIST": _tv(60000, 10000, "src/datasets/mnist.py", "torchvision MNIST(train=True)"),
    "DTD": ExpertsData(
        "src/datasets/dtd.py",
        "ImageFolder(dtd/train): DTD train1 + val1; the test set is dtd/val = test1",
        3760,
        1880,
        {"folder": _FOLDER_LAYOUT.format(recipe="dtd-r1.0.1 train1 + val1 -> dtd/train, test1 -> dtd/val")},
        known_for=frozenset({"tall_masks"}),
        note=(
            "the TALL-masks DTD expert was re-released in December 2024 on these folders; the earlier one trained "
            "on all 5,640 images, test included (nik-dim/tall_masks issue #1), and the folders behind the "
            "task_vectors DTD expert (CART's, per its README) are not recorded"
        ),
    ),
    "CIFAR100": _tv(50000, 10000, "src/datasets/cifar100.py", "torchvision CIFAR100(train=True)"),
    "STL10": _tv(5000, 8000, "src/datasets/stl10.py", "torchvision STL10(split='train')"),
    "Flowers102": _tv(
        1020, 6149, "src/datasets/flowers102.py", "torchvision Flowers102(split='train'); the official val is unused"
    ),
    "OxfordIIITPet": _tv(3680, 3669, "src/datasets/oxfordpets.py", "torchvision OxfordIIITPet(split='trainval')"),
    "PCAM": _tv(262144, 32768, "src/datasets/pcam.py", "torchvision PCAM(split='train'); the official val is unused"),
    "FER2013": ExpertsData(
        "src/datasets/fer2013.py",
        "Hugging Face Jeneral/fer-2013 split 'train' in its row order",
        28709,
        None,
        closest="huggingface",
        served_n_test=7178,
        note="none of our sources is shown to list Jeneral/fer-2013's rows in its order",
    ),
    "EMNIST": _tv(
        240000,
        40000,
        "src/datasets/emnist.py",
        "torchvision EMNIST(split='digits', train=True), not transposed: the raw files' orientation",
        note="the hub repository's row order and glyph orientation are not established; torchvision's are the experts'",
    ),
    "CIFAR10": _tv(50000, 10000, "src/datasets/cifar10.py", "torchvision CIFAR10(train=True)"),
    "Food101": _tv(75750, 25250, "src/datasets/food101.py", "torchvision Food101(split='train')"),
    "FashionMNIST": _tv(60000, 10000, "src/datasets/fashionmnist.py", "torchvision FashionMNIST(train=True)"),
    "RenderedSST2": _tv(6920, 1821, "src/datasets/sst2.py", "torchvision RenderedSST2(split='train')"),
    "KMNIST": _tv(60000, 10000, "src/datasets/kmnist.py", "torchvision KMNIST(train=True)"),
}


def experts_data(task: str) -> ExpertsData:
    if task not in EXPERTS_DATA:
        raise InputError(f"task {task!r} has no recorded experts' data protocol; known: {sorted(EXPERTS_DATA)}")
    return EXPERTS_DATA[task]


def prepared_split_sizes(task: str) -> dict[str, int]:
    """Images per split as `data.source: experts` prepares the task (train as when a job fine-tunes)."""
    facts = experts_data(task)
    train = facts.n_train if facts.own_val is not None else facts.n_train - facts.n_val
    test = facts.n_test if facts.n_test is not None else facts.served_n_test
    if test is None:
        raise InputError(f"task {task!r}: neither the experts' nor our source's test size is recorded")
    return {"train": train, "val": facts.n_val, "test": test}


def experts_data_source(task: str) -> str:
    """The source whose order is the experts' base order (`data.source: experts`), else the closest to their layout."""
    facts = experts_data(task)
    return next(iter(facts.exact)) if facts.exact else str(facts.closest)


def resolve_data_source(task: str, source: str) -> str:
    """`data.source` for one task: "experts" resolves per task, anything else is taken as it is."""
    return experts_data_source(task) if source == "experts" else source


@dataclass(frozen=True)
class ValProvenance:
    exact: bool
    rule: str
    reason: str


def val_provenance(task: str, data_source: str, experts: str) -> ValProvenance:
    """Whether our val split of `task`, prepared from `data_source`, holds exactly the images `experts` never saw."""
    if experts == "finetune":
        return ValProvenance(True, "ours: val is held out of the split our own fine-tuning reads", "by construction")
    facts = experts_data(task)
    if experts not in EXPERTS_CODE_SOURCES:
        return ValProvenance(False, facts.val_rule, f"how the {experts} experts held out val is not recorded")
    if experts not in facts.known_for:
        return ValProvenance(False, facts.val_rule, facts.note)
    if data_source in facts.exact:
        return ValProvenance(True, facts.val_rule, facts.exact[data_source])
    why = facts.note or f"the {data_source} source is not shown to list the base training set in the experts' order"
    return ValProvenance(False, facts.val_rule, why)


def head_texts_for(experts: str) -> str:
    """Which class texts make the heads the experts were fine-tuned against ("experts" for their code's sources)."""
    return "experts" if experts in EXPERTS_CODE_SOURCES else "readable"


def class_texts(task: str, texts: str, *, emnist_split: str = "digits") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(class texts, templates) of `task`: our readable names, or the strings the experts' code formatted.

    The experts' templates are f-strings applied to each class name, so a name that is a list (FER2013's synonyms)
    enters every prompt as its Python repr; CIFAR100 and Food101 keep torchvision's underscores; Flowers102's
    hard-coded list differs from ours in three names. Templates are the same strings in both.
    """
    if texts not in HEAD_TEXTS:
        raise InputError(f"class texts {texts!r}: expected one of {HEAD_TEXTS}")
    spec = get_task(task, emnist_split=emnist_split)
    names = spec.experts_classnames if texts == "experts" and spec.experts_classnames else spec.classnames
    return names, spec.templates


def prepared_experts_class_texts(
    data_dir: str | os.PathLike[str], num_classes: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The experts' code's class texts of the real task prepared in `data_dir` (its classnames.json names it)."""
    task = read_json(classes_path(data_dir)).get("task")
    if task not in TASKS:
        raise InputError(f"{classes_path(data_dir)}: task {task!r} has no experts' class texts (real tasks only)")
    names, templates = class_texts(task, "experts")
    if len(names) != num_classes:
        raise InputError(f"{classes_path(data_dir)}: {num_classes} classes, but the experts' {task} has {len(names)}")
    return names, templates
