"""fetch_finetuned against fixtures in the formats the real sources serve, offline (HF_HUB_OFFLINE=1).

Fixtures: a tiny open_clip ViT image encoder is θ_0; θ_t is θ_0 plus noise, saved the way each source publishes
it (TALL masks' `model.visual.*` state dicts under their hub path, FusionBench's transformers CLIPVisionModel
safetensors + config.json, a local directory, a file served over HTTP by a local server).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
import json
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
from open_clip.transformer import QuickGELU, VisionTransformer
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_cache import FIXTURE_COMMIT, write_hub_repo  # noqa: E402

from mergeflow.checkpoints import fetch_finetuned, sha256_file, sidecar_path, tables, transformers_to_open_clip  # noqa: E402
from mergeflow.checkpoints.readers import read_tensors  # noqa: E402
from mergeflow.checkpoints.record import write_encoder  # noqa: E402
from mergeflow.io import InputError, load_state_dict  # noqa: E402
from mergeflow.models.clip import build_clip, tiny_clip_spec  # noqa: E402
from mergeflow.types import StateDict  # noqa: E402

ARCH = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 4, "mlp_ratio": 4.0, "output_dim": 16}
TALL = "nik-dim/tall_masks"
TALL_DTD = "single_task/ViT-B-32/DTDVal/nonlinear_finetuned.pt"
Served = tuple[Path, str, list[str]]  # served directory, base URL, request log


# --- fixtures ------------------------------------------------------------------------------------------------------


def _jitter(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Perturb every parameter (LayerNorms start at exactly 1 and 0, which would hide swapped keys)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return module.eval()


def _open_clip_encoder(seed: int) -> VisionTransformer:
    torch.manual_seed(seed)
    return _jitter(VisionTransformer(**ARCH, act_layer=QuickGELU), seed)


@pytest.fixture(scope="module")
def theta_0() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in _open_clip_encoder(0).state_dict().items()}


@pytest.fixture(scope="module")
def theta_t(theta_0: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in theta_0.items()}


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _image_encoder_state(theta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What TALL masks / CART serve: ImageEncoder.state_dict(), the CLIP under `model.`, text tower partly kept."""
    return {
        **{f"model.visual.{k}": v for k, v in theta.items()},
        "model.logit_scale": torch.tensor(4.6052),
        "model.positional_embedding": torch.randn(77, 16),
        "model.token_embedding.weight": torch.randn(100, 16),
        "model.ln_final.weight": torch.ones(16),
        "model.text_projection": torch.randn(16, 16),
    }


def _hf_config(**overrides: object) -> Any:
    from transformers import CLIPVisionConfig

    settings = {
        "hidden_size": ARCH["width"],
        "intermediate_size": int(ARCH["width"] * ARCH["mlp_ratio"]),
        "num_hidden_layers": ARCH["layers"],
        "num_attention_heads": ARCH["heads"],
        "image_size": ARCH["image_size"],
        "patch_size": ARCH["patch_size"],
        "projection_dim": ARCH["output_dim"],
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }
    return CLIPVisionConfig(**{**settings, **overrides})


def _hf_model(seed: int) -> Any:
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    return _jitter(CLIPVisionModelWithProjection(_hf_config()), seed)


def _fusionbench_files(model: Any, tmp_path: Path, **config_overrides: object) -> dict[str, bytes | Path]:
    """model.safetensors as transformers 4 writes a CLIPVisionModel (`vision_model.*`, no projection) + config."""
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k.startswith("vision_model.")}
    weights = tmp_path / "upload-model.safetensors"
    save_file(state, str(weights), metadata={"format": "pt"})
    config = {**_hf_config(**config_overrides).to_dict(), "architectures": ["CLIPVisionModel"]}
    return {"model.safetensors": weights, "config.json": json.dumps(config).encode()}


def _assert_exactly(path: Path, expected: dict[str, torch.Tensor]) -> None:
    fetched = load_state_dict(path)
    assert list(fetched) == sorted(expected)  # safetensors stores keys sorted
    for key, value in expected.items():
        assert fetched[key].dtype == torch.float32
        assert torch.equal(fetched[key], value.float()), key


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists() and not sidecar_path(out).exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


