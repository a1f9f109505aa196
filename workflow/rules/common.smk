# Paths and parameters shared by every rule. Outputs are keyed by what they depend on:
# models, heads and fine-tuned encoders by model; evaluations and tables by model and benchmark.
import json
import os
import re
import shlex
import sys

from mergeflow.dag.resources import adaptation_passes, job_resources, sweep_parts, sweep_passes
from mergeflow.adaptive.settings import is_adaptive
from mergeflow.merging.entries import base_method, factor_kind
from mergeflow.merging.registry import METHODS as MERGE_METHODS

MODEL = config["model"]["name"]
MODEL_SOURCE = config["model"]["source"]
FINETUNED = config["finetuned"]
HUB_CACHE = config["hub"]["cache_dir"]
TASKS = list(config["tasks"])
BENCHMARK = config["benchmark"]
METHODS = list(config["methods"])
STATIC_METHODS = [method for method in METHODS if not is_adaptive(method)]
ADAPTIVE_ENTRIES = [method for method in METHODS if is_adaptive(method)]
RESULTS = "results"
SUITE = f"{RESULTS}/{BENCHMARK}/{MODEL}"
# Methods that read training images (RegMean, RegMean++, Fisher): the data stage's statistics, or the images.
DATA_METHODS = [method for method in STATIC_METHODS if MERGE_METHODS[base_method(method)].needs == "training_data"]
# One more encoder fine-tuned on all tasks at once (by finetune_multitask), the tables' multi-task reference row.
MULTITASK = config["multitask"]
WRITES_TRAIN = (
    config["data"]["source"] == "tiny" or FINETUNED["source"] == "finetune" or MULTITASK or bool(DATA_METHODS)
)
TASK_STATISTICS = config["task_statistics"]


wildcard_constraints:
    task="|".join(TASKS),
    method="|".join(re.escape(method) for method in METHODS),
    model=MODEL,
    kind="centered|original",
    statistic="grams|fisher",


def data_dir(task):
    return f"{RESULTS}/data/{task}"


def data_marker(task):
    # classnames.json is written last by prepare_data, so it marks a complete task directory.
    return f"{data_dir(task)}/classnames.json"


def model_dir():
    return f"{RESULTS}/models/{MODEL}"


def head_path(task):
    return f"{RESULTS}/heads/{MODEL}/{task}.safetensors"


def finetuned_path(task):
    return f"{RESULTS}/finetuned/{MODEL}/{task}.safetensors"


def multitask_path():
    return f"{RESULTS}/finetuned/{MODEL}/multitask/{BENCHMARK}.safetensors"


def log_path(rule_name, name):
    return f"{RESULTS}/logs/{rule_name}/{name}.log"


def benchmark_path(rule_name, name):
    return f"{RESULTS}/benchmarks/{rule_name}/{name}.tsv"


def as_json(value):
    """Parameters passed to `mergeflow` as JSON; also what Snakemake compares to decide on reruns."""
    return json.dumps(value, sort_keys=True)


# A GPU job asks the scheduler for one GPU (`--resources gpu=N` on a workstation, a SLURM GPU on a cluster);
# with `device: cpu` nothing asks for one.
GPUS_PER_JOB = 0 if config["device"] == "cpu" else 1
SCALE_MODEL = config["model"].get("open_clip", {}).get("name", MODEL)


# No job asks for more wall time than this (`resources.max_runtime_min`; a day, the longest many SLURM partitions
# allow). A merge_eval sweep that would is split by rank into jobs of its own whose tables rule combine_sweep joins.
MAX_RUNTIME_MIN = config["resources"]["max_runtime_min"]


def planned_sweep_parts():
    """Each static method's merge_eval grids: its own grid, or the parts of its rank list (mergeflow.dag.resources)."""
    parts = {}
    for method in STATIC_METHODS:
        try:
            parts[method] = sweep_parts(config["methods"][method], SCALE_MODEL, len(TASKS), MAX_RUNTIME_MIN)
        except ValueError as err:
            print(f"methods.{method}: {err} (resources.max_runtime_min)", file=sys.stderr)
            sys.exit(1)
    return parts


SWEEP_PARTS = planned_sweep_parts()
SPLIT_SWEEPS = [method for method, parts in SWEEP_PARTS.items() if len(parts) > 1]
WHOLE_SWEEPS = [method for method, parts in SWEEP_PARTS.items() if len(parts) == 1]


def sweep_grid(wildcards):
    """The grid a job sweeps: a part of its method's grid for a `part` job, else the method's whole grid."""
    if "part" in wildcards.keys():
        return SWEEP_PARTS[wildcards.method][int(wildcards.part) - 1]
    return config["methods"][wildcards.method]


def sweep_part_files(method, suffix):
    """combine_sweep's inputs: one file per part of a split sweep (`csv`, `correct.safetensors`), in rank order."""
    return [f"{SUITE}/eval/parts/{method}/{index}.{suffix}" for index in range(1, len(SWEEP_PARTS[method]) + 1)]


