"""Where each published source keeps the fine-tuned encoder of a (model, task), in our task and model names.

Our task names are those of docs/methods.md (the TALL-masks 20-task suite); models are open_clip names. Facts and
where they were read (so that a renamed upstream file can be traced back):

- TALL masks (`nik-dim/tall_masks` on the Hugging Face hub): `single_task/<model>/<Task>Val/nonlinear_finetuned.pt`.
  Task folders are the dataset names of `src/utils/variables_and_paths.py` (ALL_DATASETS) in github.com/nik-dim/
  tall_masks plus "Val" (`cleanup_dataset_name`); they equal our task names. Each file is
  `torch.save(ImageEncoder.state_dict())` (`src/utils/utils.py: torch_save`), ImageEncoder holding the open_clip
  CLIP as `self.model`, hence keys `model.visual.*` (plus `model.logit_scale` and other non-visual keys). The hub
  page lists only OrderedDict / FloatStorage / _rebuild_tensor_v2 pickle imports: a plain state dict. The hub tree
  showed the ViT-B-16 folder spelled `VIT-B-16`; both spellings are tried.
- CART authors (`JH-C-k/ViT-B-32`, `JH-C-k/ViT-L-14`): github.com/JH-GEECS/CART loads
  `<weight_root>/<Task>Val/nonlinear_finetuned.pt` with `weight_root: .../checkpoints/ViT-B-32` and the README says
  to place the hub repository in `.../checkpoints`, so the repository root most likely holds `<Task>Val/...`;
  the files are indexed as state dicts of the same ImageEncoder (`model.visual.*`). The hub listing itself was
  not seen: the pattern and key prefix are configurable.
- FusionBench (`tanganke/clip-vit-{base-patch32,base-patch16,large-patch14}_<slug>`): slugs from
  `config/modelpool/CLIPVisionModelPool/clip-vit-base-patch32_TALL20_model_only.yaml` (and the patch16 /
  large-patch14 TALL20 configs) in github.com/tanganke/fusion_bench; each repository holds a transformers
  `CLIPVisionModel` (`config.json`, `model.safetensors`).
"""

from __future__ import annotations

from mergeflow.image_tasks.registry import TASKS_20

TASKS: tuple[str, ...] = TASKS_20

# The config keys each `finetuned.source` reads besides `source` and `allow_pickle` (checkpoints.sources).
SOURCE_KEYS: dict[str, frozenset[str]] = {
    "finetune": frozenset(),
    "tall_masks": frozenset({"revision", "repo_id"}),
    "cart_authors": frozenset({"revision", "repo_id", "pattern", "key_prefix"}),
    "fusionbench": frozenset({"revision"}),
    "local": frozenset({"directory", "pattern", "key_prefix"}),
    "url": frozenset({"urls", "key_prefix"}),
}

# --- TALL masks -------------------------------------------------------------------------------------------------
TALL_MASKS_REPO = "nik-dim/tall_masks"
TALL_MASKS_PATTERN = "single_task/{model_dir}/{task_dir}/nonlinear_finetuned.pt"
TALL_MASKS_MODEL_DIRS: dict[str, tuple[str, ...]] = {
    "ViT-B-32": ("ViT-B-32",),
    "ViT-B-16": ("VIT-B-16", "ViT-B-16"),
    "ViT-L-14": ("ViT-L-14",),
}
TALL_MASKS_TASK_DIRS: dict[str, str] = {task: f"{task}Val" for task in TASKS}
IMAGE_ENCODER_PREFIX = "model.visual."  # ImageEncoder.state_dict() of the task_vectors / TALL masks code

# --- CART authors' re-uploads -----------------------------------------------------------------------------------
CART_REPOS: dict[str, str] = {"ViT-B-32": "JH-C-k/ViT-B-32", "ViT-L-14": "JH-C-k/ViT-L-14"}
CART_PATTERNS: tuple[str, ...] = ("{task}Val/nonlinear_finetuned.pt", "{model}/{task}Val/nonlinear_finetuned.pt")

# --- FusionBench --------------------------------------------------------------------------------------------------
FUSIONBENCH_REPO = "tanganke/{hf_model}_{slug}"
FUSIONBENCH_WEIGHTS = "model.safetensors"
FUSIONBENCH_CONFIG = "config.json"
FUSIONBENCH_MODELS: dict[str, str] = {
    "ViT-B-32": "clip-vit-base-patch32",
    "ViT-B-16": "clip-vit-base-patch16",
    "ViT-L-14": "clip-vit-large-patch14",
}
FUSIONBENCH_SLUGS: dict[str, str] = {
    "SUN397": "sun397",
    "Cars": "stanford-cars",
    "RESISC45": "resisc45",
    "EuroSAT": "eurosat",
    "SVHN": "svhn",
    "GTSRB": "gtsrb",
    "MNIST": "mnist",
    "DTD": "dtd",
    "CIFAR100": "cifar100",
    "STL10": "stl10",
    "Flowers102": "oxford_flowers102",
    "OxfordIIITPet": "oxford-iiit-pet",
    "PCAM": "pcam",
    "FER2013": "fer2013",
    "EMNIST": "emnist_letters",
    "CIFAR10": "cifar10",
    "Food101": "food101",
    "FashionMNIST": "fashion_mnist",
    "RenderedSST2": "rendered-sst2",
    "KMNIST": "kmnist",
}
# Recorded with the checkpoint (and warned about): the model does not solve exactly our task.
FUSIONBENCH_CAVEATS: dict[str, str] = {
    "EMNIST": (
        "FusionBench's EMNIST model is fine-tuned on EMNIST 'letters' (26 classes), while the TALL/CART suite "
        "uses the 10-class 'digits' split"
    ),
}
