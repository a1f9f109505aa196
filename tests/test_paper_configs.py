"""The paper configs: generated consistently, valid against the schema, and their DAGs build."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper"
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def _generator():
    spec = importlib.util.spec_from_file_location("paper_configs", PAPER / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(name: str) -> dict:
    return yaml.safe_load((PAPER / name).read_text())


def test_committed_configs_are_what_the_generator_writes():
    rendered = _generator().rendered()
    assert sorted(rendered) == sorted(path.name for path in PAPER.glob("*.yaml"))
    assert len(rendered) == 9
    for name, text in rendered.items():
        assert (PAPER / name).read_text() == text, f"{name} is stale: rerun python config/paper/generate.py"


@pytest.mark.parametrize(
    ("name", "num_tasks", "released"),
    [("vit-b-32-8.yaml", 8, (0.12, 2.0)), ("vit-b-16-14.yaml", 14, (0.16, 1.5)), ("vit-l-14-20.yaml", 20, (0.32, 1.9))],
)
def test_paper_configs_are_valid_and_carry_the_released_cart_setting(name, num_tasks, released):
    config = _load(name)
    validate(config, SCHEMA)
    assert len(config["tasks"]) == num_tasks
    assert config["tasks"][:8] == ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]
    assert (config["methods"]["cart@released"]["rank"], config["methods"]["cart@released"]["lam"]) == released
    assert released[0] in config["methods"]["cart"]["rank"] and released[1] in config["methods"]["cart"]["lam"]
    assert config["finetune"]["lr"] == 1e-5 and config["finetune"]["batch_size"] == 128


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["data"].update(source="tiny"), "tiny"),
        (lambda c: c["model"].pop("open_clip"), "open_clip"),
        (lambda c: c.update(finetuned={"source": "url", "urls": {"DTD": {"url": "https://x/y.pt"}}}), "sha256"),
        (lambda c: c["methods"].update({"cart@": {}}), "cart@"),
        (lambda c: c["model"]["open_clip"].update(name="ViT-H-14"), "ViT-H-14"),
    ],
)
def test_schema_rejects_inconsistent_paper_configs(change, message):
    config = copy.deepcopy(_load("vit-b-32-8.yaml"))
    change(config)
    with pytest.raises(WorkflowError, match=re.escape(message)):
        validate(config, SCHEMA)


def _dry_run(tmp_path: Path, config: dict) -> str:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    command = [
        sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
        "--configfile", str(tmp_path / "config.yaml"), "--cores", "4",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def _job_counts(dry_run_output: str) -> dict[str, int]:
    table = dry_run_output.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def test_the_largest_paper_dag_builds_with_every_real_source(tmp_path):
    config = _load("vit-l-14-20.yaml")
    output = _dry_run(tmp_path, config)
    assert _job_counts(output) == {
        "fetch_pretrained": 1,
        "prepare_data": 20,
        "build_head": 20,
        "fetch_finetuned": 20,
        "decompose": 2,
        "evaluate_reference": 1,
        "task_statistics": 40,
        "merge_eval": 17,
        "merge_eval_part": 8,
        "combine_sweep": 3,
        "adapt_eval": 3,
        "adaptation_figures": 4,
        "lambda_rank": 1,
        "spectrum": 1,
        "aggregate": 1,
        "all": 1,
        "total": 143,
    }
    assert "mergeflow fetch-pretrained --model ViT-L-14 --pretrained openai --image-size 224" in output
    assert f"mergeflow prepare-data --source {config['data']['source']} --task EMNIST --image-size 224" in output
    assert "--emnist-split digits" in output
    assert "results/paper20/ViT-L-14/eval/cart@released.csv" in output
    assert "--method cart@released" in output
    # GPU jobs (heads, SVD, evaluations, adaptations) ask for one GPU each; downloads, data and tables for none.
    requests = re.findall(r"^\s+resources: (.*)$", output, re.MULTILINE)
    assert sum("gpu=1" in line for line in requests) == 20 + 2 + 1 + 40 + (17 + 8) + 3
    # the data stage: grams and fisher per task; RegMean++ draws its training images itself
    assert "mergeflow task-statistics --kind grams --model-dir results/models/ViT-L-14" in output
    assert "--task-statistics results/statistics/ViT-L-14/SUN397/fisher.safetensors" in output
    assert "--training-images 256 --training-seed 0 --training-batch-size 32" in output
    assert "--method cart+svc" in output and "--method emr" in output
    assert all("mem_mb=" in line and "runtime=" in line for line in requests if "gpu=1" in line)


def test_a_cpu_config_asks_for_no_gpu(tmp_path):
    config = _load("vit-b-32-8.yaml")
    config["device"] = "cpu"
    output = _dry_run(tmp_path, config)
    assert "gpu=1" not in output and "gpu=0" in output


def test_a_configfile_replaces_the_default_config(tmp_path):
    """Run where config/config.yaml exists (as in a clone): none of the tiny default's methods may leak in."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text((REPO / "config" / "config.yaml").read_text())
    config = _load("vit-b-32-8.yaml")
    config["methods"] = {"weight_averaging": {}}
    counts = _job_counts(_dry_run(tmp_path, config))
    assert counts["merge_eval"] == 1 and "pretrain" not in counts


