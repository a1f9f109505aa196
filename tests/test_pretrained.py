"""fetch_pretrained against hub-cache fixtures laid out like open_clip's real repositories (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import open_clip
import pytest
import torch
from hub_cache import FIXTURE_COMMIT, write_hub_repo
from safetensors.torch import save_file

from mergeflow.checkpoints.tables import PINNED_COMMITS
from mergeflow.io import InputError, load_state_dict
from mergeflow.models.clip import load_clip, load_spec
from mergeflow.models.open_clip_hub import fetch_pretrained, hub_weights

B32_REPO = "timm/vit_base_patch32_clip_224.openai"
B32_COMMIT = PINNED_COMMITS[B32_REPO]  # what a fetch without a revision asks for
OPENAI_PREPROCESS = {
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
TINY_CFG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


def _served_config(model_cfg: dict) -> bytes:
    return json.dumps({"model_cfg": model_cfg, "preprocess_cfg": OPENAI_PREPROCESS}).encode()


def _random_clip(model_cfg: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    clip = open_clip.model.CLIP(**model_cfg)
    with torch.no_grad():
        for parameter in clip.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return clip


def _serve(
    cache: Path, tmp_path: Path, files: dict[str, dict[str, torch.Tensor] | bytes], commit: str = B32_COMMIT
) -> None:
    served: dict[str, bytes | Path] = {}
    for name, content in files.items():
        if isinstance(content, dict):
            local = tmp_path / f"upload-{name}"
            if name.endswith(".safetensors"):
                save_file({k: v.contiguous() for k, v in content.items()}, str(local))
            else:
                torch.save(content, local)
            served[name] = local
        else:
            served[name] = content
    write_hub_repo(cache, B32_REPO, served, commit=commit)


def test_hub_location_comes_from_open_clips_registry():
    assert hub_weights("ViT-B-32", "openai").repo_id == B32_REPO
    assert hub_weights("ViT-L-14", "openai").repo_id == "timm/vit_large_patch14_clip_224.openai"
    assert hub_weights("ViT-B-16", "openai").repo_id == "timm/vit_base_patch16_clip_224.openai"
    with pytest.raises(InputError, match="not a pretrained tag of ViT-B-32.*openai"):
        hub_weights("ViT-B-32", "no-such-tag")
    with pytest.raises(InputError, match="model.open_clip.name 'ViT-X'"):
        hub_weights("ViT-X", "openai")


def test_fetch_vit_b_32_at_full_size(tmp_path):
    """The real ViT-B-32 config and weight file name; random fp16 weights keep the fixture at 300 MB."""
    model_cfg = {**open_clip.get_model_config("ViT-B-32"), "quick_gelu": True}
    torch.manual_seed(0)
    state = {k: v.half() for k, v in open_clip.model.CLIP(**model_cfg).state_dict().items()}
    cache = tmp_path / "hub"
    _serve(cache, tmp_path, {"open_clip_config.json": _served_config(model_cfg), "open_clip_model.safetensors": state})
    blob = next((cache / f"models--{B32_REPO.replace('/', '--')}" / "blobs").iterdir(), None)

    spec = fetch_pretrained("ViT-B-32", "openai", tmp_path / "model", image_size=224, cache_dir=str(cache))

    image = load_state_dict(tmp_path / "model" / "pretrained.safetensors")
    expected = {k.removeprefix("visual."): v.float() for k, v in state.items() if k.startswith("visual.")}
    assert image.keys() == expected.keys()
    assert all(torch.equal(image[k], expected[k]) for k in expected)
    assert image["transformer.resblocks.11.attn.in_proj_weight"].shape == (2304, 768)
    recorded = load_spec(tmp_path / "model")
    assert recorded == spec
    assert recorded.open_clip_config["quick_gelu"] is True
    assert recorded.source["repo_id"] == B32_REPO
    assert recorded.source["revision"] == recorded.source["commit"] == B32_COMMIT
    assert recorded.source["file"] == "open_clip_model.safetensors"
    sizes = {path.stat().st_size: path for path in blob.parent.iterdir()}
    weights_blob = sizes[max(sizes)]
    assert recorded.source["sha256"] == weights_blob.name == hashlib.sha256(weights_blob.read_bytes()).hexdigest()
    _, clip = load_clip(tmp_path / "model")
    assert type(clip.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert torch.equal(clip.logit_scale.detach(), state["logit_scale"].float())


def test_pickled_checkpoint_is_read_with_weights_only(tmp_path):
    clip = _random_clip(TINY_CFG)
    cache = tmp_path / "hub"
    _serve(
        cache,
        tmp_path,
        {"open_clip_config.json": _served_config(TINY_CFG), "open_clip_pytorch_model.bin": clip.state_dict()},
    )

    spec = fetch_pretrained("ViT-B-32", "openai", tmp_path / "model", cache_dir=str(cache))

    assert spec.source["file"] == "open_clip_pytorch_model.bin"
    image = load_state_dict(tmp_path / "model" / "pretrained.safetensors")
    assert torch.equal(image["conv1.weight"], clip.state_dict()["visual.conv1.weight"])
    text = load_state_dict(tmp_path / "model" / "text.safetensors")
    assert torch.equal(text["token_embedding.weight"], clip.state_dict()["token_embedding.weight"])


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "not a readable safetensors file"),
        ("drop_key", r"missing \['visual.ln_post.weight'\]"),
        ("reshape", "key 'visual.conv1.weight' has shape"),
    ],
)
def test_bad_weights_fail_naming_file_and_key_and_write_nothing(tmp_path, damage, message):
    state = _random_clip(TINY_CFG).state_dict()
    if damage == "drop_key":
        del state["visual.ln_post.weight"]
    if damage == "reshape":
        state["visual.conv1.weight"] = torch.zeros(32, 3, 8, 8)
    cache = tmp_path / "hub"
    _serve(cache, tmp_path, {"open_clip_config.json": _served_config(TINY_CFG), "open_clip_model.safetensors": state})
    if damage == "truncate":
        blob = max(
            (cache / f"models--{B32_REPO.replace('/', '--')}" / "blobs").iterdir(), key=lambda p: p.stat().st_size
        )
        blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])

    with pytest.raises(InputError, match=message) as err:
        fetch_pretrained("ViT-B-32", "openai", tmp_path / "model", cache_dir=str(cache))
    assert "open_clip_model.safetensors" in str(err.value)
    _assert_nothing_written(tmp_path / "model")


def test_offline_without_cached_weights_names_the_repository(tmp_path):
    cache = tmp_path / "hub"
    _serve(cache, tmp_path, {"open_clip_config.json": _served_config(TINY_CFG)})
    with pytest.raises(InputError, match=f"hub repository {B32_REPO}@{B32_COMMIT}: none of"):
        fetch_pretrained("ViT-B-32", "openai", tmp_path / "model", cache_dir=str(cache))
    _assert_nothing_written(tmp_path / "model")


def test_image_size_must_match_the_model(tmp_path):
    cache = tmp_path / "hub"
    _serve(
        cache,
        tmp_path,
        {
            "open_clip_config.json": _served_config(TINY_CFG),
            "open_clip_model.safetensors": _random_clip(TINY_CFG).state_dict(),
        },
    )
    with pytest.raises(InputError, match="model.image_size is 224 but ViT-B-32 takes 32×32"):
        fetch_pretrained("ViT-B-32", "openai", tmp_path / "model", image_size=224, cache_dir=str(cache))
    _assert_nothing_written(tmp_path / "model")


def test_the_pinned_commit_is_asked_for_unless_a_revision_is_given(tmp_path):
    """Weights cached only under `main` are not what a default fetch asks for; naming `main` reads them."""
    cache = tmp_path / "hub"
    state = _random_clip(TINY_CFG).state_dict()
    files = {"open_clip_config.json": _served_config(TINY_CFG), "open_clip_model.safetensors": state}
    _serve(cache, tmp_path, files, commit=FIXTURE_COMMIT)
    with pytest.raises(InputError, match=f"{B32_REPO}@{B32_COMMIT}: none of"):
        fetch_pretrained("ViT-B-32", "openai", tmp_path / "model", cache_dir=str(cache))
    _assert_nothing_written(tmp_path / "model")

    spec = fetch_pretrained("ViT-B-32", "openai", tmp_path / "model", revision="main", cache_dir=str(cache))
    assert (spec.source["revision"], spec.source["commit"]) == ("main", FIXTURE_COMMIT)
    assert load_spec(tmp_path / "model").source == spec.source