class _Handler(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """A real HTTP server on 127.0.0.1 serving a directory: (directory, base URL, request log)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = type("Handler", (_Handler,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- the fixture encoder really has open_clip's keys -----------------------------------------------------------------


def test_fixture_encoder_has_the_keys_of_clip_visual(theta_0: dict[str, torch.Tensor]) -> None:
    spec = tiny_clip_spec(
        "tiny",
        {
            "width": ARCH["width"],
            "heads": ARCH["heads"],
            "layers": ARCH["layers"],
            "image_size": ARCH["image_size"],
            "patch_size": ARCH["patch_size"],
            "embed_dim": ARCH["output_dim"],
            "text_width": 16,
            "text_heads": 2,
            "text_layers": 1,
            "context_length": 8,
        },
    )
    visual = build_clip(spec).visual.state_dict()
    assert {k: tuple(v.shape) for k, v in visual.items()} == {k: tuple(v.shape) for k, v in theta_0.items()}


# --- TALL masks ------------------------------------------------------------------------------------------------------


def test_tall_masks_from_the_hub_cache(tmp_path: Path, theta_0: StateDict, theta_t: StateDict) -> None:
    assert huggingface_hub.constants.is_offline_mode()
    served = _torch_bytes(_image_encoder_state(theta_t))
    cache = tmp_path / "hub"
    write_hub_repo(cache, TALL, {TALL_DTD: served})
    out = tmp_path / "finetuned" / "DTD.safetensors"

    record = fetch_finetuned(
        {"source": "tall_masks", "revision": "main", "allow_pickle": False},
        model="ViT-B-32",
        task="DTD",
        pretrained=theta_0,
        out=out,
        cache_dir=str(cache),
        progress=False,
    )

    _assert_exactly(out, theta_t)
    assert record["source"] == "tall_masks" and record["repo_id"] == TALL and record["experts"] == "tall_masks"
    assert record["path_in_repo"] == TALL_DTD and record["revision"] == "main"
    assert record["commit"] == FIXTURE_COMMIT
    assert record["source_sha256"] == hashlib.sha256(served).hexdigest()
    assert record["sha256"] == sha256_file(out)
    assert record["read_as"] == "weights_only" and record["key_prefix"] == "model.visual."
    assert json.loads(sidecar_path(out).read_text()) == record
    with safe_open(str(out), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["source"] == "tall_masks" and metadata["commit"] == FIXTURE_COMMIT
    assert metadata["path_in_repo"] == TALL_DTD and metadata["source_sha256"] == record["source_sha256"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["DTD.json", "DTD.safetensors"]


def test_tall_masks_vit_b_16_folder_spelled_as_on_the_hub(
    tmp_path: Path, theta_0: StateDict, theta_t: StateDict
) -> None:
    cache = tmp_path / "hub"
    path = "single_task/VIT-B-16/CarsVal/nonlinear_finetuned.pt"
    write_hub_repo(cache, TALL, {path: _torch_bytes(_image_encoder_state(theta_t))})
    out = tmp_path / "Cars.safetensors"
    record = fetch_finetuned(
        {"source": "tall_masks"}, model="ViT-B-16", task="Cars", pretrained=theta_0, out=out, cache_dir=str(cache)
    )
    assert record["path_in_repo"] == path
    _assert_exactly(out, theta_t)


def test_hub_file_absent_from_the_offline_cache(tmp_path: Path, theta_0: StateDict) -> None:
    cache = tmp_path / "hub"
    write_hub_repo(cache, TALL, {"single_task/ViT-B-32/MNISTVal/nonlinear_finetuned.pt": b"not the one"})
    out = tmp_path / "out" / "DTD.safetensors"
    with pytest.raises(InputError, match=r"DTDVal/nonlinear_finetuned\.pt.*HF_HUB_OFFLINE"):
        fetch_finetuned(
            {"source": "tall_masks"}, model="ViT-B-32", task="DTD", pretrained=theta_0, out=out, cache_dir=str(cache)
        )
    _assert_nothing_written(out)


def test_damaged_hub_cache_file_is_refused(tmp_path: Path, theta_0: StateDict, theta_t: StateDict) -> None:
    cache = tmp_path / "hub"
    served = _torch_bytes(_image_encoder_state(theta_t))
    write_hub_repo(cache, TALL, {TALL_DTD: served})
    blob = cache / "models--nik-dim--tall_masks" / "blobs" / hashlib.sha256(served).hexdigest()
    blob.write_bytes(served[: len(served) // 2])
    out = tmp_path / "out" / "DTD.safetensors"
    with pytest.raises(InputError, match=r"nonlinear_finetuned\.pt.*damaged or truncated"):
        fetch_finetuned(
            {"source": "tall_masks"}, model="ViT-B-32", task="DTD", pretrained=theta_0, out=out, cache_dir=str(cache)
        )
    _assert_nothing_written(out)


@pytest.mark.parametrize(
    ("model", "task", "message"),
    [
        ("ViT-B-32", "ImageNet", "task 'ImageNet' is not in the tall_masks table"),
        ("ViT-H-14", "DTD", "model 'ViT-H-14' is not in the tall_masks table"),
    ],
)
def test_tall_masks_table_misses(tmp_path: Path, theta_0: StateDict, model: str, task: str, message: str) -> None:
    out = tmp_path / "out" / "x.safetensors"
    with pytest.raises(InputError, match=message):
        fetch_finetuned({"source": "tall_masks"}, model=model, task=task, pretrained=theta_0, out=out)
    _assert_nothing_written(out)


# --- CART authors --------------------------------------------------------------------------------------------------


def test_cart_authors_default_layout_and_pattern_override(
    tmp_path: Path, theta_0: StateDict, theta_t: StateDict
) -> None:
    cache = tmp_path / "hub"
    served = _torch_bytes(_image_encoder_state(theta_t))
    # The authors' README downloads the repository into checkpoints/ and their configs read checkpoints/ViT-B-32/,
    # so that folder wins over a root-level copy (here a file that would fail to load).
    files = {"ViT-B-32/SVHNVal/nonlinear_finetuned.pt": served, "SVHNVal/nonlinear_finetuned.pt": b"not the one"}
    write_hub_repo(cache, "JH-C-k/ViT-B-32", {**files, "alt/SVHN.pt": served})
    out = tmp_path / "SVHN.safetensors"
    record = fetch_finetuned(
        {"source": "cart_authors"}, model="ViT-B-32", task="SVHN", pretrained=theta_0, out=out, cache_dir=str(cache)
    )
    assert record["repo_id"] == "JH-C-k/ViT-B-32"
    assert record["path_in_repo"] == "ViT-B-32/SVHNVal/nonlinear_finetuned.pt"
    assert record["experts"] == "task_vectors"  # the CART README's word for its 8 tasks
    _assert_exactly(out, theta_t)

    out2 = tmp_path / "SVHN-alt.safetensors"
    record = fetch_finetuned(
        {"source": "cart_authors", "pattern": "alt/{task}.pt", "key_prefix": "model.visual."},
        model="ViT-B-32",
        task="SVHN",
        pretrained=theta_0,
        out=out2,
        cache_dir=str(cache),
    )
    assert record["path_in_repo"] == "alt/SVHN.pt"
    write_hub_repo(cache, "JH-C-k/ViT-B-32", {"PCAMVal/nonlinear_finetuned.pt": served})
    pcam = fetch_finetuned(
        {"source": "cart_authors"},
        model="ViT-B-32",
        task="PCAM",
        pretrained=theta_0,
        out=tmp_path / "PCAM.safetensors",
        cache_dir=str(cache),
    )
    assert pcam["path_in_repo"] == "PCAMVal/nonlinear_finetuned.pt"  # no ViT-B-32/ folder: the root is tried next
    assert pcam["experts"] == "tall_masks"  # one of the 12 tasks the CART authors took from TALL masks
    _assert_exactly(out2, theta_t)

    with pytest.raises(InputError, match="model 'ViT-B-16' is not in the cart_authors table"):
        fetch_finetuned(
            {"source": "cart_authors"},
            model="ViT-B-16",
            task="SVHN",
            pretrained=theta_0,
            out=tmp_path / "o" / "x.safetensors",
            cache_dir=str(cache),
        )


# --- FusionBench ---------------------------------------------------------------------------------------------------


def test_transformers_conversion_reproduces_the_model_function() -> None:
    """A transformers CLIPVisionModelWithProjection and the open_clip encoder loaded from its converted keys."""
    hf = _hf_model(seed=3)
    converted = transformers_to_open_clip(hf.state_dict(), "fixture")
    encoder = VisionTransformer(**ARCH, act_layer=QuickGELU).eval()
    encoder.load_state_dict(converted, strict=True)
    images = torch.randn(4, 3, ARCH["image_size"], ARCH["image_size"], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = hf(pixel_values=images).image_embeds
        actual = encoder(images)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert torch.equal(converted["proj"], hf.state_dict()["visual_projection.weight"].t())


# Vision configs of openai/clip-vit-{base-patch32,base-patch16,large-patch14}, the bases of FusionBench's models.
REAL_SIZES = {
    "ViT-B-32": {"hidden_size": 768, "intermediate_size": 3072, "layers": 12, "heads": 12, "patch": 32, "proj": 512},
    "ViT-B-16": {"hidden_size": 768, "intermediate_size": 3072, "layers": 12, "heads": 12, "patch": 16, "proj": 512},
    "ViT-L-14": {"hidden_size": 1024, "intermediate_size": 4096, "layers": 24, "heads": 16, "patch": 14, "proj": 768},
}


@pytest.mark.parametrize("model", sorted(REAL_SIZES))
def test_conversion_at_real_sizes_gives_open_clip_keys_and_shapes(model: str) -> None:
    """On the meta device (no memory): converted transformers keys equal open_clip's CLIP(model).visual."""
    import open_clip
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    size = REAL_SIZES[model]
    config = CLIPVisionConfig(
        hidden_size=size["hidden_size"],
        intermediate_size=size["intermediate_size"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        image_size=224,
        patch_size=size["patch"],
        projection_dim=size["proj"],
        hidden_act="quick_gelu",
    )
    with torch.device("meta"):
        hf_state = CLIPVisionModelWithProjection(config).state_dict()
        visual = open_clip.model.CLIP(**open_clip.get_model_config(model)).visual.state_dict()
    converted = transformers_to_open_clip(hf_state, model)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in visual.items()}


def test_fusionbench_from_the_hub_cache_with_pretrained_projection(tmp_path: Path, theta_0: StateDict) -> None:
    hf = _hf_model(seed=5)
    cache = tmp_path / "hub"
    write_hub_repo(cache, "tanganke/clip-vit-base-patch32_stanford-cars", _fusionbench_files(hf, tmp_path))
    out = tmp_path / "Cars.safetensors"
    record = fetch_finetuned(
        {"source": "fusionbench"}, model="ViT-B-32", task="Cars", pretrained=theta_0, out=out, cache_dir=str(cache)
    )
    assert record["layout"] == "transformers" and record["proj_source"] == "pretrained"
    assert record["repo_id"] == "tanganke/clip-vit-base-patch32_stanford-cars"
    assert record["path_in_repo"] == "model.safetensors" and record["config_sha256"]
    fetched = load_state_dict(out)
    assert torch.equal(fetched["proj"], theta_0["proj"])

    encoder = VisionTransformer(**ARCH, act_layer=QuickGELU).eval()
    encoder.load_state_dict(fetched, strict=True)
    images = torch.randn(3, 3, ARCH["image_size"], ARCH["image_size"], generator=torch.Generator().manual_seed(6))
    with torch.no_grad():  # the served model's pooled features, projected by θ_0's projection
        expected = hf.vision_model(pixel_values=images).pooler_output @ theta_0["proj"]
        torch.testing.assert_close(encoder(images), expected, atol=1e-5, rtol=0)


def test_fusionbench_emnist_is_letters_and_says_so(tmp_path: Path, theta_0: StateDict) -> None:
    cache = tmp_path / "hub"
    write_hub_repo(cache, "tanganke/clip-vit-base-patch32_emnist_letters", _fusionbench_files(_hf_model(7), tmp_path))
    out = tmp_path / "EMNIST.safetensors"
    with pytest.warns(UserWarning, match="letters"):
        record = fetch_finetuned(
            {"source": "fusionbench"},
            model="ViT-B-32",
            task="EMNIST",
            pretrained=theta_0,
            out=out,
            cache_dir=str(cache),
        )
    assert "letters" in record["caveat"] and out.exists()


def test_fusionbench_refuses_a_gelu_model(tmp_path: Path, theta_0: StateDict) -> None:
    cache = tmp_path / "hub"
    files = _fusionbench_files(_hf_model(8), tmp_path, hidden_act="gelu")
    write_hub_repo(cache, "tanganke/clip-vit-base-patch32_dtd", files)
    out = tmp_path / "out" / "DTD.safetensors"
    with pytest.raises(InputError, match=r"config\.json.*hidden_act 'gelu'"):
        fetch_finetuned(
            {"source": "fusionbench"}, model="ViT-B-32", task="DTD", pretrained=theta_0, out=out, cache_dir=str(cache)
        )
    _assert_nothing_written(out)


# --- local directory ------------------------------------------------------------------------------------------------


def test_local_safetensors_pt_and_transformers_files(tmp_path: Path, theta_0: StateDict, theta_t: StateDict) -> None:
    models = tmp_path / "models"
    models.mkdir()
    save_file({k: v.contiguous() for k, v in theta_t.items()}, str(models / "DTD.safetensors"))
    torch.save({f"visual.{k}": v for k, v in theta_t.items()} | {"logit_scale": torch.tensor(1.0)}, models / "GTSRB.pt")
    torch.save(_image_encoder_state(theta_t), models / "MNIST.pth")

    out = tmp_path / "out" / "DTD.safetensors"
    record = fetch_finetuned(
        {"source": "local", "directory": str(models)}, model="ViT-B-32", task="DTD", pretrained=theta_0, out=out
    )
    _assert_exactly(out, theta_t)
    assert record["read_as"] == "safetensors" and record["key_prefix"] == ""
    assert record["local_path"] == str((models / "DTD.safetensors").resolve())

    for task, pattern, prefix in [("GTSRB", "{task}.pt", None), ("MNIST", "{task}.pth", "model.visual.")]:
        out = tmp_path / "out" / f"{task}.safetensors"
        block = {"source": "local", "directory": str(models), "pattern": pattern, "key_prefix": prefix}
        record = fetch_finetuned(block, model="ViT-B-32", task=task, pretrained=theta_0, out=out)
        _assert_exactly(out, theta_t)
        assert record["read_as"] == "weights_only"
    assert record["key_prefix"] == "model.visual."

    # transformers 5 writes CLIPVisionModel without the `vision_model.` prefix; the layout is recognised
    from transformers import CLIPVisionModel

    hf = _jitter(CLIPVisionModel(_hf_config()), seed=9)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(models / "SVHN.safetensors"))
    out = tmp_path / "out" / "SVHN.safetensors"
    record = fetch_finetuned(
        {"source": "local", "directory": str(models)}, model="ViT-B-32", task="SVHN", pretrained=theta_0, out=out
    )
    assert record["layout"] == "transformers" and record["proj_source"] == "pretrained"
    expected = transformers_to_open_clip(hf.state_dict(), "fixture") | {"proj": theta_0["proj"]}
    _assert_exactly(out, expected)


