"""A paper config run end to end by the real Snakemake, offline, with every real source served from a hub cache.

The hub cache holds open_clip's ViT-B-32 repository (at the pinned commit) and `nik-dim/tall_masks` under their
real ids, file names and formats; the two datasets are torchvision's raw idx files in `data.root`, which the paper
configs' `data.source: experts` reads for these tasks. Only the sizes are small: the served `open_clip_config.json`
describes a small ViT (fetch_pretrained builds whatever the repository's config says, as open_clip does), and
each dataset has a few dozen images. HF_HUB_OFFLINE=1 (tests/conftest.py) makes every download a cache read.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import yaml
from hub_cache import write_hub_repo
from safetensors.torch import save_file
from torch.utils.data import random_split

from mergeflow.checkpoints.tables import PINNED_COMMITS
from mergeflow.io import load_state_dict

REPO = Path(__file__).resolve().parents[1]
TASKS = ["MNIST", "KMNIST"]
MODEL_CFG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
# torchvision's raw file names of the MNIST family, per split (its `_load_data`).
RAW_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}  # fmt: skip
SIZES = {"train": 40, "test": 20}


def _idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed idx file as torchvision's MNIST family reads it (big-endian header, ubyte data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _labels_the_finetuned_model_predicts(
    clip: torch.nn.Module, encoder: dict[str, torch.Tensor], task: str, images: np.ndarray
) -> list[int]:
    """Label each image as θ_t with the zero-shot head classifies it, so a consistent pipeline scores 100%.

    Images are stored at the model's 32 px, where resize and centre crop are the identity, so the pipeline's
    prepared arrays equal `images` and any mismatch (labels, preprocessing, head, checkpoint keys) shows up as
    an individual accuracy below 1.
    """
    from mergeflow.image_tasks import get_task
    from mergeflow.models.clip import ModelSpec, build_tokenizer, images_to_tensor
    from mergeflow.models.heads import zero_shot_head

    spec = ModelSpec("ViT-B-32", MODEL_CFG, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    classes = get_task(task)
    cpu = torch.device("cpu")
    head = zero_shot_head(clip, build_tokenizer(spec), classes.classnames, classes.templates, cpu)
    visual = copy.deepcopy(clip.visual)
    visual.load_state_dict(encoder)
    with torch.no_grad():
        features = torch.nn.functional.normalize(visual(images_to_tensor(images, spec, cpu)), dim=-1)
    return (features @ head.t()).argmax(dim=-1).tolist()


def _write_fixtures(root: Path) -> dict[str, object]:
    hub = root / "hub"
    root.mkdir(parents=True)
    torch.manual_seed(0)
    clip = open_clip.model.CLIP(**MODEL_CFG).eval()
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(root / "weights.safetensors"))
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    write_hub_repo(
        hub,
        "timm/vit_base_patch32_clip_224.openai",
        {
            "open_clip_config.json": json.dumps(config).encode(),
            "open_clip_model.safetensors": root / "weights.safetensors",
        },
        commit=PINNED_COMMITS["timm/vit_base_patch32_clip_224.openai"],
    )
    visual = {k: v for k, v in clip.state_dict().items() if k.startswith("visual.")}
    finetuned, checkpoints, labels = {}, {}, {}
    generator = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(2)
    for task in TASKS:
        state = {f"model.{k}": v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in visual.items()}
        state["model.logit_scale"] = clip.logit_scale.detach().clone()
        path = root / f"{task}.pt"
        torch.save(state, path)
        checkpoints[task] = hashlib.sha256(path.read_bytes()).hexdigest()
        finetuned[task] = {
            k.removeprefix("model.visual."): v for k, v in state.items() if k.startswith("model.visual.")
        }
        write_hub_repo(hub, "nik-dim/tall_masks", {f"single_task/ViT-B-32/{task}Val/nonlinear_finetuned.pt": path})
        for split, (images_file, labels_file) in RAW_FILES.items():
            grey = rng.integers(0, 256, size=(SIZES[split], 32, 32), dtype=np.uint8)
            rgb = np.repeat(grey[..., None], 3, axis=-1)  # what prepare-data stores of a grey image
            labels[task, split] = _labels_the_finetuned_model_predicts(clip, finetuned[task], task, rgb)
            _idx(root / "data" / task / "raw" / images_file, grey)
            _idx(root / "data" / task / "raw" / labels_file, np.array(labels[task, split]))
    return {"hub": hub, "data_root": root / "data", "finetuned": finetuned, "checkpoint_sha256": checkpoints,
            "labels": labels}  # fmt: skip


def _config(hub: Path, data_root: Path) -> dict:
    config = yaml.safe_load((REPO / "config" / "paper" / "vit-b-32-8.yaml").read_text())
    assert config["data"]["source"] == "experts"
    config["tasks"] = TASKS
    config["hub"] = {"cache_dir": str(hub)}
    config["data"]["root"] = str(data_root)
    config["model"]["image_size"] = 32
    config["evaluation"] = {"batch_size": 64}
    config["methods"] = {
        "weight_averaging": {},
        "cart": {"rank": [0.0, 1.0], "lam": [1.0, 2.0]},
        "cart@released": {"rank": 0.12, "lam": 2.0},
    }
    return config


def _snakemake(workdir: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"), "--cores", "2",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    workdir = tmp_path_factory.mktemp("paper")
    fixtures = _write_fixtures(workdir / "fixtures")
    (workdir / "config.yaml").write_text(yaml.safe_dump(_config(fixtures["hub"], fixtures["data_root"])))
    finished = _snakemake(workdir)
    assert finished.returncode == 0, finished.stderr[-5000:]
    return workdir, fixtures


def test_pretrained_model_records_where_it_came_from(run) -> None:
    workdir, _ = run
    description = json.loads((workdir / "results/models/ViT-B-32/model.json").read_text())
    assert description["source"]["repo_id"] == "timm/vit_base_patch32_clip_224.openai"
    assert description["source"]["commit"] == PINNED_COMMITS["timm/vit_base_patch32_clip_224.openai"]
    assert description["source"]["file"] == "open_clip_model.safetensors"
    assert description["open_clip_config"]["quick_gelu"] is True
    assert description["image_mean"] == [0.5] * 3


def test_finetuned_encoders_equal_the_tall_masks_checkpoints(run) -> None:
    workdir, fixtures = run
    for task in TASKS:
        encoder = load_state_dict(workdir / f"results/finetuned/ViT-B-32/{task}.safetensors")
        expected = fixtures["finetuned"][task]
        assert encoder.keys() == expected.keys()
        assert all(torch.equal(encoder[k], expected[k]) for k in expected)
        record = json.loads((workdir / f"results/finetuned/ViT-B-32/{task}.json").read_text())
        assert record["source"] == "tall_masks" and record["repo_id"] == "nik-dim/tall_masks"
        assert record["path_in_repo"] == f"single_task/ViT-B-32/{task}Val/nonlinear_finetuned.pt"
        assert record["source_sha256"] == fixtures["checkpoint_sha256"][task]
        assert record["experts"] == "tall_masks"


def test_prepared_data_hold_out_the_experts_val_and_write_no_train(run) -> None:
    """No job fine-tunes (tall_masks), so no train split; val is random_split's, over torchvision's order."""
    workdir, fixtures = run
    for task in TASKS:
        directory = workdir / "results/data" / task
        assert not (directory / "train_images.npy").exists() and not (directory / "train_labels.npy").exists()
        _, held_out = random_split(range(40), [36, 4], generator=torch.Generator().manual_seed(0))
        train_labels = fixtures["labels"][task, "train"]
        assert np.load(directory / "val_labels.npy").tolist() == [train_labels[i] for i in sorted(held_out.indices)]
        assert np.load(directory / "test_labels.npy").tolist() == fixtures["labels"][task, "test"]
        assert np.load(directory / "test_images.npy", mmap_mode="r").shape == (20, 32, 32, 3)
        record = json.loads((directory / "classnames.json").read_text())["data"]
        assert record["source"] == "torchvision" and record["counts"] == {"val": 4, "test": 20}
    provenance = pd.read_csv(workdir / "results/paper8/ViT-B-32/tables/tasks.csv")
    assert provenance["val_exact"].tolist() == [True, True]


def test_each_finetuned_model_scores_100_percent_on_its_own_task(run) -> None:
    workdir, _ = run
    reference = pd.read_csv(workdir / "results/paper8/ViT-B-32/eval/reference.csv")
    assert sorted(reference["task"].unique()) == sorted(TASKS)
    assert (reference["individual"] == 1.0).all(), reference


def test_table_reports_both_cart_rows_and_cart_bounds_equal_weight_averaging(run) -> None:
    workdir, _ = run
    suite = workdir / "results/paper8/ViT-B-32"
    table = pd.read_csv(suite / "tables/main.csv")
    assert {"weight averaging", "CART", "CART (released)"} <= set(table["method"])
    assert table["average_ci_low"].notna().all() and (table["average_ci_low"] <= table["average"]).all()
    cart = pd.read_csv(suite / "eval/cart.csv")
    averaging = pd.read_csv(suite / "eval/weight_averaging.csv")
    for split in ("val", "test"):
        expected = averaging[averaging["split"] == split].set_index("task")["accuracy"]
        for rank in (0.0, 1.0):
            rows = cart[(cart["split"] == split) & (cart["rank"] == rank)]
            for _, group in rows.groupby("setting"):
                pd.testing.assert_series_equal(group.set_index("task")["accuracy"], expected)
    released = pd.read_csv(suite / "eval/cart@released.csv")
    assert set(released["method"]) == {"cart@released"} and set(released["rank"]) == {0.12}


def test_a_second_run_has_nothing_to_do(run) -> None:
    workdir, _ = run
    again = _snakemake(workdir)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
