"""Model construction, zero-shot heads, a fine-tuning run and accuracy on a tiny CLIP."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mergeflow.evaluation.accuracy import accuracy
from mergeflow.io import InputError, load_state_dict, save_state_dict
from mergeflow.models.clip import (
    build_clip,
    build_tokenizer,
    load_clip,
    load_image_encoder,
    save_model_dir,
    tiny_clip_spec,
)
from mergeflow.models.heads import load_head, save_head, zero_shot_head
from mergeflow.training.finetune import FinetuneSettings, finetune_image_encoder
from mergeflow.training.optim import openclip_adamw
from mergeflow.training.pretrain import clip_loss

ARCH = {
    "image_size": 16, "patch_size": 8, "width": 32, "layers": 2, "heads": 2, "embed_dim": 16,
    "context_length": 12, "text_width": 32, "text_layers": 1, "text_heads": 2,
}  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    spec = tiny_clip_spec("toy-clip", ARCH)
    directory = tmp_path_factory.mktemp("model")
    save_model_dir(directory, spec, build_clip(spec))
    return directory


def test_image_encoder_has_open_clip_vit_keys(model_dir: Path) -> None:
    keys = set(load_state_dict(model_dir / "pretrained.safetensors"))
    for block in range(ARCH["layers"]):
        prefix = f"transformer.resblocks.{block}."
        assert {
            prefix + k for k in ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        } <= keys
    assert {"conv1.weight", "class_embedding", "positional_embedding", "proj", "ln_post.weight"} <= keys
    assert not any(k.startswith("visual.") for k in keys)
    text_keys = set(load_state_dict(model_dir / "text.safetensors"))
    assert "logit_scale" in text_keys and "token_embedding.weight" in text_keys
    full = set(build_clip(tiny_clip_spec("toy-clip", ARCH)).state_dict())
    assert {"visual." + k for k in keys} | text_keys == full


def test_saved_model_reloads_to_identical_outputs(model_dir: Path) -> None:
    spec, clip = load_clip(model_dir)
    images = torch.randn(3, 3, 16, 16)
    visual = load_image_encoder(model_dir)
    assert torch.equal(visual(images), clip.visual(images))


def test_wrong_architecture_names_file_and_key(model_dir: Path, tmp_path: Path) -> None:
    weights = load_state_dict(model_dir / "pretrained.safetensors")
    weights["proj"] = torch.zeros(5, 5)
    save_state_dict(tmp_path / "bad.safetensors", weights)
    with pytest.raises(InputError, match=r"bad.safetensors.*'proj'"):
        load_image_encoder(model_dir, tmp_path / "bad.safetensors")
    del weights["proj"]
    save_state_dict(tmp_path / "missing.safetensors", weights)
    with pytest.raises(InputError, match=r"missing.safetensors.*missing \['proj'\]"):
        load_image_encoder(model_dir, tmp_path / "missing.safetensors")


def test_head_is_normalised_mean_of_normalised_template_embeddings(model_dir: Path, tmp_path: Path) -> None:
    spec, clip = load_clip(model_dir)
    tokenizer = build_tokenizer(spec)
    templates = ("a photo of a {}.", "a {} shape.")
    head = zero_shot_head(clip, tokenizer, ("circle", "square"), templates, torch.device("cpu"))
    assert head.shape == (2, ARCH["embed_dim"])
    with torch.no_grad():
        circle = F.normalize(clip.encode_text(tokenizer([t.format("circle") for t in templates])), dim=-1)
    expected = F.normalize(circle.mean(0), dim=-1)
    torch.testing.assert_close(head[0], expected)
    torch.testing.assert_close(head.norm(dim=-1), torch.ones(2))
    save_head(str(tmp_path / "h.safetensors"), head, clip.logit_scale, task="shapes", model=spec.name)
    loaded, scale = load_head(str(tmp_path / "h.safetensors"))
    assert torch.equal(loaded, head) and float(scale) == pytest.approx(float(clip.logit_scale.detach()))


def _separable_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 is dark, class 1 is bright: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    base = np.where(labels[:, None, None, None] == 1, 200, 40)
    images = np.clip(base + rng.integers(-30, 30, size=(n, 16, 16, 3)), 0, 255).astype(np.uint8)
    return images, labels


def test_finetuning_learns_and_keeps_the_head_frozen(model_dir: Path) -> None:
    spec, _ = load_clip(model_dir)
    visual = load_image_encoder(model_dir)
    torch.manual_seed(1)
    head = F.normalize(torch.randn(2, ARCH["embed_dim"]), dim=-1)
    head_before = head.clone()
    images, labels = _separable_task(128, 0)
    test_images, test_labels = _separable_task(64, 1)
    device = torch.device("cpu")
    before = accuracy(visual, head, test_images, test_labels, spec, device)
    settings = FinetuneSettings(
        steps=30, batch_size=32, lr=3e-3, weight_decay=0.1, warmup_steps=3, grad_clip=1.0, seed=0
    )
    losses = finetune_image_encoder(
        visual, head, torch.tensor(np.log(20.0)), images, labels, spec, settings, device, progress=False
    )
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert accuracy(visual, head, test_images, test_labels, spec, device) >= max(before, 0.9)
    assert torch.equal(head, head_before)


def test_micro_batches_accumulate_to_the_full_batch_step(model_dir: Path) -> None:
    spec, _ = load_clip(model_dir)
    torch.manual_seed(2)
    head = F.normalize(torch.randn(2, ARCH["embed_dim"]), dim=-1)
    images, labels = _separable_task(64, 3)
    trained = {}
    for micro in (None, 8):
        visual = load_image_encoder(model_dir)
        settings = FinetuneSettings(
            steps=3,
            batch_size=32,
            lr=1e-3,
            weight_decay=0.1,
            warmup_steps=1,
            grad_clip=1.0,
            seed=0,
            micro_batch_size=micro,
        )
        losses = finetune_image_encoder(
            visual,
            head,
            torch.tensor(np.log(20.0)),
            images,
            labels,
            spec,
            settings,
            torch.device("cpu"),
            progress=False,
        )
        trained[micro] = (losses, visual.state_dict())
    # Same losses at every step means the same model after each update.
    np.testing.assert_allclose(trained[8][0], trained[None][0], rtol=1e-5)
    # Adam turns float rounding on near-zero gradients into steps of up to ~lr, hence atol below 3 lr.
    start = load_image_encoder(model_dir).state_dict()
    moved = max(float((trained[None][1][key] - start[key]).abs().max()) for key in start)
    assert moved > 2e-3
    for key, value in trained[None][1].items():
        torch.testing.assert_close(trained[8][1][key], value, rtol=0, atol=3e-4)
    with pytest.raises(ValueError, match="finetune.micro_batch_size 5 must be a positive divisor"):
        FinetuneSettings(4, 32, 1e-3, 0.1, 0, 1.0, 0, micro_batch_size=5).micro_batches()


def test_accuracy_counts_correct_predictions(model_dir: Path) -> None:
    spec, _ = load_clip(model_dir)
    visual = load_image_encoder(model_dir)
    images, labels = _separable_task(10, 2)
    with torch.no_grad():
        from mergeflow.models.clip import images_to_tensor

        features = F.normalize(visual(images_to_tensor(images, spec, torch.device("cpu"))), dim=-1)
    # A head made of the first two images' embeddings predicts each of them correctly.
    head = features[:2]
    predicted_labels = np.array([0, 1] + [9] * 8)
    acc = accuracy(visual, head, images, predicted_labels, spec, torch.device("cpu"), batch_size=3)
    assert acc == pytest.approx(0.2)


def test_clip_loss_treats_same_caption_ids_as_positives() -> None:
    scale = torch.tensor(np.log(50.0))
    merged = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    apart = torch.eye(3)
    shared_ids, distinct_ids = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 2])
    # Items 0 and 1 name the same thing: embedding them together is what the loss must prefer...
    assert float(clip_loss(merged, merged, scale, shared_ids)) < float(clip_loss(apart, apart, scale, shared_ids))
    # ...while with distinct captions (plain CLIP) it prefers them apart.
    assert float(clip_loss(apart, apart, scale, distinct_ids)) < float(clip_loss(merged, merged, scale, distinct_ids))
    # Lower bound with soft targets: the targets' entropy, ln 2 for the two shared rows and columns.
    expected = 2 * np.log(2.0) / 3
    assert float(clip_loss(merged, merged, scale, shared_ids)) == pytest.approx(expected, abs=1e-6)


def test_pretraining_decays_weight_matrices_only_as_openclip_does() -> None:
    torch.manual_seed(0)
    clip = build_clip(tiny_clip_spec("toy-clip", ARCH))
    before = {name: p.detach().clone() for name, p in clip.named_parameters()}
    lr, weight_decay = 0.1, 0.5
    optimizer = openclip_adamw(clip, lr, weight_decay)
    for p in clip.parameters():
        p.grad = torch.zeros_like(p)
    # With zero gradients Adam's own update is 0, so one step shows the decay alone: θ ← θ (1 − lr · wd).
    optimizer.step()
    decayed = {name for name, p in clip.named_parameters() if not torch.equal(p, before[name])}
    for name, p in clip.named_parameters():
        if name in decayed:
            torch.testing.assert_close(p.detach(), before[name] * (1 - lr * weight_decay))
    assert "logit_scale" not in decayed
    assert not any(".ln_" in name or name.endswith("bias") or name.startswith("ln_") for name in decayed)
    assert {"visual.conv1.weight", "visual.proj", "text_projection", "token_embedding.weight"} <= decayed
    assert all(before[name].ndim >= 2 for name in decayed)
    assert sum(p.numel() for name, p in clip.named_parameters() if name in decayed) > 0.9 * sum(
        p.numel() for p in clip.parameters()
    )


def test_build_head_with_the_experts_class_texts(model_dir: Path, tmp_path: Path) -> None:
    """FER2013's experts' head embeds `they look ['happy', 'smiling'].`, not `they look happy.`."""
    from mergeflow.commands.main import main
    from mergeflow.data import TaskClasses, save_classes
    from mergeflow.image_tasks.registry import TASKS

    fer = TASKS["FER2013"]
    save_classes(tmp_path / "FER2013", "FER2013", TaskClasses(fer.classnames, fer.templates))
    heads = {}
    for texts in ("data", "experts"):
        out = tmp_path / f"{texts}.safetensors"
        args = ["build-head", "--model-dir", str(model_dir), "--data-dir", str(tmp_path / "FER2013"), "--out", str(out)]
        assert main([*args, "--class-texts", texts, "--device", "cpu"]) == 0
        heads[texts] = load_head(str(out))[0]
    spec, clip = load_clip(model_dir)
    synonyms = [["angry"], ["disgusted"], ["fearful"], ["happy", "smiling"], ["sad", "depressed"],
                ["surprised", "shocked", "spooked"], ["neutral", "bored"]]  # fmt: skip
    expected = zero_shot_head(
        clip, build_tokenizer(spec), [str(s) for s in synonyms], fer.templates, torch.device("cpu")
    )
    torch.testing.assert_close(heads["experts"], expected)
    assert not torch.allclose(heads["data"][3], heads["experts"][3])
    readable = zero_shot_head(clip, build_tokenizer(spec), fer.classnames, fer.templates, torch.device("cpu"))
    torch.testing.assert_close(heads["data"], readable)
    save_classes(tmp_path / "shapes", "shapes", TaskClasses(("circle", "square"), ("a {}.",)))
    args = ["build-head", "--model-dir", str(model_dir), "--data-dir", str(tmp_path / "shapes"), "--out", str(out)]
    assert main([*args, "--class-texts", "experts"]) == 2