def _safetensors_with_header_low_byte(tensors: StateDict, path: Path, low_byte: int) -> None:
    """A safetensors file whose header length starts with `low_byte` (padding the header with metadata)."""
    for pad in range(512):
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == low_byte:
            return
    raise AssertionError("no padding gives that header length")


def test_format_is_recognised_from_content_not_suffix(tmp_path: Path, theta_0: StateDict, theta_t: StateDict) -> None:
    models = tmp_path / "models"
    models.mkdir()
    _safetensors_with_header_low_byte(theta_t, models / "DTD.bin", 0x80)  # 0x80 also starts a legacy pickle
    torch.save(theta_t, models / "GTSRB.bin", _use_new_zipfile_serialization=False)
    torch.save(theta_t, models / "SVHN.bin")
    expected = {"DTD": "safetensors", "GTSRB": "weights_only", "SVHN": "weights_only"}
    for task, read_as in expected.items():
        out = tmp_path / "out" / f"{task}.safetensors"
        block = {"source": "local", "directory": str(models), "pattern": "{task}.bin"}
        record = fetch_finetuned(block, model="ViT-B-32", task=task, pretrained=theta_0, out=out)
        assert record["read_as"] == read_as
        _assert_exactly(out, theta_t)


def test_half_precision_source_is_stored_as_float32(tmp_path: Path, theta_0: StateDict, theta_t: StateDict) -> None:
    models = tmp_path / "models"
    models.mkdir()
    save_file({k: v.half().contiguous() for k, v in theta_t.items()}, str(models / "DTD.safetensors"))
    out = tmp_path / "out" / "DTD.safetensors"
    fetch_finetuned(
        {"source": "local", "directory": str(models)}, model="ViT-B-32", task="DTD", pretrained=theta_0, out=out
    )
    _assert_exactly(out, {k: v.half().float() for k, v in theta_t.items()})