def scaled(rule_name, key):
    """A resource of `rule_name`'s jobs (mem_mb or runtime), from mergeflow.dag.resources."""

    def value(wildcards):
        grid = sweep_grid(wildcards) if rule_name in ("merge_eval", "adapt_eval") else None
        # The multi-task job's length is the finetune block's steps and batch size, times the tasks.
        grid = config["finetune"] if rule_name == "finetune_multitask" else grid
        request = job_resources(rule_name, SCALE_MODEL, len(TASKS), grid)
        if request["runtime"] > MAX_RUNTIME_MIN:
            raise ValueError(
                f"{rule_name} {dict(wildcards.items())}: {request['runtime']} min estimated, over "
                f"resources.max_runtime_min ({MAX_RUNTIME_MIN}); raise the limit or shorten the job's settings"
            )
        return request[key]

    return value


def shipped_pretrained():
    """The shipped θ_0 directory (`model.shipped`) when its recipe is this config's, else None (pre-train)."""
    shipped = config["model"].get("shipped")
    if MODEL_SOURCE != "pretrain" or not shipped:
        return None
    from mergeflow.shipped.theta0 import unmatched_settings

    directory = shipped if os.path.isabs(shipped) else os.path.join(workflow.basedir, shipped)
    differences = unmatched_settings(directory, config)
    if differences:
        print(f"θ_0: pre-training, as the config differs from the shipped {shipped} in {differences}", file=sys.stderr)
        return None
    return directory


SHIPPED_PRETRAINED = shipped_pretrained()


def shipped_finetuned_dir():
    """The folder of shipped fine-tuned encoders (`finetune.shipped`), or None to always fine-tune."""
    shipped = config.get("finetune", {}).get("shipped")
    if not shipped:
        return None
    return shipped if os.path.isabs(shipped) else os.path.join(workflow.basedir, shipped)


SHIPPED_FINETUNED = shipped_finetuned_dir()


def shipped_finetuned_files(wildcards):
    """A task's shipped encoder and recipe, when shipped: inputs, so a re-shipped file reruns its job."""
    if SHIPPED_FINETUNED is None:
        return []
    files = [os.path.join(SHIPPED_FINETUNED, f"{wildcards.task}.{ext}") for ext in ("json", "safetensors")]
    return [path for path in files if os.path.exists(path)]


def shipped_multitask_files():
    """This benchmark's shipped multi-task encoder and recipe, when shipped: inputs, as for the tasks' encoders."""
    if SHIPPED_FINETUNED is None:
        return []
    # mergeflow.shipped.finetuned.multitask_dir, spelled out: importing that module would import torch here.
    folder = os.path.join(SHIPPED_FINETUNED, "multitask")
    files = [os.path.join(folder, f"{BENCHMARK}.{ext}") for ext in ("json", "safetensors")]
    return [path for path in files if os.path.exists(path)]


def shipped_finetuned_flag():
    return f"--shipped {shlex.quote(SHIPPED_FINETUNED)}" if SHIPPED_FINETUNED else ""


def evaluation_flags():
    evaluation = config["evaluation"]
    return (
        f"--batch-size {evaluation['batch_size']} --precision {evaluation['precision']}"
        f" --resident-mb {evaluation['resident_mb']}"
    )


# One warm process forks every job of a local run (mergeflow.shell.job_server); cluster jobs start on their own.
JOB_SERVERS = []


def start_job_server():
    if config["job_server"] and workflow.local_exec and not workflow.remote_exec:
        from mergeflow.shell.job_server import start

        # Waiting (about 5 s, once) lets every job of the run be forked, the first ones included.
        JOB_SERVERS.append(start(timeout_s=60))


def stop_job_servers():
    from mergeflow.shell.job_server import stop_server

    while JOB_SERVERS:
        stop_server(JOB_SERVERS.pop())


def device_flag():
    return f"--device {config['device']}"


def image_size():
    """The resolution prepare_data stores: the tiny architecture's, or the open_clip model's (224)."""
    if MODEL_SOURCE == "pretrain":
        return config["model"]["architecture"]["image_size"]
    return config["model"]["image_size"]


def pretrain_tasks():
    """The tiny tasks θ_0 is pre-trained on: `pretrain.tasks`, by default the benchmark's own."""
    return config["pretrain"].get("tasks", TASKS)


def hub_cache_flag():
    return f"--cache-dir {HUB_CACHE}" if HUB_CACHE else ""


def data_source_flags():
    """prepare-data options of the configured source; they are params, so changing one reruns the data."""
    data = config["data"]
    if data["source"] == "tiny":
        return (
            f"--train-size {data['train_size']} --test-size {data['test_size']} --seed {data['seed']}"
            f" --domain-style {data['domain_style']} --split-shift {data['split_shift']}"
            + (f" --val-size {data['val_size']}" if "val_size" in data else "")
        )
    flags = [] if WRITES_TRAIN else ["--no-train"]
    if data["source"] != "huggingface":
        flags.append(f"--root {shlex.quote(data.get('root', f'{RESULTS}/downloads/torchvision'))}")
    if data["source"] in ("huggingface", "experts"):
        flags += [f"--revision {data['revision']}", f"--emnist-split {data['emnist_split']}"]
        flags.append(hub_cache_flag())
    return " ".join(flag for flag in flags if flag)