def test_fine_tuning_replaces_fetching_when_the_config_says_so(tmp_path):
    config = _load("vit-l-14-8.yaml")
    config["finetuned"] = {"source": "finetune"}
    output = _dry_run(tmp_path, config)
    counts = _job_counts(output)
    assert counts["finetune"] == 8 and "fetch_finetuned" not in counts
    assert "--batch-size 128 --micro-batch-size 32 --lr 1e-05" in output


def _jobs(dry_run_output: str) -> list[dict]:
    """Each job of a dry run: its rule, wildcards, resources (as numbers where they are) and shell command."""
    jobs = []
    for match in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)(?:Shell command: (.*))?", dry_run_output, re.M):
        fields = dict(re.findall(r"^    (\w+): (.*)$", match.group(2), re.M))
        resources = dict(item.split("=", 1) for item in fields.get("resources", "").split(", ") if "=" in item)
        jobs.append({
            "rule": match.group(1),
            "wildcards": dict(item.split("=", 1) for item in fields.get("wildcards", "").split(", ") if "=" in item),
            "resources": {key: int(value) if value.isdigit() else value for key, value in resources.items()},
            "shell": match.group(3) or "",
        })  # fmt: skip
    return jobs


SPLIT_SWEEPS = {"vit-l-14-14.yaml": 2, "vit-l-14-20.yaml": 3}  # parts of cart's and lowrank_ta's sweeps


@pytest.mark.parametrize("name", sorted(path.name for path in PAPER.glob("*.yaml")))
def test_no_paper_job_asks_for_more_than_a_day_and_every_fetch_declares_memory(tmp_path, name):
    config = _load(name)
    output = _dry_run(tmp_path, config)
    jobs, counts = _jobs(output), _job_counts(output)
    assert len(jobs) == counts["total"]
    runtimes = {
        (job["rule"], str(job["wildcards"])): job["resources"]["runtime"] for job in jobs if job["rule"] != "all"
    }
    assert max(runtimes.values()) <= 1440, max(runtimes.items(), key=lambda item: item[1])
    fetches = [job for job in jobs if job["rule"].startswith("fetch_")]
    assert len(fetches) == 1 + len(config["tasks"])
    assert all("mem_mb" in job["resources"] and job["resources"]["mem_mb"] >= 2000 for job in fetches)
    # the long sweeps run as parts by rank, each part all of a rank's λ, and one job combines each sweep
    parts = SPLIT_SWEEPS.get(name, 1)
    for method in ("cart", "lowrank_ta"):
        part_jobs = [job for job in jobs if job["rule"] == "merge_eval_part" and job["wildcards"]["method"] == method]
        assert len(part_jobs) == (parts if parts > 1 else 0)
        grids = [json.loads(re.search(r"--grid '(.*?)'", job["shell"]).group(1)) for job in part_jobs]
        grids.sort(key=lambda grid: config["methods"][method]["rank"].index(grid["rank"][0]))
        if part_jobs:
            assert [rank for grid in grids for rank in grid["rank"]] == config["methods"][method]["rank"]
            assert all(grid["lam"] == config["methods"][method]["lam"] for grid in grids)
    combines = [job for job in jobs if job["rule"] == "combine_sweep"]
    split = {job["wildcards"]["method"] for job in jobs if job["rule"] == "merge_eval_part"}
    assert split >= ({"cart", "lowrank_ta"} if parts > 1 else set())
    assert {job["wildcards"]["method"] for job in combines} == split
    for job in combines:
        method = job["wildcards"]["method"]
        count = sum(part["rule"] == "merge_eval_part" and part["wildcards"]["method"] == method for part in jobs)
        assert count == parts or method not in ("cart", "lowrank_ta")
        tables = re.search(r"--parts (.*?) --parts-correct (.*?) --out", job["shell"])
        folder = f"results/{config['benchmark']}/{config['model']['name']}/eval/parts/{method}"
        assert tables.group(1).split() == [f"{folder}/{i}.csv" for i in range(1, count + 1)]
        assert tables.group(2).split() == [f"{folder}/{i}.correct.safetensors" for i in range(1, count + 1)]