# The task_vectors authors' module, written as a real package `src.modeling` (their import path, github.com/
# mlfoundations/task_vectors @ 826a64c, src/modeling.py): an ImageEncoder holding the CLIP as `.model` and the
# preprocessing transforms as attributes, the CLIP with a non-persistent buffer that state_dict() leaves out.
AUTHORS_MODELING = """
import torch
from open_clip.transformer import QuickGELU, VisionTransformer
from torchvision import transforms


class CLIP(torch.nn.Module):
    def __init__(self, arch, visual_state):
        super().__init__()
        self.visual = VisionTransformer(**arch, act_layer=QuickGELU)
        self.visual.load_state_dict(visual_state)
        self.logit_scale = torch.nn.Parameter(torch.tensor(4.6052))
        self.register_buffer("attn_mask", torch.ones(4, 4), persistent=False)


class ImageEncoder(torch.nn.Module):
    def __init__(self, arch, visual_state):
        super().__init__()
        self.model = CLIP(arch, visual_state)
        resize = transforms.Resize(arch["image_size"], interpolation=transforms.InterpolationMode.BICUBIC)
        self.val_preprocess = transforms.Compose([resize, transforms.ToTensor()])
        self.cache_dir = None
"""


def _forget_src_package() -> None:
    """Drop any `src` from the import cache (a failed unpickling may have imported the repository's src/)."""
    for name in [name for name in sys.modules if name == "src" or name.startswith("src.")]:
        del sys.modules[name]


