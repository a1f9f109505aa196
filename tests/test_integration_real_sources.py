"""A paper config run end to end by the real Snakemake, offline, with every real source served from a hub cache.

The hub cache holds open_clip's ViT-B-32 repository, `nik-dim/tall_masks` and two dataset repositories under
their real ids, file names and formats; only the sizes are small: the served `open_clip_config.json`
describes a small ViT (fetch_pretrained builds whatever the repository's config says, as open_clip does), and
each dataset has a few dozen images. HF_HUB_OFFLINE=1 (tests/conftest.py) makes every download a cache read.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
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
from PIL import Image
from safetensors.torch import save_file

from mergeflow.io import load_state_dict

REPO = Path(__file__).resolve().parents[1]
TASKS = ["MNIST", "EuroSAT"]
MODEL_CFG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
EUROSAT_NAMES = [
    "annual crop land", "forest", "brushland or shrubland", "highway or road",
    "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
    "residential buildings or homes or apartments", "river", "lake or sea",
]  # fmt: skip
# Served layout of each dataset repository: (repo id, files per split, ClassLabel names).
DATASETS = {
    "MNIST": ("ylecun/mnist", {"train": "mnist/train-00000-of-00001.parquet",
                               "test": "mnist/test-00000-of-00001.parquet"}, [str(d) for d in range(10)]),
    "EuroSAT": ("tanganke/eurosat", {"train": "data/train-00000-of-00001.parquet",
                                     "test": "data/test-00000-of-00001.parquet"}, EUROSAT_NAMES),
}  # fmt: skip
SIZES = {"train": 40, "test": 20}


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _dataset_parquet(path: Path, images: np.ndarray, labels: list[int], names: list[str]) -> Path:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    rows = {"image": [{"bytes": _png(image), "path": None} for image in images], "label": labels}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def _labels_the_finetuned_model_predicts(
    clip: torch.nn.Module, encoder: dict[str, torch.Tensor], task: str, images: np.ndarray
) -> list[int]:
    """Label each image as θ_t with the zero-shot head classifies it, so a consistent pipeline scores 100%.

    Images are stored at the model's 32 px, where resize and centre crop are the identity, so the pipeline's
    prepared arrays equal `images` and any mismatch (labels, preprocessing, head, checkpoint keys) shows up as
    an individual accuracy below 1.
    """
    from mergeflow.heads import zero_shot_head
    from mergeflow.image_tasks import get_task
    from mergeflow.model import ModelSpec, build_tokenizer, images_to_tensor

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
        repo_id, files, names = DATASETS[task]
        served = {}
        for split, path_in_repo in files.items():
            images = rng.integers(0, 256, size=(SIZES[split], 32, 32, 3), dtype=np.uint8)
            labels[task, split] = _labels_the_finetuned_model_predicts(clip, finetuned[task], task, images)
            served[path_in_repo] = _dataset_parquet(
                root / f"{task}-{split}.parquet", images, labels[task, split], names
            )
        write_hub_repo(hub, repo_id, served, repo_type="dataset")
    return {"hub": hub, "finetuned": finetuned, "checkpoint_sha256": checkpoints, "labels": labels}


def _config(hub: Path) -> dict:
    config = yaml.safe_load((REPO / "config" / "paper" / "vit-b-32-8.yaml").read_text())
    config["tasks"] = TASKS
    config["hub"] = {"cache_dir": str(hub)}
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
    (workdir / "config.yaml").write_text(yaml.safe_dump(_config(fixtures["hub"])))
    finished = _snakemake(workdir)
    assert finished.returncode == 0, finished.stderr[-5000:]
    return workdir, fixtures


def test_pretrained_model_records_where_it_came_from(run) -> None:
    workdir, _ = run
    description = json.loads((workdir / "results/models/ViT-B-32/model.json").read_text())
    assert description["source"]["repo_id"] == "timm/vit_base_patch32_clip_224.openai"
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


def test_prepared_data_keep_the_source_labels_and_split_val_off_train(run) -> None:
    workdir, fixtures = run
    for task in TASKS:
        directory = workdir / "results/data" / task
        train = np.load(directory / "train_labels.npy")
        val = np.load(directory / "val_labels.npy")
        test = np.load(directory / "test_labels.npy")
        assert (len(train), len(val)) == (36, 4)
        assert sorted(train.tolist() + val.tolist()) == sorted(fixtures["labels"][task, "train"])
        assert test.tolist() == fixtures["labels"][task, "test"]
        assert np.load(directory / "test_images.npy", mmap_mode="r").shape == (20, 32, 32, 3)
    eurosat = json.loads((workdir / "results/data/EuroSAT/classnames.json").read_text())
    assert eurosat["classnames"] == EUROSAT_NAMES


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
