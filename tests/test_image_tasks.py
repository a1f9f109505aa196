"""The real-dataset path of the 20 image tasks, offline: hub-cache fixtures in the layouts the real repos serve.

Parquet fixtures are written by the `datasets` library itself (Image feature as struct<bytes, path>, ClassLabel names
in the schema's `huggingface` metadata), placed in a huggingface_hub cache with `write_hub_repo`, and resolved with
HF_HUB_OFFLINE=1 and every socket connection refused. torchvision fixtures are raw idx files where torchvision's
`download=True` finds them and skips the download.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hub_cache import write_hub_repo
from PIL import Image

from mergeflow.data import load_classes, load_split
from mergeflow.image_tasks import (
    EMNIST_LETTERS,
    TASK_GROUPS,
    TASKS,
    build_label_map,
    get_task,
    normalise_name,
    prepare_image_task,
    resize_center_crop,
    task_source,
)
from mergeflow.image_tasks import hub_datasets as hub_module
from mergeflow.image_tasks.val_split import experts_train_val_indices
from mergeflow.io import InputError

SIZE = 8
EXPECTED_CLASSES = {
    "SUN397": 397, "Cars": 196, "RESISC45": 45, "EuroSAT": 10, "SVHN": 10, "GTSRB": 43, "MNIST": 10, "DTD": 47,
    "CIFAR100": 100, "STL10": 10, "Flowers102": 102, "OxfordIIITPet": 37, "PCAM": 2, "FER2013": 7,
    "EMNIST": 10, "CIFAR10": 10, "Food101": 101, "FashionMNIST": 10, "RenderedSST2": 2, "KMNIST": 10,
}  # fmt: skip
# Varied shapes: landscape, portrait, already square, exactly the target size, odd crop offsets (6.5 rounds to 6).
SHAPES = [(20, 37), (41, 15), (16, 16), (8, 8), (9, 30), (30, 9), (12, 13), (50, 21), (8, 11), (17, 8), (23, 23)]


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """No socket may connect: resolution must come from the cache fixtures alone (offline: tests/conftest.py)."""
    import huggingface_hub.constants

    assert huggingface_hub.constants.is_offline_mode()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _rgb(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _images(n: int, seed: int) -> list[bytes]:
    """PNG and JPEG (RGB, grayscale, palette) images of varied shapes."""
    out = []
    for i in range(n):
        array = _rgb(SHAPES[(i + seed) % len(SHAPES)], seed * 100 + i)
        if i % 4 == 1:
            out.append(_encode(array, "JPEG"))
        elif i % 4 == 2:
            out.append(_encode(array[..., 0], "PNG"))  # mode L
        elif i % 4 == 3:
            buffer = io.BytesIO()
            Image.fromarray(array).convert("P").save(buffer, format="PNG")
            out.append(buffer.getvalue())
        else:
            out.append(_encode(array, "PNG"))
    return out


def _reference(data: bytes, size: int = SIZE) -> np.ndarray:
    """torchvision's Resize(size, BICUBIC) + CenterCrop(size) on the decoded image converted to RGB."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

    transform = Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size)])
    return np.asarray(transform(Image.open(io.BytesIO(data)).convert("RGB")))


def _parquet(
    path: Path,
    images: Sequence[bytes],
    labels: Sequence[object],
    *,
    names: Sequence[str] | None = None,
    image_column: str = "image",
    label_column: str = "label",
    label_dtype: str = "int64",
    extra: dict[str, tuple[object, list[object]]] | None = None,
) -> Path:
    """A Parquet file exactly as `datasets` writes it (what push_to_hub and the hub's converter upload)."""
    import datasets

    label_feature = datasets.ClassLabel(names=list(names)) if names is not None else datasets.Value(label_dtype)
    features = {image_column: datasets.Image(), label_column: label_feature}
    columns = {image_column: [{"bytes": b, "path": None} for b in images], label_column: list(labels)}
    for column, (feature, values) in (extra or {}).items():
        features[column], columns[column] = feature, values
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).to_parquet(str(path))
    return path


