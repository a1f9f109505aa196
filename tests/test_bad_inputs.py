"""Bad files given to the `mergeflow` verbs: each is refused with a message naming the file, key or shape,
exit status 2, and no output. The fixture is real: the shipped tiny θ_0, tiny data, a zero-shot head."""

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mergeflow.commands.main import main
from mergeflow.io import load_state_dict, save_state_dict

REPO = Path(__file__).resolve().parent.parent
TASK = "shapes"


def mergeflow(*argv: str) -> int:
    return main([*argv, "--no-progress"] if argv[0] not in ("merge", "install-pretrained") else list(argv))


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("good")
    assert (
        mergeflow(
            "install-pretrained", "--shipped", str(REPO / "resources" / "tiny-clip"), "--out", str(root / "model")
        )
        == 0
    )
    assert mergeflow("prepare-data", "--task", TASK, "--image-size", "32", "--out", str(root / "data"),
                     "--train-size", "60", "--test-size", "20", "--domain-style", "1.0") == 0  # fmt: skip
    assert mergeflow("build-head", "--model-dir", str(root / "model"), "--data-dir", str(root / "data"),
                     "--out", str(root / "head.safetensors"), "--device", "cpu") == 0  # fmt: skip
    pretrained = load_state_dict(root / "model" / "pretrained.safetensors")
    generator = torch.Generator().manual_seed(0)
    for index in range(2):
        noisy = {key: value + 1e-3 * torch.randn(value.shape, generator=generator) for key, value in pretrained.items()}
        save_state_dict(root / f"ft{index}.safetensors", noisy, {"model": "tiny-clip", "task": TASK})
    return root


def case_copy(good: Path, tmp_path: Path) -> Path:
    shutil.copytree(good, tmp_path / "case")
    return tmp_path / "case"


def eval_args(root: Path, verb: str, out: Path) -> list[str]:
    args = [verb, "--model-dir", str(root / "model"), "--tasks", TASK, "--heads", str(root / "head.safetensors"),
            "--data", str(root / "data"), "--finetuned", str(root / "ft0.safetensors"), "--out", str(out),
            "--correct", str(out.with_name(out.stem + ".correct.safetensors")), "--device", "cpu"]  # fmt: skip
    if verb == "merge-eval":
        args += ["--method", "task_arithmetic", "--grid", '{"lam": [0.3]}', "--reference", str(root / "reference.csv")]
    return args


def merge_args(root: Path, out: Path) -> list[str]:
    pretrained, finetuned = (
        root / "model" / "pretrained.safetensors",
        [root / "ft0.safetensors", root / "ft1.safetensors"],
    )
    return ["merge", "--method", "task_arithmetic", "--pretrained", str(pretrained),
            "--finetuned", *map(str, finetuned), "--output", str(out)]  # fmt: skip


def finetune_args(root: Path, out: Path) -> list[str]:
    return ["finetune", "--model-dir", str(root / "model"), "--head", str(root / "head.safetensors"),
            "--data-dir", str(root / "data"), "--steps", "1", "--batch-size", "4", "--lr", "1e-4", "--out", str(out),
            "--device", "cpu"]  # fmt: skip


def edit_tensors(path: Path, change: Callable[[dict], None]) -> None:
    tensors = load_state_dict(path) if "nan" not in path.name else {}
    change(tensors)
    save_state_dict(path, tensors, {"model": "tiny-clip", "task": TASK})


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def nan_in_first_matrix(path: Path) -> None:
    tensors = load_state_dict(path)
    key = "transformer.resblocks.0.attn.in_proj_weight"
    tensors[key][0, 0] = float("nan")
    # Written without our loader's check: the file a broken training run would leave.
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def labels_out_of_range(root: Path) -> None:
    labels = np.load(root / "data" / "test_labels.npy")
    labels[3] = 99
    np.save(root / "data" / "test_labels.npy", labels)


def empty_test_split(root: Path) -> None:
    np.save(root / "data" / "test_images.npy", np.zeros((0, 32, 32, 3), dtype=np.uint8))
    np.save(root / "data" / "test_labels.npy", np.zeros((0,), dtype=np.int64))


def head_with_classes(count: int | None = None, dim: int | None = None) -> Callable[[Path], None]:
    """Replace the head's weight by one of `count` classes and `dim` features (None: keep the head's)."""

    def edit(root: Path) -> None:
        head = load_state_dict(root / "head.safetensors")
        rows, columns = head["weight"].shape
        head["weight"] = torch.randn(count or rows, dim or columns)
        save_state_dict(root / "head.safetensors", head)

    return edit


def decompose_args(root: Path, out: Path) -> list[str]:
    return ["decompose", "--pretrained", str(root / "model" / "pretrained.safetensors"), "--finetuned",
            str(root / "ft0.safetensors"), str(root / "ft1.safetensors"), "--kind", "centered", "--out", str(out),
            "--device", "cpu"]  # fmt: skip


def adapt_args(root: Path, out: Path) -> list[str]:
    settings = '{"steps": 1, "batch_size": 4}'
    args = eval_args(root, "adapt-eval", out)
    learned, entropy = out.parent / "learned.safetensors", out.parent / "entropy.csv"
    args += ["--method", "adamerging", "--settings", settings, "--reference", str(root / "reference.csv"),
             "--learned", str(learned), "--entropy", str(entropy)]  # fmt: skip
    return args