def _save_authors_image_encoder(theta: dict[str, torch.Tensor], path: Path) -> None:
    """torch.save of a whole `src.modeling.ImageEncoder`, whose package is gone again before anything loads it."""
    package_root = path.parent / "authors_code"
    (package_root / "src").mkdir(parents=True, exist_ok=True)
    (package_root / "src" / "__init__.py").write_text("")
    (package_root / "src" / "modeling.py").write_text(AUTHORS_MODELING)
    sys.path.insert(0, str(package_root))
    importlib.invalidate_caches()  # the finders cache directory listings; this package is new
    _forget_src_package()
    try:
        from src.modeling import ImageEncoder  # type: ignore[import-not-found]

        assert ImageEncoder.__module__ == "src.modeling"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ImageEncoder(ARCH, theta), path)
    finally:
        sys.path.remove(str(package_root))
        _forget_src_package()
        shutil.rmtree(package_root)


def test_pickled_module_is_read_without_its_code(tmp_path: Path, theta_t: StateDict) -> None:
    path = tmp_path / "Cars.pt"
    _save_authors_image_encoder(theta_t, path)
    assert "src.modeling" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        torch.load(path, weights_only=False)  # what plain unpickling would need: the authors' code
    _forget_src_package()
    tensors, how = read_tensors(path, allow_pickle=True, label=str(path))
    assert how == "pickle"
    assert set(tensors) == {f"model.visual.{key}" for key in theta_t} | {"model.logit_scale"}
    for key, value in theta_t.items():
        assert torch.equal(tensors[f"model.visual.{key}"], value), key
    assert float(tensors["model.logit_scale"]) == pytest.approx(4.6052)


def test_pickled_module_needs_allow_pickle(tmp_path: Path, theta_0: StateDict, theta_t: StateDict) -> None:
    models = tmp_path / "models"
    _save_authors_image_encoder(theta_t, models / "Cars.pt")
    block = {"source": "local", "directory": str(models), "pattern": "{task}.pt"}
    out = tmp_path / "out" / "Cars.safetensors"
    with pytest.raises(InputError, match=r"Cars\.pt.*allow_pickle: true.*finetuned\.allow_pickle"):
        fetch_finetuned(block, model="ViT-B-32", task="Cars", pretrained=theta_0, out=out)
    _assert_nothing_written(out)

    record = fetch_finetuned(block | {"allow_pickle": True}, model="ViT-B-32", task="Cars", pretrained=theta_0, out=out)
    assert record["read_as"] == "pickle" and record["key_prefix"] == "model.visual."
    _assert_exactly(out, theta_t)