def _card(config: str, splits: dict[str, str], features: str = "") -> bytes:
    """README.md front matter as the hub's Parquet conversion writes it."""
    files = "".join(f"  - split: {split}\n    path: {pattern}\n" for split, pattern in splits.items())
    info = f"dataset_info:\n  config_name: {config}\n  features:\n{features}" if features else ""
    return f"---\n{info}configs:\n- config_name: {config}\n  data_files:\n{files}---\n# Dataset card\n".encode()


def _class_label_yaml(column: str, names: Sequence[str]) -> str:
    lines = "".join(f"          '{i}': {name}\n" for i, name in enumerate(names))
    return f"  - name: {column}\n    dtype:\n      class_label:\n        names:\n{lines}"


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


PREPARED = ["classnames.json"] + [f"{s}_{k}.npy" for s in ("test", "train", "val") for k in ("images", "labels")]


# --------------------------------------------------------------------------------------------------- registry


def test_registry_lists_the_twenty_tasks_in_canonical_order() -> None:
    assert list(TASKS) == list(TASK_GROUPS[20])
    assert TASK_GROUPS[8] == ("SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD")
    assert TASK_GROUPS[14][8:] == ("CIFAR100", "STL10", "Flowers102", "OxfordIIITPet", "PCAM", "FER2013")
    assert TASK_GROUPS[20][14:] == ("EMNIST", "CIFAR10", "Food101", "FashionMNIST", "RenderedSST2", "KMNIST")
    assert {name: len(task.classnames) for name, task in TASKS.items()} == EXPECTED_CLASSES


@pytest.mark.parametrize("task", [*TASKS.values(), EMNIST_LETTERS], ids=[*TASKS, "EMNIST-letters"])
def test_every_task_fills_each_template_with_distinct_names(task) -> None:
    assert task.templates and all(t.count("{}") == 1 for t in task.templates)
    for template in task.templates:
        prompts = [template.format(name) for name in task.classnames]
        assert len(set(prompts)) == len(task.classnames)
    assert len({normalise_name(n) for n in task.classnames}) == len(task.classnames)
    assert not any("_" in name for name in task.classnames), "class names must be readable text"
    assert set(task.hub.splits) == {"train", "test"}
    assert set(task.hub.data_files) == set(task.hub.splits.values())


def test_known_source_facts() -> None:
    assert task_source("Food101").splits == {"train": "train", "test": "validation"}
    svhn = task_source("SVHN")
    assert (svhn.repo_id, svhn.config) == ("ufldl-stanford/svhn", "cropped_digits")
    cifar100 = task_source("CIFAR100")
    assert (cifar100.repo_id, cifar100.image_column, cifar100.label_column) == ("uoft-cs/cifar100", "img", "fine_label")
    assert task_source("MNIST").repo_id == "ylecun/mnist"
    assert get_task("EMNIST").classnames == tuple("0123456789")
    assert get_task("EMNIST", emnist_split="letters").classnames == tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    assert get_task("FER2013").classnames == ("angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral")
    assert task_source("MNIST", "torchvision").dataset == "MNIST"
    assert task_source("Cars", "torchvision").download is False  # torchvision's Stanford Cars download is dead
    with pytest.raises(InputError, match="no torchvision source"):
        task_source("DTD", "torchvision")
    assert task_source("DTD", "folder").splits == {"train": "dtd/train", "test": "dtd/val"}
    with pytest.raises(InputError, match="emnist_split='byclass'"):
        get_task("EMNIST", emnist_split="byclass")
    with pytest.raises(InputError, match="unknown image task 'ImageNet'"):
        get_task("ImageNet")


# ------------------------------------------------------------------------------------------------ label maps


def test_label_map_remaps_by_normalised_name_and_alias() -> None:
    ours = get_task("FER2013").classnames
    wds_order = ["angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"]
    mapping = build_label_map(wds_order, ours, where="fer")
    assert mapping.lookup.tolist() == [0, 1, 2, 3, 6, 4, 5]
    original = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
    aliased = build_label_map(original, ours, where="fer", aliases=get_task("FER2013").aliases)
    assert aliased.lookup.tolist() == list(range(7))
    food_names = get_task("Food101").classnames
    food = build_label_map([n.replace(" ", "_") for n in food_names], food_names, where="food")
    assert food.lookup.tolist() == list(range(101))
    fashion_names = get_task("FashionMNIST").classnames
    fashion = build_label_map(["T - shirt / top", *fashion_names[1:]], fashion_names, where="fashion")
    assert fashion.lookup.tolist() == list(range(10))
    assert mapping.apply(np.array([4, 0]), 0, str).tolist() == [6, 0]