# name: (break the copied fixture, the verb's arguments for that copy and an output path, message fragments)
CASES = {
    "NaN in a fine-tuned encoder (decompose)": (
        lambda r: nan_in_first_matrix(r / "ft1.safetensors"),
        decompose_args,
        ["ft1.safetensors", "transformer.resblocks.0.attn.in_proj_weight"],
    ),
    "wrong architecture (decompose)": (
        lambda r: edit_tensors(r / "ft1.safetensors", lambda t: t.update(proj=torch.zeros(3, 3))),
        decompose_args,
        ["ft1.safetensors: key 'proj' has shape [3, 3], but", "pretrained.safetensors has [128, 64]"],
    ),
    "labels out of range (adapt-eval)": (
        labels_out_of_range,
        adapt_args,
        ["test_labels.npy", "[0, 99]"],
    ),
    "head class count differs from the data (adapt-eval)": (
        head_with_classes(3),
        adapt_args,
        ["head.safetensors: head has 3 classes"],
    ),
    "reference table without its individual column (merge-eval)": (
        lambda r: (r / "reference.csv").write_text("task,split,zeroshot\nshapes,val,0.5\n"),
        lambda r, out: eval_args(r, "merge-eval", out),
        ["reference.csv: missing column(s) 'individual'"],
    ),
    "data directory without its class names (build-head)": (
        lambda r: (r / "data" / "classnames.json").unlink(),
        lambda r, out: [
            "build-head",
            "--model-dir",
            str(r / "model"),
            "--data-dir",
            str(r / "data"),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],  # fmt: skip
        ["classnames.json: file not found"],
    ),
    "truncated pretrained (merge)": (
        lambda r: truncate(r / "model" / "pretrained.safetensors"),
        merge_args,
        ["pretrained.safetensors"],
    ),
    "truncated fine-tuned (evaluate-reference)": (
        lambda r: truncate(r / "ft0.safetensors"),
        lambda r, out: eval_args(r, "evaluate-reference", out),
        ["ft0.safetensors"],
    ),
    "corrupt header (merge)": (
        lambda r: (r / "ft1.safetensors").write_bytes(b"\xff" * 64),
        merge_args,
        ["ft1.safetensors"],
    ),
    "wrong architecture (merge)": (
        lambda r: edit_tensors(r / "ft1.safetensors", lambda t: t.update(proj=torch.zeros(3, 3))),
        merge_args,
        ["proj", "[3, 3]"],
    ),
    "wrong architecture (merge-eval)": (
        lambda r: edit_tensors(r / "ft0.safetensors", lambda t: t.update(proj=torch.zeros(3, 3))),
        lambda r, out: eval_args(r, "merge-eval", out),
        ["ft0.safetensors: key 'proj' has shape [3, 3]"],
    ),
    "missing key (merge)": (
        lambda r: edit_tensors(r / "ft1.safetensors", lambda t: t.pop("ln_post.bias")),
        merge_args,
        ["ln_post.bias"],
    ),
    "extra key (merge)": (
        lambda r: edit_tensors(r / "ft1.safetensors", lambda t: t.update(extra=torch.zeros(2))),
        merge_args,
        ["extra"],
    ),
    "NaN in a fine-tuned encoder (merge-eval)": (
        lambda r: nan_in_first_matrix(r / "ft0.safetensors"),
        lambda r, out: eval_args(r, "merge-eval", out),
        ["ft0.safetensors", "transformer.resblocks.0.attn.in_proj_weight"],
    ),
    "NaN in θ_0 (finetune)": (
        lambda r: nan_in_first_matrix(r / "model" / "pretrained.safetensors"),
        finetune_args,
        ["pretrained.safetensors", "transformer.resblocks.0.attn.in_proj_weight"],
    ),
    "labels out of range (evaluate-reference)": (
        labels_out_of_range,
        lambda r, out: eval_args(r, "evaluate-reference", out),
        ["test_labels.npy", "[0, 99]", "classnames.json"],
    ),
    "empty split (evaluate-reference)": (
        empty_test_split,
        lambda r, out: eval_args(r, "evaluate-reference", out),
        ["the test split is empty"],
    ),
    "data directory missing a file (merge-eval)": (
        lambda r: (r / "data" / "val_images.npy").unlink(),
        lambda r, out: eval_args(r, "merge-eval", out),
        ["val_images.npy: file not found"],
    ),
    "corrupt .npy (evaluate-reference)": (
        lambda r: (r / "data" / "val_labels.npy").write_bytes(b"not an array"),
        lambda r, out: eval_args(r, "evaluate-reference", out),
        ["val_labels.npy: not a readable .npy array"],
    ),
    "head class count differs from the data (evaluate-reference)": (
        head_with_classes(3),
        lambda r, out: eval_args(r, "evaluate-reference", out),
        ["head.safetensors: head has 3 classes", "classnames.json"],
    ),
    "head class count differs from the data (finetune)": (
        head_with_classes(3),
        finetune_args,
        ["head.safetensors: head has 3 classes"],
    ),
    "head of another model (merge-eval)": (
        head_with_classes(dim=48),
        lambda r, out: eval_args(r, "merge-eval", out),
        ["head of shape", "48", "rebuild the head"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_by_name_with_no_output(good: Path, tmp_path: Path, case: str, caplog, capsys) -> None:
    root = case_copy(good, tmp_path)
    if "merge-eval" in case or "adapt-eval" in case:
        assert mergeflow(*eval_args(root, "evaluate-reference", root / "reference.csv")) == 0
    breaker, arguments, fragments = CASES[case]
    breaker(root)
    out = tmp_path / "out" / "result"
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="mergeflow"):
        assert mergeflow(*arguments(root, out)) == 2
    logged = " ".join(record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR)
    message = logged + capsys.readouterr().err
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert not out.exists()
    assert not (out.parent.exists() and any(out.parent.iterdir()))