class _RunsCodeWhenUnpickled:
    """Unpickling this calls Path.touch on the marker: a stand-in for code a malicious checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


def test_crafted_pickle_runs_no_code_without_allow_pickle(tmp_path: Path, theta_0: StateDict) -> None:
    models = tmp_path / "models"
    models.mkdir()
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": dict(theta_0), "payload": _RunsCodeWhenUnpickled(marker)}, models / "Cars.pt")
    block = {"source": "local", "directory": str(models), "pattern": "{task}.pt"}
    out = tmp_path / "out" / "Cars.safetensors"
    with pytest.raises(InputError, match=r"Cars\.pt: the file holds pickled Python objects.*allow_pickle: true"):
        fetch_finetuned(block, model="ViT-B-32", task="Cars", pretrained=theta_0, out=out)
    assert not marker.exists()  # weights_only=True refused the file before calling anything in it
    _assert_nothing_written(out)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(models / "Cars.pt", weights_only=True)
    assert not marker.exists()
    torch.load(models / "Cars.pt", weights_only=False)  # what allow_pickle would trust the file to do
    assert marker.exists()


def test_restricted_unpickler_refuses_other_globals_even_with_allow_pickle(tmp_path: Path, theta_0: StateDict) -> None:
    models = tmp_path / "models"
    models.mkdir()
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": dict(theta_0), "payload": _RunsCodeWhenUnpickled(marker)}, models / "Cars.pt")
    block = {"source": "local", "directory": str(models), "pattern": "{task}.pt", "allow_pickle": True}
    out = tmp_path / "out" / "Cars.safetensors"
    with pytest.raises(InputError, match=r"Cars\.pt: the pickle names __builtin__\.getattr, which"):
        fetch_finetuned(block, model="ViT-B-32", task="Cars", pretrained=theta_0, out=out)
    assert not marker.exists()
    _assert_nothing_written(out)


# --- task_vectors (original release, pickled whole modules) ----------------------------------------------------------


def test_task_vectors_directory_as_downloaded(tmp_path: Path, theta_0: StateDict, theta_t: StateDict) -> None:
    release = tmp_path / "task_vectors"
    _save_authors_image_encoder(theta_t, release / "ViT-B-32" / "Cars" / "finetuned.pt")
    _save_authors_image_encoder(theta_0, release / "ViT-B-32" / "zeroshot.pt")
    block = {"source": "task_vectors", "directory": str(release), "allow_pickle": True}
    out = tmp_path / "out" / "Cars.safetensors"
    record = fetch_finetuned(block, model="ViT-B-32", task="Cars", pretrained=theta_0, out=out)
    _assert_exactly(out, theta_t)
    finetuned = release / "ViT-B-32" / "Cars" / "finetuned.pt"
    assert record["source"] == "task_vectors" and record["experts"] == "task_vectors"
    assert record["local_path"] == str(finetuned.resolve()) and record["source_sha256"] == sha256_file(finetuned)
    assert record["origin"].startswith("https://drive.google.com/drive/folders/")
    assert record["read_as"] == "pickle" and record["key_prefix"] == "model.visual."
    assert record["zeroshot_sha256"] == sha256_file(release / "ViT-B-32" / "zeroshot.pt")
    assert record["zeroshot_max_abs_difference"] == 0.0
    assert json.loads(sidecar_path(out).read_text()) == record

    # the fine-tuning script's own layout, `<Task>Val/`, with a zero-shot encoder that is not θ_0
    shifted = {key: value + 0.5 for key, value in theta_0.items()}
    _save_authors_image_encoder(theta_t, release / "ViT-B-32" / "DTDVal" / "finetuned.pt")
    _save_authors_image_encoder(shifted, release / "ViT-B-32" / "DTDVal" / "zeroshot.pt")
    (release / "ViT-B-32" / "zeroshot.pt").unlink()
    out = tmp_path / "out" / "DTD.safetensors"
    with pytest.warns(UserWarning, match="zero-shot encoder differs from θ_0 by up to 0.5"):
        record = fetch_finetuned(block, model="ViT-B-32", task="DTD", pretrained=theta_0, out=out)
    assert record["zeroshot_max_abs_difference"] == pytest.approx(0.5)
    assert record["local_path"].endswith("ViT-B-32/DTDVal/finetuned.pt")


def test_task_vectors_refusals(tmp_path: Path, theta_0: StateDict, theta_t: StateDict) -> None:
    release = tmp_path / "task_vectors"
    _save_authors_image_encoder(theta_t, release / "ViT-B-32" / "Cars" / "finetuned.pt")
    out = tmp_path / "out" / "x.safetensors"
    cases = [
        ({"directory": str(release)}, "Cars", r"finetuned\.allow_pickle: source 'task_vectors' serves whole"),
        ({"directory": str(release), "allow_pickle": True}, "CIFAR10", "task 'CIFAR10' is not in the task_vectors"),
        ({"directory": str(release), "allow_pickle": True}, "DTD", r"finetuned\.directory: none of .*DTD/finetuned"),
        ({"allow_pickle": True}, "Cars", r"finetuned\.directory: required by source 'task_vectors'"),
    ]
    for block, task, message in cases:
        with pytest.raises(InputError, match=message):
            fetch_finetuned(
                {"source": "task_vectors", **block}, model="ViT-B-32", task=task, pretrained=theta_0, out=out
            )
        _assert_nothing_written(out)


# --- hub revisions --------------------------------------------------------------------------------------------------


def test_hub_sources_record_the_revision_asked_for_and_the_commit(
    tmp_path: Path, theta_0: StateDict, theta_t: StateDict
) -> None:
    cache = tmp_path / "hub"
    served = _torch_bytes(_image_encoder_state(theta_t))
    pinned = "fedcba9876543210fedcba9876543210fedcba98"
    write_hub_repo(cache, TALL, {TALL_DTD: served})  # main → FIXTURE_COMMIT
    write_hub_repo(cache, TALL, {TALL_DTD: served}, revision="v2", commit=pinned)
    cases = [({}, "main", FIXTURE_COMMIT), ({"revision": "v2"}, "v2", pinned), ({"revision": pinned}, pinned, pinned)]
    for extra, revision, commit in cases:
        out = tmp_path / revision / "DTD.safetensors"
        record = fetch_finetuned(
            {"source": "tall_masks", **extra}, model="ViT-B-32", task="DTD", pretrained=theta_0, out=out,
            cache_dir=str(cache),
        )  # fmt: skip
        assert (record["revision"], record["commit"]) == (revision, commit)
        assert json.loads(sidecar_path(out).read_text())["commit"] == commit


def test_a_pinned_default_revision_is_asked_for(tmp_path: Path, theta_0: StateDict) -> None:
    """FusionBench's ViT-B-16 DTD repository has a known commit: without `revision` that commit, not main."""
    repo = "tanganke/clip-vit-base-patch16_dtd"
    pinned = tables.PINNED_COMMITS[repo]
    cache = tmp_path / "hub"
    write_hub_repo(cache, repo, _fusionbench_files(_hf_model(seed=10), tmp_path), commit=FIXTURE_COMMIT)
    out = tmp_path / "out" / "DTD.safetensors"
    with pytest.raises(InputError, match=rf"{repo}@{pinned} has none of the expected files"):
        fetch_finetuned({"source": "fusionbench"}, model="ViT-B-16", task="DTD", pretrained=theta_0, out=out,
                        cache_dir=str(cache))  # fmt: skip
    _assert_nothing_written(out)
    write_hub_repo(cache, repo, _fusionbench_files(_hf_model(seed=10), tmp_path), commit=pinned)
    record = fetch_finetuned(
        {"source": "fusionbench"}, model="ViT-B-16", task="DTD", pretrained=theta_0, out=out, cache_dir=str(cache)
    )
    assert record["revision"] == record["commit"] == pinned and record["experts"] == "fusionbench"