def test_label_map_errors_name_the_source_and_the_problem() -> None:
    ours = ("cat", "dog")
    with pytest.raises(InputError, match=r"repo/x split 'train' column 'label'.*\['wolf'\]"):
        build_label_map(["cat", "wolf"], ours, where="repo/x split 'train' column 'label'")
    with pytest.raises(InputError, match="several source classes"):
        build_label_map(["cat", "Cat", "dog"], ours, where="w")
    with pytest.raises(InputError, match=r"no class for our classes \['dog'\]"):
        build_label_map(["cat"], ours, where="w")
    identity = build_label_map(None, ours, where="w")
    with pytest.raises(InputError, match="w, row 7: label 2 is outside"):
        identity.apply(np.array([1, 2]), 6, lambda row: f"row {row}")
    # Bare index names ("0", "1") carry no information: taken as our indices. Lexicographic ones ("10" at 2) do not.
    assert build_label_map(["0", "1"], ours, where="w").lookup is None
    with pytest.raises(InputError, match="match none"):
        build_label_map([str(i) for i in (0, 1, 10)], ("a", "b", "c"), where="w")
    letters = build_label_map(["N/A", *"abc"], ("A", "B", "C"), where="w", unused=frozenset({"N/A"}))
    assert letters.apply(np.array([1, 3]), 0, str).tolist() == [0, 2]
    with pytest.raises(InputError, match="source class 'N/A' has no counterpart"):
        letters.apply(np.array([0]), 0, lambda row: f"row {row}")


# ---------------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [8, 7])
def test_resize_center_crop_equals_torchvision(shape: tuple[int, int], size: int) -> None:
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

    array = _rgb(shape, 3)
    ours = resize_center_crop(Image.fromarray(array), size)
    transform = Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size)])
    assert ours.dtype == np.uint8 and ours.shape == (size, size, 3)
    np.testing.assert_array_equal(ours, np.asarray(transform(Image.fromarray(array))))
    gray = Image.fromarray(array[..., 1])  # open_clip resizes first, converts to RGB after: same pixels for mode L
    np.testing.assert_array_equal(resize_center_crop(gray, size), np.asarray(transform(gray).convert("RGB")))


# ------------------------------------------------------------------------------------------ hub, end to end


def _food101_repo(cache: Path, train: list[bytes], train_labels: list[int], test: list[bytes]) -> None:
    """ethz/food101 as served: data/{train,validation}-NNNNN-of-NNNNN.parquet, ClassLabel names with underscores."""
    names = [name.replace(" ", "_") for name in get_task("Food101").classnames]
    half = len(train) // 2
    files = {
        "README.md": _card(
            "default", {"train": "data/train-*", "validation": "data/validation-*"}, _class_label_yaml("label", names)
        ),
        "data/train-00000-of-00002.parquet": _parquet(cache / "a", train[:half], train_labels[:half], names=names),
        "data/train-00001-of-00002.parquet": _parquet(cache / "b", train[half:], train_labels[half:], names=names),
        "data/validation-00000-of-00001.parquet": _parquet(cache / "c", test, [100, 0, 57], names=names),
    }
    write_hub_repo(cache / "hub", "ethz/food101", files, repo_type="dataset")


