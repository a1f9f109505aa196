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
- task_vectors (github.com/mlfoundations/task_vectors @ 826a64c67082fab0f40628233287948f0f8d7fa3): README.md L70-72
  points to a Google Drive folder of ViT-B-32, ViT-B-16 and ViT-L-14 checkpoints for the 8 tasks, and its example
  (L90-92) reads `checkpoints/<model>/zeroshot.pt` and `checkpoints/<model>/<Task>/finetuned.pt`; the fine-tuning
  script itself writes `<model>/<Task>Val/finetuned.pt` and `.../zeroshot.pt` (src/finetune.py L20, L70, L114-116),
  so both layouts are tried. Each file is `torch.save(image_encoder.cpu())` (src/utils.py L49-52): a pickled
  whole `src.modeling.ImageEncoder` whose `.model` is the open_clip CLIP (src/modeling.py L8-24), hence the
  `model.visual.*` keys once flattened (checkpoints.module_pickle). The Drive folder cannot be fetched
  reproducibly (no content hashes, rate-limited), so the source reads the directory the user downloaded it to.
- CART authors (`JH-C-k/ViT-B-32`), from github.com/JH-GEECS/CART @ 964cfd78cde5facd84ae1d0af94f2dd4438fde73.
  Verified in that code: README.md L38 says to download `JH-C-k/ViT-B-32` into `/workspace/weight/checkpoints`;
  README.md L42-44 says the 8-task experts are the task_vectors release and the 12 added tasks' are TALL masks';
  `src/merging.py: load_model` (L322-356) reads `<weight_root>/<Task>Val/nonlinear_finetuned.pt`, or
  `<weight_root>_TA/<Task>/finetuned.pt` for the 8 tasks when `TA_mode` is set (`src/utils.py` L115-143), and uses
  what `torch.load` returns as a state dict; the shipped configs (`configs/CART/ViT-b-32_*_CART.yaml`) set
  `TA_mode: False` and `weight_root: .../checkpoints/ViT-B-32`. Downloaded into `checkpoints/` and read from
  `checkpoints/ViT-B-32/`, the repository must hold `ViT-B-32/<Task>Val/nonlinear_finetuned.pt`, tried first;
  `TaskVector` (src/models/task_vectors.py L31-52) indexes each file by every key of the zero-shot ImageEncoder's
  state dict, so the files are ImageEncoder state dicts (`model.visual.*`). Not seen, because the hub listing
  cannot be read from here: whether the upload kept that folder (a root-level `<Task>Val/` is tried second),
  and whether a `JH-C-k/ViT-L-14` repository exists (the README names only ViT-B-32). Pattern and key prefix
  are therefore configurable.
- FusionBench (`tanganke/clip-vit-{base-patch32,base-patch16,large-patch14}_<slug>`): slugs from
  `config/modelpool/CLIPVisionModelPool/clip-vit-base-patch32_TALL20_model_only.yaml` (and the patch16 /
  large-patch14 TALL20 configs) in github.com/tanganke/fusion_bench; each repository holds a transformers
  `CLIPVisionModel` (`config.json`, `model.safetensors`).

Hub revisions. Every hub download names a revision; without `finetuned.revision` (or `model.open_clip.revision`)
it is `default_revision(repo_id)`: the full commit below where a public page showed one, else `main`. Either way
the record written next to the result holds the revision asked for and the commit the hub resolved it to.
- nik-dim/tall_masks: the hub tree page showed 13 commits with tip `c8d352f` ("updated zeroshot"), after the
  December 2024 re-release that fixed the DTD split (github.com/nik-dim/tall_masks issue #1), but never the full
  hash; the only full hash seen, 0e3d0de6bc834f04529136a5a87027ab3ecbebc8 ("Added Tall masks checkpoints"), adds
  the mask files and is not known to hold the re-released single-task checkpoints. Default: `main`. No hub
  revision is known to hold the checkpoints from before the fix (those were on Google Drive), so none is refused.
- JH-C-k/ViT-B-32, JH-C-k/ViT-L-14: no page seen. Default: `main`.
- FusionBench: one of the 60 repositories' commits was seen in full (below). Others: `main`.
- open_clip's OpenAI weights (timm/*.openai): ViT-B-32's tree at ab5b8ef490e86faa07d3523926b842c765de1de5
  ("Add model") lists open_clip_config.json and open_clip_model.safetensors. For ViT-L-14 only commits from before
  open_clip's files were added were seen (46ce2a8, 98449f6, c869ee2: pytorch_model.bin only), for ViT-B-16 none.
  Default for those two: `main`.
"""

from __future__ import annotations

from mergeflow.image_tasks.registry import TASKS_8, TASKS_20

TASKS: tuple[str, ...] = TASKS_20

# The config keys each `finetuned.source` reads besides `source` and `allow_pickle` (checkpoints.sources).
SOURCE_KEYS: dict[str, frozenset[str]] = {
    "finetune": frozenset(),
    "tall_masks": frozenset({"revision", "repo_id"}),
    "task_vectors": frozenset({"directory"}),
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

# --- task_vectors (original release) ------------------------------------------------------------------------------
TASK_VECTORS_DRIVE = "https://drive.google.com/drive/folders/1u_Tva6x0p6oxu5Eo0ZZsf-520Cc_3MKw"
TASK_VECTORS_TASKS: tuple[str, ...] = TASKS_8
TASK_VECTORS_MODELS: tuple[str, ...] = ("ViT-B-32", "ViT-B-16", "ViT-L-14")
TASK_VECTORS_PATTERNS: tuple[str, ...] = ("{model}/{task}/finetuned.pt", "{model}/{task}Val/finetuned.pt")
TASK_VECTORS_ZEROSHOT: tuple[str, ...] = ("{model}/zeroshot.pt", "{model}/{task}Val/zeroshot.pt")

# --- CART authors' re-uploads -----------------------------------------------------------------------------------
CART_REPOS: dict[str, str] = {"ViT-B-32": "JH-C-k/ViT-B-32", "ViT-L-14": "JH-C-k/ViT-L-14"}
CART_PATTERNS: tuple[str, ...] = ("{model}/{task}Val/nonlinear_finetuned.pt", "{task}Val/nonlinear_finetuned.pt")

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

# --- which experts a source serves --------------------------------------------------------------------------------
# The names published.csv's `experts` column uses. A source serves its own experts, except the CART authors'
# re-uploads, which the CART README says are task_vectors' for the 8 tasks and TALL masks' for the 12 added ones.
EXPERTS_ORDER: tuple[str, ...] = ("task_vectors", "tall_masks")


def expert_origin(source: str, task: str) -> str:
    """Whose fine-tuned encoder `source` serves for `task` (`finetune`: trained by this pipeline)."""
    if source == "cart_authors":
        return "task_vectors" if task in TASK_VECTORS_TASKS else "tall_masks"
    return source


# --- hub revisions --------------------------------------------------------------------------------------------------
DEFAULT_BRANCH = "main"
PINNED_COMMITS: dict[str, str] = {
    "timm/vit_base_patch32_clip_224.openai": "ab5b8ef490e86faa07d3523926b842c765de1de5",
    "tanganke/clip-vit-base-patch16_dtd": "5d2d508b4bba668b6c1e9fefd53f5f9b4ad9de08",
}


def default_revision(repo_id: str) -> str:
    """The revision a hub download asks for when the config names none: a pinned commit, else the branch."""
    return PINNED_COMMITS.get(repo_id, DEFAULT_BRANCH)