# --- URL ------------------------------------------------------------------------------------------------------------


def test_url_download_is_verified_and_cached(
    tmp_path: Path, http_root: Served, theta_0: StateDict, theta_t: StateDict
) -> None:
    root, base, requests_seen = http_root
    payload = _torch_bytes(_image_encoder_state(theta_t))
    (root / "dtd_finetuned.pt").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    block = {"source": "url", "urls": {"DTD": {"url": f"{base}/dtd_finetuned.pt", "sha256": digest}}}
    cache = tmp_path / "cache"

    out = tmp_path / "out" / "DTD.safetensors"
    record = fetch_finetuned(
        block, model="ViT-B-32", task="DTD", pretrained=theta_0, out=out, cache_dir=str(cache), progress=False
    )
    _assert_exactly(out, theta_t)
    assert record["url"] == f"{base}/dtd_finetuned.pt" and record["source_sha256"] == digest
    assert (cache / "downloads" / digest / "dtd_finetuned.pt").read_bytes() == payload
    assert requests_seen == ["/dtd_finetuned.pt"]

    out2 = tmp_path / "out2" / "DTD.safetensors"
    fetch_finetuned(
        block, model="ViT-B-32", task="DTD", pretrained=theta_0, out=out2, cache_dir=str(cache), progress=False
    )
    assert requests_seen == ["/dtd_finetuned.pt"]  # the verified cached copy was used
    _assert_exactly(out2, theta_t)


def test_url_checksum_mismatch_leaves_nothing(
    tmp_path: Path, http_root: Served, theta_0: StateDict, theta_t: StateDict
) -> None:
    root, base, _ = http_root
    payload = _torch_bytes(_image_encoder_state(theta_t))
    (root / "dtd.pt").write_bytes(payload)
    actual = hashlib.sha256(payload).hexdigest()
    wrong = "0" * 64
    block = {"source": "url", "urls": {"DTD": {"url": f"{base}/dtd.pt", "sha256": wrong}}}
    cache = tmp_path / "cache"
    out = tmp_path / "out" / "DTD.safetensors"
    with pytest.raises(InputError) as caught:
        fetch_finetuned(
            block, model="ViT-B-32", task="DTD", pretrained=theta_0, out=out, cache_dir=str(cache), progress=False
        )
    message = str(caught.value)
    assert f"{base}/dtd.pt" in message and wrong in message and actual in message
    assert [p for p in cache.rglob("*") if p.is_file()] == []
    _assert_nothing_written(out)