def test_food101_end_to_end_from_the_hub_cache(tmp_path: Path) -> None:
    train, test = _images(12, 0), _images(3, 5)
    labels = [(7 * i) % 101 for i in range(12)]
    _food101_repo(tmp_path, train, labels, test)
    out = tmp_path / "Food101"
    counts = prepare_image_task("Food101", out, image_size=SIZE, cache_dir=tmp_path / "hub", progress=False)
    train_idx, val_idx = experts_train_val_indices(12, seed=0)
    assert counts == {"train": len(train_idx), "val": len(val_idx), "test": 3} == {"train": 11, "val": 1, "test": 3}
    assert _listing(out) == PREPARED
    expected = np.stack([_reference(data) for data in train])
    for split, index in (("train", train_idx), ("val", val_idx)):
        images, stored = load_split(out, split)
        np.testing.assert_array_equal(images, expected[index])
        assert stored.dtype == np.int64 and stored.tolist() == [labels[i] for i in index]
    images, stored = load_split(out, "test")
    np.testing.assert_array_equal(images, np.stack([_reference(data) for data in test]))
    assert stored.tolist() == [100, 0, 57]
    classes = load_classes(out)
    assert classes.classnames == get_task("Food101").classnames and classes.templates == (
        "a photo of {}, a type of food.",
    )
    record = json.loads((out / "classnames.json").read_text())
    assert record["task"] == "Food101"
    assert record["data"]["source"] == "huggingface" and record["data"]["revision"] == "main"
    assert record["data"]["commit"] == "0123456789abcdef0123456789abcdef01234567"
    assert record["data"]["counts"] == counts and record["data"]["val"] == "random_split, seed 0"


def test_parallel_decoding_writes_the_same_arrays(tmp_path: Path) -> None:
    train = _images(12, 0)
    _food101_repo(tmp_path, train, list(range(12)), _images(3, 1))
    kwargs = {"image_size": SIZE, "cache_dir": tmp_path / "hub", "progress": False, "batch_rows": 5}
    prepare_image_task("Food101", tmp_path / "serial", **kwargs)
    prepare_image_task("Food101", tmp_path / "parallel", workers=2, **kwargs)
    for split in ("train", "val", "test"):
        for kind in ("images", "labels"):
            a, b = (np.load(tmp_path / d / f"{split}_{kind}.npy") for d in ("serial", "parallel"))
            np.testing.assert_array_equal(a, b)


def test_cifar100_uses_the_card_config_and_fine_label_column(tmp_path: Path) -> None:
    """uoft-cs/cifar100: config folder `cifar100/`, columns img / fine_label / coarse_label, names with underscores."""
    import datasets

    fine = [name.replace(" ", "_") for name in get_task("CIFAR100").classnames]
    coarse = datasets.ClassLabel(names=[f"super_{i}" for i in range(20)])
    features = _class_label_yaml("fine_label", fine) + _class_label_yaml("coarse_label", coarse.names)
    train, test = _images(10, 2), _images(2, 3)

    def shard(name: str, images: list[bytes], labels: list[int]) -> Path:
        extra = {"coarse_label": (coarse, [19 - label % 20 for label in labels])}
        return _parquet(
            tmp_path / name, images, labels, names=fine, image_column="img", label_column="fine_label", extra=extra
        )

    files = {
        "README.md": _card("cifar100", {"train": "cifar100/train-*", "test": "cifar100/test-*"}, features),
        "cifar100/train-00000-of-00001.parquet": shard("tr", train, list(range(90, 100))),
        "cifar100/test-00000-of-00001.parquet": shard("te", test, [4, 30]),
    }
    write_hub_repo(tmp_path / "hub", "uoft-cs/cifar100", files, repo_type="dataset")
    counts = prepare_image_task(
        "CIFAR100", tmp_path / "out", image_size=SIZE, cache_dir=tmp_path / "hub", progress=False
    )
    assert counts == {"train": 9, "val": 1, "test": 2}
    assert load_split(tmp_path / "out", "test")[1].tolist() == [4, 30]
    train_idx, _ = experts_train_val_indices(10)
    assert load_split(tmp_path / "out", "train")[1].tolist() == [90 + i for i in train_idx]


def _emnist_digits_repo(cache: Path, train_labels: list[int]) -> None:
    """ernestchu/emnist-digits: data/{train,test}-*.parquet, label int64 (no ClassLabel). No card, so the registry's
    glob is what selects the files."""
    files = {
        "data/train-00000-of-00001.parquet": _parquet(cache / "a", _images(len(train_labels), 1), train_labels),
        "data/test-00000-of-00001.parquet": _parquet(cache / "b", _images(2, 2), [9, 0]),
    }
    write_hub_repo(cache / "hub", "ernestchu/emnist-digits", files, repo_type="dataset")


