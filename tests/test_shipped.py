"""The shipped tiny θ_0 and fine-tuned tiny8 encoders: installed only when their recipes are the config's, and
only after their sha256 check out."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mergeflow.commands.main import main
from mergeflow.io import InputError, sha256_file
from mergeflow.models.clip import load_clip, tiny_clip_spec
from mergeflow.shipped.finetuned import FINETUNE_INPUTS, encoder_path, multitask_dir, read_finetune_recipe
from mergeflow.shipped.theta0 import MODEL_FILES, install_shipped, read_recipe, recipe_differences, unmatched_settings
from mergeflow.training.finetune import FinetuneSettings

# The shipped files were made on an AVX2 machine; these tests must hold with any CPU's kernels.
pytestmark = pytest.mark.cpu_kernels

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "resources" / "tiny-clip"
SHIPPED_FINETUNED = SHIPPED / "finetuned"


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


@pytest.mark.parametrize("name", ["config.yaml", "tiny14.yaml", "tiny20.yaml"])
def test_the_tiny_suites_use_the_shipped_encoders(name: str) -> None:
    assert config(name)["finetune"]["shipped"] == "resources/tiny-clip/finetuned"


def test_every_tiny8_task_ships_an_encoder_made_with_the_default_settings_on_the_shipped_theta_0() -> None:
    default = config("config.yaml")
    settings = FinetuneSettings(**{key: value for key, value in default["finetune"].items() if key != "shipped"})
    theta_0 = read_recipe(SHIPPED)["sha256"]["pretrained.safetensors"]
    assert sorted(path.stem for path in SHIPPED_FINETUNED.glob("*.safetensors")) == sorted(default["tasks"])
    for task in default["tasks"]:
        recipe = read_finetune_recipe(SHIPPED_FINETUNED, task)
        assert recipe is not None
        assert recipe_differences(recipe["settings"], settings.as_recipe()) == []
        assert recipe["inputs"]["pretrained"] == theta_0
        assert sorted(recipe["inputs"]) == sorted(FINETUNE_INPUTS)  # files only, no result of a float computation
        assert sha256_file(encoder_path(SHIPPED_FINETUNED, task)) == recipe["sha256"]


def test_the_tiny8_multitask_encoder_ships_with_the_default_settings_and_task_list() -> None:
    default = config("config.yaml")
    assert default["multitask"] is True
    settings = FinetuneSettings(**{key: value for key, value in default["finetune"].items() if key != "shipped"})
    folder = multitask_dir(SHIPPED_FINETUNED)
    recipe = read_finetune_recipe(folder, default["benchmark"])
    assert recipe is not None
    assert recipe_differences(recipe["settings"], settings.as_recipe()) == []
    assert recipe["tasks"] == default["tasks"]
    assert recipe["inputs"]["pretrained"] == read_recipe(SHIPPED)["sha256"]["pretrained.safetensors"]
    assert sorted(recipe["inputs"]["tasks"]) == sorted(default["tasks"])
    assert sha256_file(encoder_path(folder, default["benchmark"])) == recipe["sha256"]


def test_the_default_workflow_installs_the_shipped_encoder_it_would_fine_tune(tmp_path: Path) -> None:
    """The data generator and the shipped θ_0 reproduce the recipe's input files on any CPU, so the default run
    copies; the head it builds (other bytes under AVX-512 kernels than under AVX2) is not among them."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**config("config.yaml"), "device": "cpu"}))
    target = "results/finetuned/tiny-clip/shapes.safetensors"
    subprocess.run([sys.executable, "-m", "snakemake", target, "--snakefile", str(REPO / "Snakefile"),
                    "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "2",
                    "--quiet"], check=True)  # fmt: skip
    assert (tmp_path / target).read_bytes() == encoder_path(SHIPPED_FINETUNED, "shapes").read_bytes()
    log = (tmp_path / "results" / "logs" / "finetune" / "tiny-clip" / "shapes.log").read_text()
    assert "installed the shipped fine-tuned encoder of 'shapes'" in log