def test_a_lower_runtime_limit_cuts_sweeps_finer_and_refuses_a_job_it_cannot_cut(tmp_path):
    config = _load("vit-l-14-14.yaml")
    config["resources"] = {"max_runtime_min": 1000}
    jobs = _jobs(_dry_run(tmp_path, config))
    assert max(job["resources"]["runtime"] for job in jobs if job["rule"] != "all") <= 1000
    # cart and lowrank_ta in 3 parts each, cart+svc's shorter rank list in 2
    assert sum(job["rule"] == "merge_eval_part" for job in jobs) == 3 + 3 + 2
    # adarank's 10,000 adaptation steps are one job that no cut shortens
    config["resources"] = {"max_runtime_min": 900}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "4"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert (
        "adapt_eval {'method': 'adarank'}: 964 min estimated, over resources.max_runtime_min (900)"
        in run.stdout + run.stderr
    )


def test_the_multitask_reference_is_opt_in_and_trains_beside_downloaded_experts(tmp_path):
    text = (PAPER / "vit-b-32-8.yaml").read_text()
    assert "# Set true for the multi-task reference row" in text and "8 × 2000 = 16000 steps of 128 images" in text
    config = _load("vit-b-32-8.yaml")
    assert config["multitask"] is False and config["finetuned"]["source"] == "tall_masks"
    config["multitask"] = True
    output = _dry_run(tmp_path, config)
    counts = _job_counts(output)
    assert counts["finetune_multitask"] == 1 and counts["fetch_finetuned"] == 8 and "finetune" not in counts
    [job] = [job for job in _jobs(output) if job["rule"] == "finetune_multitask"]
    expected = "mergeflow finetune-multitask --model-dir results/models/ViT-B-32 --tasks " + " ".join(config["tasks"])
    assert job["shell"].startswith(f"{expected} --heads results/heads/ViT-B-32/SUN397.safetensors")
    assert "--steps 2000 --batch-size 128 --micro-batch-size 128 --lr 1e-05" in job["shell"]
    assert "--shipped" not in job["shell"] and job["resources"]["gpu"] == 1 and job["resources"]["runtime"] == 114
    # The multi-task job trains on the train splits, which downloaded experts alone would not need.
    assert "--no-train" not in output
    [evaluate] = [job for job in _jobs(output) if job["rule"] == "evaluate_reference"]
    assert " --multitask results/finetuned/ViT-B-32/multitask/paper8.safetensors --out " in evaluate["shell"]
    # As the generated comment says, ViT-L-14 on 14 tasks needs a higher runtime limit: one job cannot be cut.
    config = _load("vit-l-14-14.yaml")
    assert "one job that requests 1522 min: over resources.max_runtime_min's default 1440" in (
        (PAPER / "vit-l-14-14.yaml").read_text()
    )
    config["multitask"] = True
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "4"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "finetune_multitask {'model': 'ViT-L-14'}: 1522 min estimated, over resources.max_runtime_min (1440)" in (
        run.stdout + run.stderr
    )