def test_emnist_defaults_to_digits_and_letters_is_an_option(tmp_path: Path) -> None:
    _emnist_digits_repo(tmp_path, [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])
    letters = [chr(ord("A") + i) for i in range(26)]
    files = {
        "README.md": _card("emnist-letters", {"train": "emnist-letters/train-*", "test": "emnist-letters/test-*"}),
        "emnist-letters/train-00000-of-00001.parquet": _parquet(
            tmp_path / "l1", _images(10, 3), list(range(10)), names=letters
        ),
        "emnist-letters/test-00000-of-00001.parquet": _parquet(tmp_path / "l2", _images(2, 4), [25, 0], names=letters),
    }
    write_hub_repo(tmp_path / "hub", "tanganke/emnist_letters", files, repo_type="dataset")
    common = {"image_size": SIZE, "cache_dir": tmp_path / "hub", "progress": False}
    assert prepare_image_task("EMNIST", tmp_path / "digits", **common) == {"train": 10, "val": 1, "test": 2}
    assert len(load_classes(tmp_path / "digits").classnames) == 10
    train_idx, val_idx = experts_train_val_indices(11)
    source = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])
    assert load_split(tmp_path / "digits", "val")[1].tolist() == source[val_idx].tolist()
    assert load_split(tmp_path / "digits", "train")[1].tolist() == source[train_idx].tolist()
    prepare_image_task("EMNIST", tmp_path / "letters", emnist_split="letters", **common)
    assert load_classes(tmp_path / "letters").classnames == tuple(letters)
    assert load_split(tmp_path / "letters", "test")[1].tolist() == [25, 0]


def test_unnamed_labels_out_of_range_fail_with_the_row(tmp_path: Path) -> None:
    _emnist_digits_repo(tmp_path, [0, 1, 2, 3, 10, 5])
    with pytest.raises(InputError, match=r"ernestchu/emnist-digits@main split 'train'.*row 4 .*label 10 is outside"):
        prepare_image_task("EMNIST", tmp_path / "out", image_size=SIZE, cache_dir=tmp_path / "hub", progress=False)


def test_pcam_bool_labels(tmp_path: Path) -> None:
    """1aurent/PatchCamelyon: label is a bool column (True: metastatic tissue)."""
    files = {
        "data/train-00000-of-00001.parquet": _parquet(
            tmp_path / "a", _images(10, 1), [True, False] * 5, label_dtype="bool"
        ),
        "data/test-00000-of-00001.parquet": _parquet(tmp_path / "b", _images(2, 2), [False, True], label_dtype="bool"),
    }
    write_hub_repo(tmp_path / "hub", "1aurent/PatchCamelyon", files, repo_type="dataset")
    prepare_image_task("PCAM", tmp_path / "out", image_size=SIZE, cache_dir=tmp_path / "hub", progress=False)
    assert load_split(tmp_path / "out", "test")[1].tolist() == [0, 1]