def data_splits():
    """The splits prepare_data writes: train only where a job fine-tunes (tiny always: its recipes hash train)."""
    return ("train", "val", "test") if WRITES_TRAIN else ("val", "test")


def head_class_texts():
    """build-head's --class-texts: the experts' code's strings for experts it trained, else the prepared data's."""
    from mergeflow.image_tasks.provenance import head_texts_for

    choice = config["heads"]["class_texts"]
    if choice == "auto":
        choice = "experts" if head_texts_for(FINETUNED["source"]) == "experts" else "data"
    return choice


def task_inputs():
    """Named inputs of the rules that evaluate all tasks together, in the configured task order."""
    return {
        "model": f"{model_dir()}/pretrained.safetensors",
        "heads": [head_path(t) for t in TASKS],
        "data": [data_marker(t) for t in TASKS],
        "finetuned": [finetuned_path(t) for t in TASKS],
    }


def task_flags():
    return (
        f"--model-dir {model_dir()} --tasks {' '.join(TASKS)} "
        f"--heads {' '.join(head_path(t) for t in TASKS)} "
        f"--data {' '.join(data_dir(t) for t in TASKS)} "
        f"--finetuned {' '.join(finetuned_path(t) for t in TASKS)}"
    )


# Above every sweep's priority (its length in val passes): a job that should start as soon as it is ready (a short
# figure job, the long multi-task fine-tune and the data and heads it waits on) runs then.
START_WHEN_READY_PRIORITY = 10000


def adaptation_priority(wildcards):
    """An adapt_eval job's length in val passes, as merge_eval's priority counts them (mergeflow.dag.resources)."""
    return adaptation_passes(config["methods"][wildcards.method])


def sweep_priority(wildcards):
    """A merge_eval job's length in val passes (mergeflow.dag.resources.sweep_passes): longest first."""
    return sweep_passes(wildcards.method, sweep_grid(wildcards))


def one_of(names):
    """A wildcard constraint matching exactly these names (never an empty pattern)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def cart_eval_input(wildcards):
    """cart's evaluation, when an adaptive method takes a setting "selected" from it."""
    selected = "selected" in config["methods"][wildcards.method].values()
    return {"cart": f"{SUITE}/eval/cart.csv"} if selected and "cart" in METHODS else {}


def statistics_path(task, kind):
    return f"{RESULTS}/statistics/{MODEL}/{task}/{kind}.safetensors"


def statistics_inputs(wildcards):
    """The data stage's files a method reads, one per task (regmean: grams, fisher: fisher; none for others)."""
    kind = MERGE_METHODS[base_method(wildcards.method)].task_statistics if wildcards.method in STATIC_METHODS else None
    return {"statistics": [statistics_path(task, kind) for task in TASKS]} if kind else {}


def training_image_flags():
    """How many training images a data stage job (and RegMean++) draws per task, with which seed and batch size."""
    return (
        f"--images {TASK_STATISTICS['images']} --seed {TASK_STATISTICS['seed']}"
        f" --batch-size {TASK_STATISTICS['batch_size']}"
    )


def merge_training_flags(method):
    """merge-eval's training-image sample, for the method that merges through the models on them (RegMean++)."""
    if method not in STATIC_METHODS or not MERGE_METHODS[base_method(method)].reads_training_images:
        return ""
    return (
        f"--training-images {TASK_STATISTICS['images']} --training-seed {TASK_STATISTICS['seed']}"
        f" --training-batch-size {TASK_STATISTICS['batch_size']}"
    )


def factor_inputs(wildcards):
    """The cached SVD factors a spectral method's sweep reuses (none for the other methods)."""
    kind = factor_kind(wildcards.method)
    return {"factors": f"{RESULTS}/svd/{MODEL}/{BENCHMARK}/{kind}.safetensors"} if kind else {}


def final_outputs():
    outputs = [f"{SUITE}/tables/main.{ext}" for ext in ("csv", "md", "tex")]
    outputs += [f"{SUITE}/figures/{stem}.{ext}" for stem in ("rank_sweep", "per_task") for ext in ("png", "pdf")]
    if "cart" in METHODS:
        outputs += [f"{SUITE}/figures/cart_lambda_rank.{ext}" for ext in ("png", "pdf")]
    for method in ADAPTIVE_ENTRIES:
        figures = ("coefficients", "kept_rank") if base_method(method) == "adarank" else ("coefficients",)
        outputs += [f"{SUITE}/figures/{method}_{figure}.{ext}" for figure in figures for ext in ("png", "pdf")]
    # The spectra need both kinds of SVD factors; they are only asked for when the methods compute both anyway
    # (cart: centered; lowrank_ta, tsv_m: original), as decomposing a ViT-L/14 just for a figure is costly.
    if {factor_kind(method) for method in METHODS} >= {"centered", "original"}:
        outputs.append(f"{SUITE}/tables/spectrum.csv")
        stems = ("spectrum_energy", "spectrum_error_interference")
        outputs += [f"{SUITE}/figures/{stem}.{ext}" for stem in stems for ext in ("png", "pdf")]
    return outputs