def test_url_errors(tmp_path: Path, http_root: Served, theta_0: StateDict) -> None:
    _, base, _ = http_root
    out = tmp_path / "out" / "DTD.safetensors"
    cases = [
        ({"DTD": {"url": f"{base}/absent.pt", "sha256": "a" * 64}}, r"absent\.pt: download failed.*404"),
        ({"MNIST": {"url": f"{base}/m.pt", "sha256": "a" * 64}}, r"finetuned\.urls: no entry for task 'DTD'"),
        ({"DTD": {"url": f"{base}/m.pt"}}, r"finetuned\.urls\.DTD\.sha256: required"),
        ({"DTD": {"url": "ftp://example.org/m.pt", "sha256": "a" * 64}}, r"finetuned\.urls\.DTD\.url: .*http"),
    ]
    for urls, message in cases:
        with pytest.raises(InputError, match=message):
            fetch_finetuned(
                {"source": "url", "urls": urls},
                model="ViT-B-32",
                task="DTD",
                pretrained=theta_0,
                out=out,
                cache_dir=str(tmp_path / "cache"),
                progress=False,
            )
        _assert_nothing_written(out)


def test_failed_write_leaves_neither_encoder_nor_sidecar(tmp_path: Path) -> None:
    """safetensors refuses tensors that share memory: a real failure inside the write."""
    shared = torch.ones(4)
    out = tmp_path / "out" / "DTD.safetensors"
    with pytest.raises(RuntimeError):
        write_encoder(out, {"a": shared, "b": shared}, {"source": "local"})
    _assert_nothing_written(out)


# --- errors common to all sources -----------------------------------------------------------------------------------


def _local(tmp_path: Path, name: str, tensors: dict[str, torch.Tensor] | bytes) -> dict[str, str]:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    if isinstance(tensors, bytes):
        (models / name).write_bytes(tensors)
    elif name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(models / name))
    else:
        torch.save(tensors, models / name)
    return {"source": "local", "directory": str(models), "pattern": name}


def test_truncated_files_name_the_file(tmp_path: Path, theta_0: StateDict, theta_t: StateDict) -> None:
    out = tmp_path / "out" / "DTD.safetensors"
    for name in ("cut.safetensors", "cut.pt"):
        block = _local(tmp_path, name, theta_t)
        path = Path(block["directory"]) / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(InputError, match=rf"{name}: .*(truncated|unreadable)"):
            fetch_finetuned(block, model="ViT-B-32", task="DTD", pretrained=theta_0, out=out)
        _assert_nothing_written(out)


def test_architecture_mismatches_name_the_key(tmp_path: Path, theta_0: StateDict, theta_t: StateDict) -> None:
    out = tmp_path / "out" / "DTD.safetensors"
    wider = dict(theta_t) | {"ln_post.weight": torch.ones(48)}
    missing = {k: v for k, v in theta_t.items() if k != "proj"}
    extra = dict(theta_t) | {"transformer.resblocks.2.ln_1.weight": torch.ones(32)}
    nan = dict(theta_t) | {"ln_pre.bias": torch.full((32,), float("nan"))}
    cases = [
        (
            "wider.safetensors",
            wider,
            r"wider\.safetensors: key 'ln_post\.weight' has shape \(48,\) but θ_0 has \(32,\)",
        ),
        ("missing.safetensors", missing, r"missing\.safetensors: missing key\(s\) \['proj'\]"),
        ("extra.safetensors", extra, r"extra\.safetensors: unexpected key\(s\) \['transformer\.resblocks\.2\.ln_1"),
        ("nan.safetensors", nan, r"nan\.safetensors: key 'ln_pre\.bias' holds NaN"),
        ("junk.bin", b"hello, not a checkpoint", r"junk\.bin: neither a safetensors file nor a PyTorch checkpoint"),
    ]
    for name, tensors, message in cases:
        with pytest.raises(InputError, match=message):
            fetch_finetuned(_local(tmp_path, name, tensors), model="ViT-B-32", task="DTD", pretrained=theta_0, out=out)
        _assert_nothing_written(out)


def test_config_errors(tmp_path: Path, theta_0: StateDict) -> None:
    out = tmp_path / "out" / "DTD.safetensors"
    cases = [
        ({"source": "hf"}, r"finetuned\.source: unknown source 'hf'"),
        ({"source": "tall_masks", "revison": "main"}, r"finetuned: unknown key\(s\) \['revison'\]"),
        ({"source": "tall_masks", "allow_pickle": "yes"}, r"finetuned\.allow_pickle: expected true or false"),
        ({"source": "local"}, r"finetuned\.directory: required"),
        ({"source": "local", "directory": str(tmp_path), "pattern": "{dataset}.pt"}, r"finetuned\.pattern: bad"),
        ({"source": "local", "directory": str(tmp_path)}, r"DTD\.safetensors not found"),
    ]
    for block, message in cases:
        with pytest.raises(InputError, match=message):
            fetch_finetuned(block, model="ViT-B-32", task="DTD", pretrained=theta_0, out=out)
        _assert_nothing_written(out)
    with pytest.raises(InputError, match=r"must end in \.safetensors"):
        fetch_finetuned(
            {"source": "tall_masks"}, model="ViT-B-32", task="DTD", pretrained=theta_0, out=tmp_path / "DTD.pt"
        )