def _tar(path: Path, samples: list[tuple[str, bytes, int]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, image, label in samples:
            for name, data in ((f"{key}.cls", str(label).encode()), (f"{key}.jpg", image)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_fer2013_webdataset_labels_follow_the_repo_classnames(tmp_path: Path) -> None:
    """clip-benchmark/wds_fer2013: <split>/<n>.tar shards of <key>.jpg + <key>.cls, classnames.txt alphabetical."""
    jpegs = [_encode(_rgb((48, 48), i)[..., 0], "JPEG") for i in range(10)]
    train = [(f"s{i:07d}", jpegs[i], i % 7) for i in range(8)]
    files = {
        "classnames.txt": b"angry\ndisgusted\nfearful\nhappy\nneutral\nsad\nsurprised\n",
        "zeroshot_classification_templates.txt": b"a photo of a {c} looking face.\n",
        "train/0.tar": _tar(tmp_path / "t0", train[:5]),
        "train/1.tar": _tar(tmp_path / "t1", train[5:]),
        "train/nshards.txt": b"2",
        "test/0.tar": _tar(tmp_path / "e0", [("s0000000", jpegs[8], 4), ("s0000001", jpegs[9], 6)]),
        "test/nshards.txt": b"1",
    }
    write_hub_repo(tmp_path / "hub", "clip-benchmark/wds_fer2013", files, repo_type="dataset")
    counts = prepare_image_task(
        "FER2013", tmp_path / "out", image_size=SIZE, cache_dir=tmp_path / "hub", progress=False
    )
    assert counts == {"train": 8, "val": 0, "test": 2}
    ours = {0: 0, 1: 1, 2: 2, 3: 3, 4: 6, 5: 4, 6: 5}  # neutral 4 -> 6, sad 5 -> 4, surprised 6 -> 5
    assert load_split(tmp_path / "out", "train")[1].tolist() == [ours[label] for _, _, label in train]
    images, labels = load_split(tmp_path / "out", "test")
    assert labels.tolist() == [6, 5]
    np.testing.assert_array_equal(images[1], _reference(jpegs[9]))


def test_shards_sort_by_number(tmp_path: Path) -> None:
    for name in ("train/10.tar", "train/2.tar", "train/1.tar", "train/notes.txt", "test/0.tar"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = hub_module.match_files(tmp_path, ["train/*.tar"], "webdataset")
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["train/1.tar", "train/2.tar", "train/10.tar"]


# ---------------------------------------------------------------------------------------------------- failures


def test_corrupt_image_fails_naming_the_row_and_leaves_nothing_finished(tmp_path: Path) -> None:
    images = _images(12, 0)
    images[7] = images[7][: len(images[7]) // 2]  # truncated image bytes
    _food101_repo(tmp_path, images, list(range(12)), _images(3, 5))
    out = tmp_path / "out"
    out.mkdir()
    (out / "classnames.json").write_text("{}")  # a stale completion marker from an earlier run
    with pytest.raises(InputError, match=r"ethz/food101@main split 'train', row 7 .*train-00001-of-00002.*decode"):
        prepare_image_task("Food101", out, image_size=SIZE, cache_dir=tmp_path / "hub", progress=False)
    assert _listing(out) == []


def test_unknown_class_names_fail_before_writing(tmp_path: Path) -> None:
    names = ["aeroplane", *get_task("STL10").classnames[1:]]
    files = {
        "data/train-00000-of-00001.parquet": _parquet(tmp_path / "a", _images(2, 0), [0, 1], names=names),
        "data/test-00000-of-00001.parquet": _parquet(tmp_path / "b", _images(2, 1), [0, 1], names=names),
    }
    write_hub_repo(tmp_path / "hub", "tanganke/stl10", files, repo_type="dataset")
    with pytest.raises(InputError, match=r"tanganke/stl10@main split 'train' column 'label'.*\['aeroplane'\]"):
        prepare_image_task("STL10", tmp_path / "out", image_size=SIZE, cache_dir=tmp_path / "hub", progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_column_and_missing_repo_are_named(tmp_path: Path) -> None:
    files = {
        f"data/{split}-00000-of-00001.parquet": _parquet(tmp_path / split, _images(2, 0), [0, 1], label_column="y")
        for split in ("train", "test")
    }
    write_hub_repo(tmp_path / "hub", "tanganke/dtd", files, repo_type="dataset")
    with pytest.raises(InputError, match=r"tanganke/dtd@main split 'train'.*has no column 'label'.*\['image', 'y'\]"):
        prepare_image_task("DTD", tmp_path / "out", image_size=SIZE, cache_dir=tmp_path / "hub", progress=False)
    with pytest.raises(InputError, match=r"tanganke/gtsrb@main: could not get files"):
        prepare_image_task("GTSRB", tmp_path / "out", image_size=SIZE, cache_dir=tmp_path / "hub", progress=False)


SVHN_CARD = """---
dataset_info:
- config_name: cropped_digits
  features:
  - name: image
    dtype: image
  - name: label
    dtype:
      class_label:
        names:
          '0': '0'
          '1': '1'
- config_name: full_numbers
  features:
  - name: image
    dtype: image
  - name: digits
    sequence:
    - name: label
      dtype: int64
configs:
- config_name: cropped_digits
  data_files:
  - split: train
    path: cropped_digits/train-*
  - split: test
    path: cropped_digits/test-*
  - split: extra
    path: cropped_digits/extra-*
- config_name: full_numbers
  data_files:
  - split: train
    path: full_numbers/train-*
---

# Dataset Card for Street View House Numbers
"""


def test_card_parsing_picks_the_config_split_and_class_names(tmp_path: Path) -> None:
    """A multi-config card laid out like ufldl-stanford/svhn's (configs and dataset_info are lists)."""
    (tmp_path / "README.md").write_text(SVHN_CARD)
    card = hub_module.read_card(tmp_path)
    assert hub_module.card_data_files(card, "cropped_digits", "test") == ["cropped_digits/test-*"]
    assert hub_module.card_data_files(card, "full_numbers", "train") == ["full_numbers/train-*"]
    assert hub_module.card_data_files(card, "cropped_digits", "validation") is None
    assert hub_module.card_label_names(card, "cropped_digits", "label") == ("0", "1")
    assert hub_module.card_label_names(card, "full_numbers", "label") is None
    assert hub_module.read_card(tmp_path / "missing") == {}


# ------------------------------------------------------------------------------------------------ torchvision


def _idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed idx file as torchvision's MNIST family reads it (big-endian header, ubyte data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("task", ["MNIST", "FashionMNIST", "KMNIST"])
def test_torchvision_mnist_family_from_raw_files(tmp_path: Path, task: str) -> None:
    rng = np.random.default_rng(0)
    train_images, test_images = rng.integers(0, 256, (11, 28, 28)), rng.integers(0, 256, (2, 28, 28))
    train_labels, test_labels = np.arange(11) % 10, np.array([7, 2])
    raw = tmp_path / "root" / task / "raw"
    for prefix, images, labels in (("train", train_images, train_labels), ("t10k", test_images, test_labels)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    out = tmp_path / "out"
    counts = prepare_image_task(
        task, out, image_size=SIZE, source="torchvision", root=tmp_path / "root", progress=False
    )
    assert counts == {"train": 10, "val": 1, "test": 2}
    train_idx, val_idx = experts_train_val_indices(11)
    images, labels = load_split(out, "val")
    assert labels.tolist() == train_labels[val_idx].tolist()
    gray = Image.fromarray(train_images[val_idx[0]].astype(np.uint8), mode="L")
    np.testing.assert_array_equal(images[0], resize_center_crop(gray, SIZE))
    assert load_split(out, "test")[1].tolist() == [7, 2]
    assert load_classes(out).classnames == get_task(task).classnames


@pytest.mark.parametrize(
    ("split", "labels", "expected"), [("digits", [0, 9, 4], [0, 9, 4]), ("letters", [1, 26, 5], [0, 25, 4])]
)
def test_torchvision_emnist_splits(tmp_path: Path, split: str, labels: list[int], expected: list[int]) -> None:
    raw = tmp_path / "EMNIST" / "raw"
    rng = np.random.default_rng(1)
    for part in ("train", "test"):
        _idx(raw / f"emnist-{split}-{part}-images-idx3-ubyte", rng.integers(0, 256, (3, 28, 28)))
        _idx(raw / f"emnist-{split}-{part}-labels-idx1-ubyte", np.array(labels))
    prepare_image_task(
        "EMNIST",
        tmp_path / "out",
        image_size=SIZE,
        source="torchvision",
        root=tmp_path,
        emnist_split=split,
        progress=False,
    )
    assert load_split(tmp_path / "out", "test")[1].tolist() == expected
    if split == "letters":
        _idx(raw / "emnist-letters-test-labels-idx1-ubyte", np.array([0, 1, 2]))  # class 0 is torchvision's "N/A"
        with pytest.raises(InputError, match="source class 'N/A' has no counterpart"):
            prepare_image_task(
                "EMNIST",
                tmp_path / "bad",
                image_size=SIZE,
                source="torchvision",
                root=tmp_path,
                emnist_split=split,
                progress=False,
            )
        assert _listing(tmp_path / "bad") == []
