"""The shipped tiny θ_0: installed only when its recipe is the config's, and only after its sha256 checks out."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mergeflow.cli import main
from mergeflow.io import InputError
from mergeflow.model import load_clip, tiny_clip_spec
from mergeflow.shipped import MODEL_FILES, install_shipped, recipe_differences, unmatched_settings

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "resources" / "tiny-clip"


def config(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def test_differences_are_dotted_paths_and_numbers_compare_by_value() -> None:
    shipped = {"model": {"architecture": {"width": 128, "layers": 4}}, "pretrain": {"lr": 2.0e-3, "steps": 450}}
    assert recipe_differences(shipped, {"model": {"architecture": {"width": 128.0, "layers": 4}},
                                        "pretrain": {"lr": 0.002, "steps": 450}}) == []  # fmt: skip
    wanted = {"model": {"architecture": {"width": 96, "layers": 4}}, "pretrain": {"lr": 2.0e-3, "seed": 1}}
    assert recipe_differences(shipped, wanted) == ["model.architecture.width", "pretrain.seed", "pretrain.steps"]


@pytest.mark.parametrize("name", ["config.yaml", "tiny14.yaml", "tiny20.yaml"])
def test_the_tiny_suites_use_the_shipped_theta_0(name: str) -> None:
    settings = config(name)
    assert settings["model"]["shipped"] == "resources/tiny-clip"
    assert unmatched_settings(SHIPPED, settings) == []


def test_any_change_to_the_recipe_means_pre_training() -> None:
    changes = ((("pretrain", "seed"), 1), (("model", "architecture", "width"), 96), (("data", "domain_style"), 0.5))
    for path, value in changes:
        settings = config("config.yaml")
        node = settings
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert unmatched_settings(SHIPPED, settings) == [".".join(path)]


def test_install_copies_files_that_load_as_the_configured_architecture(tmp_path: Path) -> None:
    assert main(["install-pretrained", "--shipped", str(SHIPPED), "--out", str(tmp_path / "model")]) == 0
    for name in MODEL_FILES:
        assert (tmp_path / "model" / name).read_bytes() == (SHIPPED / name).read_bytes()
    spec, clip = load_clip(tmp_path / "model")
    expected = tiny_clip_spec("tiny-clip", config("config.yaml")["model"]["architecture"])
    assert spec.open_clip_config == expected.open_clip_config
    assert clip.visual.transformer.width == 128 and len(clip.visual.transformer.resblocks) == 4
    assert float(clip.logit_scale.detach()) != float(torch.log(torch.tensor(1 / 0.07)))  # trained, not initial


def test_a_corrupt_file_is_refused_by_name_and_nothing_is_installed(tmp_path: Path) -> None:
    copy = tmp_path / "shipped"
    shutil.copytree(SHIPPED, copy)
    data = bytearray((copy / "text.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "text.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"text\.safetensors: sha256 [0-9a-f]{64} does not match"):
        install_shipped(copy, tmp_path / "model")
    assert not (tmp_path / "model").exists()
    (copy / "model.json").unlink()
    assert main(["install-pretrained", "--shipped", str(copy), "--out", str(tmp_path / "model")]) == 2
    assert not (tmp_path / "model").exists()
