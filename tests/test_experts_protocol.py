"""The experts' protocol: their validation split, their base orders, their head texts, EMNIST's orientation.

Fixtures are written in each real source's served layout (torchvision's raw idx files, the experts' image folders),
with images that encode their source index, and go through the real `mergeflow prepare-data` verb.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import random_split

from mergeflow.commands.main import main
from mergeflow.data import load_classes, load_data_record, load_split
from mergeflow.image_tasks.protocol import tasks_protocol
from mergeflow.image_tasks.provenance import (
    EXPERTS_DATA,
    class_texts,
    experts_data_source,
    head_texts_for,
    val_provenance,
)
from mergeflow.image_tasks.registry import TASKS, TASKS_20
from mergeflow.image_tasks.val_split import experts_train_val_indices, val_size

# ------------------------------------------------------------------------------------------------ val arithmetic


@pytest.mark.parametrize("n", [9, 10, 11, 1020, 3680, 6920, 26640, 60000, 73257])
def test_val_indices_are_torch_random_split(n: int) -> None:
    v = min(5000, int(0.1 * n))
    train, val = random_split(range(n), [n - v, v], generator=torch.Generator().manual_seed(0))
    ours_train, ours_val = experts_train_val_indices(n)
    assert ours_train.tolist() == sorted(train.indices) and ours_val.tolist() == sorted(val.indices)
    assert val_size(n) == v


def test_mnist_first_training_index_is_the_experts_own_check() -> None:
    """tall_masks src/datasets/registry.py L65-66 asserts trainset.indices[0] == 36044 for MNISTVal."""
    order = torch.randperm(60000, generator=torch.Generator().manual_seed(0))
    assert int(order[0]) == 36044
    assert 36044 in set(experts_train_val_indices(60000)[0].tolist())


def _idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed idx file as torchvision's MNIST family reads it (big-endian header, ubyte data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _index_images(n: int, size: int) -> np.ndarray:
    """Grey images whose top half is i // 256 and bottom half i % 256: the stored pixels name the source row."""
    index = np.arange(n)
    images = np.empty((n, size, size), dtype=np.uint8)
    images[:, : size // 2] = (index // 256)[:, None, None]
    images[:, size // 2 :] = (index % 256)[:, None, None]
    return images


def _decoded_index(images: np.ndarray) -> list[int]:
    size = images.shape[1]
    return (images[:, 0, 0, 0].astype(int) * 256 + images[:, size - 1, 0, 0].astype(int)).tolist()


def _prepare(*args: str) -> None:
    assert main(["prepare-data", "--no-progress", *args]) == 0


@pytest.mark.parametrize("n", [11, 1020, 3680])
def test_prepare_data_holds_out_exactly_random_splits_val(tmp_path: Path, n: int) -> None:
    raw = tmp_path / "root" / "MNIST" / "raw"
    _idx(raw / "train-images-idx3-ubyte", _index_images(n, 28))
    _idx(raw / "train-labels-idx1-ubyte", np.arange(n) % 10)
    _idx(raw / "t10k-images-idx3-ubyte", _index_images(3, 28))
    _idx(raw / "t10k-labels-idx1-ubyte", np.array([1, 2, 3]))
    out = tmp_path / "MNIST"
    _prepare("--source", "experts", "--task", "MNIST", "--image-size", "28", "--root", str(tmp_path / "root"),
             "--out", str(out))  # fmt: skip
    v = min(5000, int(0.1 * n))
    train, val = random_split(range(n), [n - v, v], generator=torch.Generator().manual_seed(0))
    assert _decoded_index(load_split(out, "val")[0]) == sorted(val.indices)
    assert _decoded_index(load_split(out, "train")[0]) == sorted(train.indices)
    assert load_split(out, "val")[1].tolist() == [i % 10 for i in sorted(val.indices)]
    record = load_data_record(out)
    assert record["source"] == "torchvision" and record["val"] == "random_split, seed 0"
    assert record["counts"] == {"train": n - v, "val": v, "test": 3}


def test_no_train_writes_val_and_test_only_and_removes_a_stale_train(tmp_path: Path) -> None:
    raw = tmp_path / "root" / "MNIST" / "raw"
    _idx(raw / "train-images-idx3-ubyte", _index_images(40, 28))
    _idx(raw / "train-labels-idx1-ubyte", np.arange(40) % 10)
    _idx(raw / "t10k-images-idx3-ubyte", _index_images(2, 28))
    _idx(raw / "t10k-labels-idx1-ubyte", np.array([1, 2]))
    out = tmp_path / "MNIST"
    common = ["--source", "torchvision", "--task", "MNIST", "--image-size", "28", "--root", str(tmp_path / "root"),
              "--out", str(out)]  # fmt: skip
    _prepare(*common)
    full_val = load_split(out, "val")[0].copy()
    _prepare(*common, "--no-train")
    assert sorted(p.name for p in out.iterdir()) == [
        "classnames.json", "test_images.npy", "test_labels.npy", "val_images.npy", "val_labels.npy"
    ]  # fmt: skip
    np.testing.assert_array_equal(load_split(out, "val")[0], full_val)
    assert load_data_record(out)["counts"] == {"val": 4, "test": 2}


def _refused(caplog: pytest.LogCaptureFixture, *args: str) -> str:
    """`mergeflow` exits 2 on a bad input and logs the message."""
    caplog.clear()
    assert main(["prepare-data", "--no-progress", *args]) == 2
    return caplog.text


def test_tiny_refuses_no_train(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    args = ["--task", "shapes", "--image-size", "16", "--train-size", "20", "--test-size", "10", "--no-train"]
    assert "tiny source always writes train" in _refused(caplog, *args, "--out", str(tmp_path / "t"))


# ------------------------------------------------------------------------------------------ the experts' folders


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[:8], pixels[8:] = value // 256, value % 256
    Image.fromarray(pixels).save(path)


def _image_folder(root: Path, classes: list[str], per_class: int, start: int) -> list[tuple[int, str]]:
    """Files written in shuffled name order; returns (encoded value, class) in ImageFolder's order."""
    rows = []
    for c, folder in enumerate(sorted(classes)):
        names = [f"img_{k:03d}.png" for k in range(per_class)]
        for k in np.random.default_rng(c).permutation(per_class):
            value = start + 100 * c + int(k)
            _png(root / folder / names[k], value)
        rows += [(start + 100 * c + k, folder) for k in range(per_class)]
    return rows


def test_dtd_folders_split_val_from_imagefolder_order(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    classes = list(TASKS["DTD"].classnames)
    rows = _image_folder(tmp_path / "dtd" / "train", classes, 2, 0)
    _image_folder(tmp_path / "dtd" / "val", classes, 1, 20000)
    assert [s[0] for s in ImageFolder(str(tmp_path / "dtd" / "train")).samples][:2] == [
        str(tmp_path / "dtd" / "train" / "banded" / "img_000.png"),
        str(tmp_path / "dtd" / "train" / "banded" / "img_001.png"),
    ]
    out = tmp_path / "DTD"
    _prepare("--source", "experts", "--task", "DTD", "--image-size", "16", "--root", str(tmp_path), "--out", str(out))
    _, val = random_split(range(94), [85, 9], generator=torch.Generator().manual_seed(0))
    val_images, val_labels = load_split(out, "val")
    assert _decoded_index(val_images) == [rows[i][0] for i in sorted(val.indices)]
    names = load_classes(out).classnames
    assert [names[label] for label in val_labels] == [rows[i][1] for i in sorted(val.indices)]
    assert _decoded_index(load_split(out, "test")[0])[:3] == [20000, 20100, 20200]
    assert load_data_record(out)["source"] == "folder"


def test_eurosat_uses_its_own_val_folder_and_trains_on_all_of_train(tmp_path: Path) -> None:
    folders = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
               "Residential", "River", "SeaLake"]  # fmt: skip
    base = tmp_path / "EuroSAT_splits"
    train = _image_folder(base / "train", folders, 2, 0)
    val = _image_folder(base / "val", folders, 1, 3000)
    _image_folder(base / "test", folders, 1, 6000)
    out = tmp_path / "EuroSAT"
    _prepare("--source", "folder", "--task", "EuroSAT", "--image-size", "16", "--root", str(tmp_path), "--out",
             str(out))  # fmt: skip
    assert _decoded_index(load_split(out, "train")[0]) == [value for value, _ in train]
    val_images, val_labels = load_split(out, "val")
    assert _decoded_index(val_images) == [value for value, _ in val]
    names = load_classes(out).classnames
    assert [names[label] for label in val_labels][:3] == ["annual crop land", "forest", "brushland or shrubland"]
    assert load_data_record(out)["val"] == "own val split"


def test_sun397_folder_names_lose_their_letter_prefix(tmp_path: Path) -> None:
    folders = [f"{name[0]}_{name.replace(' ', '_')}" for name in TASKS["SUN397"].classnames]
    assert folders[8] == "a_apartment_building_outdoor"
    _image_folder(tmp_path / "sun397" / "train", folders, 1, 0)
    rows = _image_folder(tmp_path / "sun397" / "val", folders, 1, 10)
    _prepare("--source", "experts", "--task", "SUN397", "--image-size", "16", "--root", str(tmp_path), "--out",
             str(tmp_path / "SUN397"))  # fmt: skip
    names = load_classes(tmp_path / "SUN397").classnames
    images, labels = load_split(tmp_path / "SUN397", "test")
    assert _decoded_index(images) == [value for value, _ in rows]
    assert [names[label] for label in labels] == [folder[2:].replace("_", " ") for _, folder in rows]
    assert load_data_record(tmp_path / "SUN397")["counts"] == {"train": 358, "val": 39, "test": 397}


def test_resisc45_selects_images_by_the_split_lists(tmp_path: Path) -> None:
    folders = [name.replace(" ", "_") for name in TASKS["RESISC45"].classnames]
    rows = _image_folder(tmp_path / "resisc45" / "NWPU-RESISC45", folders, 3, 0)
    (tmp_path / "resisc45" / "resisc45-train.txt").write_text("img_000.png\nimg_001.png\n")
    (tmp_path / "resisc45" / "resisc45-test.txt").write_text("img_002.png\n")
    _prepare("--source", "experts", "--task", "RESISC45", "--image-size", "16", "--root", str(tmp_path), "--out",
             str(tmp_path / "RESISC45"))  # fmt: skip
    images, labels = load_split(tmp_path / "RESISC45", "test")
    assert _decoded_index(images) == [value for value, _ in rows if value % 100 == 2]
    names = load_classes(tmp_path / "RESISC45").classnames
    assert [names[label] for label in labels][:3] == ["airplane", "airport", "baseball diamond"]
    assert load_data_record(tmp_path / "RESISC45")["counts"] == {"train": 81, "val": 9, "test": 45}


def test_missing_folder_names_data_root(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = str(tmp_path)
    text = _refused(caplog, "--source", "folder", "--task", "DTD", "--image-size", "16", "--root", root, "--out",
                    str(tmp_path / "DTD"))  # fmt: skip
    assert f"{tmp_path}/dtd/train: not a directory (data.root" in text
    text = _refused(caplog, "--source", "experts", "--task", "Cars", "--image-size", "16", "--root", root, "--out",
                    str(tmp_path / "Cars"))  # fmt: skip
    assert "StanfordCars" in text and "placed under root by hand" in text
    assert not (tmp_path / "Cars" / "classnames.json").exists()


# ---------------------------------------------------------------------------------------------------- EMNIST


def test_emnist_keeps_torchvisions_raw_orientation_as_the_experts_did(tmp_path: Path) -> None:
    """TALL-masks' EMNIST is torchvision's EMNIST(split="digits") with no transpose (src/datasets/emnist.py):
    the idx files store each glyph transposed, and the experts trained on exactly those pixels."""
    glyph = np.zeros((28, 28), dtype=np.uint8)
    glyph[2:6, :] = 255  # a bar across the top rows: transposing would move it to the left columns
    images = np.stack([glyph] * 20)
    raw = tmp_path / "EMNIST" / "raw"
    for part, n in (("train", 20), ("test", 2)):
        _idx(raw / f"emnist-digits-{part}-images-idx3-ubyte", images[:n])
        _idx(raw / f"emnist-digits-{part}-labels-idx1-ubyte", np.arange(n) % 10)
    out = tmp_path / "out"
    _prepare("--source", "experts", "--task", "EMNIST", "--image-size", "28", "--root", str(tmp_path), "--out",
             str(out))  # fmt: skip
    stored = load_split(out, "test")[0][0, :, :, 0]
    np.testing.assert_array_equal(stored, glyph)
    assert stored[3].min() == 255 and stored[:, 10].max() == 255 and stored[10].max() == 0


# ------------------------------------------------------------------------------------------------ head texts

# Per task: (number of classes, number of templates, {class index: the experts' text of that class through their
# first template}). Read in nik-dim/tall_masks @d10af8b: src/datasets/templates.py for the templates, the dataset
# files for hard-coded names (fer2013.py L70-78, flowers102.py L34-137, gtsrb.py L156-201, pcam.py L35, eurosat.py
# L41-57, resisc45.py L302), torchvision's `classes` (CIFAR10/100 meta files, Food101 sorted meta keys, STL10
# class_names.txt, OxfordIIITPet title-cased names, FashionMNIST, KMNIST, EMNIST digits) and the folder names of
# DTD and SUN397 (sun397.py strips two characters and turns "_" into " ").
EXPERTS_HEAD_FACTS: dict[str, tuple[int, int, dict[int, str]]] = {
    "SUN397": (397, 2, {0: "a photo of a abbey.", 8: "a photo of a apartment building outdoor."}),
    "Cars": (196, 8, {0: "a photo of a AM General Hummer SUV 2000."}),
    "RESISC45": (45, 18, {2: "satellite imagery of baseball diamond."}),
    "EuroSAT": (10, 3, {0: "a centered satellite photo of annual crop land.",
                        9: "a centered satellite photo of lake or sea."}),
    "SVHN": (10, 1, {7: 'a photo of the number: "7".'}),
    "GTSRB": (43, 3, {0: 'a zoomed in photo of a "red and white circle 20 kph speed limit" traffic sign.'}),
    "MNIST": (10, 1, {0: 'a photo of the number: "0".'}),
    "DTD": (47, 8, {0: "a photo of a banded texture."}),
    "CIFAR100": (100, 18, {1: "a photo of a aquarium_fish.", 99: "a photo of a worm."}),
    "STL10": (10, 2, {0: "a photo of a airplane."}),
    "Flowers102": (102, 1, {15: "a photo of a globe flower, a type of flower.",
                            59: "a photo of a pink and yellow dahlia, a type of flower.",
                            92: "a photo of a air plant, a type of flower."}),
    "OxfordIIITPet": (37, 1, {1: "a photo of a American Bulldog, a type of pet."}),
    "PCAM": (2, 1, {1: "this is a photo of lymph node containing metastatic tumor tissue"}),
    "FER2013": (7, 6, {3: "a photo of a ['happy', 'smiling'] looking face.",
                       6: "a photo of a ['neutral', 'bored'] looking face."}),
    "EMNIST": (10, 1, {3: 'a photo of the digit character: "3".'}),
    "CIFAR10": (10, 18, {1: "a photo of a automobile."}),
    "Food101": (101, 1, {0: "a photo of apple_pie, a type of food."}),
    "FashionMNIST": (10, 2, {0: "a photo of a T-shirt/top."}),
    "RenderedSST2": (2, 1, {1: "a positive review of a movie."}),
    "KMNIST": (10, 1, {1: "a photo of the character ki."}),
}  # fmt: skip


@pytest.mark.parametrize("task", TASKS_20)
def test_experts_head_texts_match_their_code(task: str) -> None:
    n_classes, n_templates, samples = EXPERTS_HEAD_FACTS[task]
    names, templates = class_texts(task, "experts")
    assert (len(names), len(templates)) == (n_classes, n_templates)
    for index, text in samples.items():
        assert templates[0].format(names[index]) == text
    readable, _ = class_texts(task, "readable")
    differs = {"FER2013", "Flowers102", "CIFAR100", "Food101"}
    assert (readable != names) == (task in differs)


def test_the_fer2013_text_is_what_an_f_string_makes_of_a_list() -> None:
    synonyms = ["surprised", "shocked", "spooked"]
    names, templates = class_texts("FER2013", "experts")
    assert templates[4] == "they look {}." and templates[4].format(names[5]) == f"they look {synonyms}."


# ------------------------------------------------------------------------------------------------ provenance


def test_every_task_has_experts_data_facts_with_the_published_split_sizes() -> None:
    assert set(EXPERTS_DATA) == set(TASKS)
    # v = min(5000, int(0.1 N)), as the TALL-masks accuracy denominators show (Cars 814, DTD 376, Flowers102 102).
    assert {t: EXPERTS_DATA[t].n_val for t in ("Cars", "DTD", "Flowers102", "RESISC45", "EMNIST", "EuroSAT")} == {
        "Cars": 814, "DTD": 376, "Flowers102": 102, "RESISC45": 1890, "EMNIST": 5000, "EuroSAT": 2700
    }  # fmt: skip


def test_val_exactness_per_source() -> None:
    assert val_provenance("MNIST", "torchvision", "tall_masks").exact
    assert not val_provenance("MNIST", "huggingface", "tall_masks").exact
    assert val_provenance("DTD", "folder", "tall_masks").exact
    assert "not recorded" in val_provenance("DTD", "folder", "cart_authors").reason
    assert not val_provenance("EuroSAT", "folder", "tall_masks").exact
    assert not val_provenance("FER2013", "huggingface", "tall_masks").exact
    assert not val_provenance("MNIST", "torchvision", "fusionbench").exact
    assert val_provenance("FER2013", "huggingface", "finetune").exact
    assert {experts_data_source(t) for t in TASKS} == {"torchvision", "folder", "huggingface"}
    assert [t for t in TASKS if experts_data_source(t) == "folder"] == ["SUN397", "RESISC45", "EuroSAT", "DTD"]
    assert head_texts_for("tall_masks") == "experts" and head_texts_for("finetune") == "readable"


def test_classnames_json_records_no_data_for_tiny(tmp_path: Path) -> None:
    _prepare("--task", "shapes", "--image-size", "16", "--train-size", "20", "--test-size", "10", "--out",
             str(tmp_path / "shapes"))  # fmt: skip
    assert "data" not in json.loads((tmp_path / "shapes" / "classnames.json").read_text())
    assert load_data_record(tmp_path / "shapes") is None


# ------------------------------------------------------------------------------------------------ mergeflow tasks


@pytest.mark.parametrize("experts", ["tall_masks", "cart_authors"])
def test_tasks_command_prints_all_twenty_tasks(experts: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks", "--experts", experts, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["task"] for row in rows] == list(TASKS_20)
    by_task = {row["task"]: row for row in rows}
    assert by_task["MNIST"]["splits"] == {"train": 55000, "val": 5000, "test": 10000}
    assert by_task["MNIST"]["data_source"] == "torchvision" and by_task["MNIST"]["val_exact"]
    assert by_task["EuroSAT"]["splits"] == {"train": 21600, "val": 2700, "test": 2700}
    assert not by_task["EuroSAT"]["val_exact"] and not by_task["FER2013"]["val_exact"]
    assert by_task["DTD"]["val_exact"] == (experts == "tall_masks")
    assert by_task["FER2013"]["classnames"][3] == "['happy', 'smiling']"
    assert by_task["DTD"]["expert_file"].endswith("DTDVal/nonlinear_finetuned.pt")
    trained_by = {row["experts_trained_by"] for row in rows[:8]}, {row["experts_trained_by"] for row in rows[8:]}
    assert trained_by == (({"task_vectors"}, {"tall_masks"}) if experts == "cart_authors" else ({experts}, {experts}))


def test_tasks_command_text_and_other_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks", "--experts", "task_vectors"]) == 0
    text = capsys.readouterr().out
    assert text.count("\n  expert      task_vectors") == 8 and text.rstrip().endswith("val exact for 6 of 8 tasks")
    assert main(["tasks", "--experts", "fusionbench", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["data_source"] for row in rows} == {"huggingface"} and not any(row["val_exact"] for row in rows)
    assert rows[0]["class_texts"] == "readable"


def test_readme_provenance_table_matches_the_registry() -> None:
    """README's table is written from `mergeflow tasks`; a changed fact must change it too."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### The experts' protocol", 1)[1].split("Facts behind this table", 1)[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| ") and line.count(" | ") == 6]
    table = {cells[0].lstrip("| "): cells for cells in rows[1:]}
    assert list(table) == list(TASKS_20)
    tall, cart = ({row["task"]: row for row in tasks_protocol(e)} for e in ("tall_masks", "cart_authors"))
    for task, cells in table.items():
        assert cells[3] == ("exact" if tall[task]["val_exact"] else "approximate"), task
        assert cells[4] == ("exact" if cart[task]["val_exact"] else "approximate"), task
        sizes = tall[task]["splits"]
        assert cells[2].startswith(f"{sizes['train']:,} / {sizes['val']:,} / "), task
        assert cells[6].rstrip(" |") == cart[task]["experts_trained_by"], task


def test_tiny_val_size_holds_out_that_many_training_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    common = ["--task", "shapes", "--image-size", "16", "--train-size", "60", "--test-size", "10"]
    _prepare(*common, "--out", str(tmp_path / "default"))
    _prepare(*common, "--val-size", "25", "--out", str(tmp_path / "fixed"))
    assert len(load_split(tmp_path / "default", "val")[1]) == 6  # the experts' 10%
    train, val = load_split(tmp_path / "fixed", "train"), load_split(tmp_path / "fixed", "val")
    assert (len(train[1]), len(val[1])) == (35, 25)
    # Together they are the same 60 images either way: only the held-out share moves.
    pooled = lambda d: sorted(  # noqa: E731
        map(bytes, np.concatenate([load_split(d, s)[0] for s in ("train", "val")]).reshape(60, -1))
    )
    assert pooled(tmp_path / "fixed") == pooled(tmp_path / "default")
    assert "expected 1 to train_size - 1" in _refused(caplog, *common, "--val-size", "60", "--out", str(tmp_path / "x"))
