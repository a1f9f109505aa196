"""Multi-task fine-tuning: one task is the experts' recipe bit for bit; several share the batches by their sizes,
keep their heads and all learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mergeflow.models.clip import (
    build_clip,
    images_to_tensor,
    load_image_encoder,
    load_spec,
    save_model_dir,
    tiny_clip_spec,
)
from mergeflow.models.heads import head_logits
from mergeflow.training.finetune import FinetuneSettings, finetune_image_encoder
from mergeflow.training.multitask import (
    TrainingTask,
    finetune_multitask,
    multitask_steps,
    split_by_task,
    task_offsets,
    union_batches,
)

ARCH = {
    "image_size": 16, "patch_size": 8, "width": 32, "layers": 2, "heads": 2, "embed_dim": 16,
    "context_length": 12, "text_width": 32, "text_layers": 1, "text_heads": 2,
}  # fmt: skip
CPU = torch.device("cpu")
LOGIT_SCALE = torch.tensor(np.log(20.0))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    spec = tiny_clip_spec("toy-clip", ARCH)
    directory = tmp_path_factory.mktemp("model")
    save_model_dir(directory, spec, build_clip(spec))
    return directory


def brightness_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes: dark and bright images."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    base = np.where(labels[:, None, None, None] == 1, 200, 40)
    return np.clip(base + rng.integers(-30, 30, size=(n, 16, 16, 3)), 0, 255).astype(np.uint8), labels


def colour_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes: the red, green or blue channel is the bright one."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, size=(n, 16, 16, 3))
    images[np.arange(n), :, :, labels] += 150
    return images.astype(np.uint8), labels


def random_head(classes: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(classes, ARCH["embed_dim"], generator=torch.Generator().manual_seed(seed)), dim=-1)


def settings(steps: int, **changes: object) -> FinetuneSettings:
    values = {"steps": steps, "batch_size": 16, "lr": 2e-3, "weight_decay": 0.1, "warmup_steps": 2, "grad_clip": 1.0,
              "seed": 3} | changes  # fmt: skip
    return FinetuneSettings(**values)


@pytest.mark.parametrize("micro_batch_size", [None, 4])
def test_one_task_is_the_experts_fine_tuning_bit_for_bit(model_dir: Path, micro_batch_size: int | None) -> None:
    # 44 examples in batches of 16: the third step starts a new epoch, drawn from the same generator.
    images, labels = brightness_task(44, 0)
    head = random_head(2, 1)
    recipe = settings(7, micro_batch_size=micro_batch_size)
    spec = load_spec(model_dir)
    expert = load_image_encoder(model_dir)
    expert_losses = finetune_image_encoder(expert, head, LOGIT_SCALE, images, labels, spec, recipe, CPU,
                                           progress=False)  # fmt: skip
    joint = load_image_encoder(model_dir)
    task = TrainingTask("brightness", head, LOGIT_SCALE, images, labels)
    joint_losses = finetune_multitask(joint, [task], spec, recipe, CPU, progress=False)
    assert len(joint_losses) == 7 and joint_losses == expert_losses
    trained = joint.state_dict()
    assert all(torch.equal(trained[key], value) for key, value in expert.state_dict().items())
    start = load_image_encoder(model_dir).state_dict()
    assert max(float((trained[key] - start[key]).abs().max()) for key in start) > 1e-3


def test_the_batches_are_fine_tunings_and_every_epoch_sees_each_example_once() -> None:
    generator = np.random.default_rng(5)
    order = generator.permutation(50)
    batches = list(union_batches(50, 16, 5, 4))
    assert [batch.tolist() for batch in batches[:3]] == [sorted(order[i : i + 16]) for i in (0, 16, 32)]
    assert batches[3].tolist() == sorted(generator.permutation(50)[:16])
    epoch = np.concatenate(batches[:3])
    assert len(np.unique(epoch)) == 48


def test_every_tasks_examples_are_seen_about_equally_within_one_epoch() -> None:
    offsets = task_offsets([300, 300, 300])
    assert offsets.tolist() == [0, 300, 600, 900]
    per_epoch = 900 // 32
    batches = list(union_batches(900, 32, 0, per_epoch))
    counts = np.zeros(3, dtype=int)
    halfway = None
    for step, batch in enumerate(batches, start=1):
        for task, local in split_by_task(batch, offsets):
            assert local.min() >= 0 and local.max() < 300
            counts[task] += len(local)
        if step == per_epoch // 2:
            halfway = counts.copy()
    # A whole epoch: every example once, but for the 900 - 28 · 32 = 4 left for the next epoch.
    assert counts.sum() == 896 and counts.min() >= 296
    # Half an epoch (448 examples): each task within 10% of its third.
    assert halfway is not None and halfway.sum() == 448
    assert np.all(np.abs(halfway - 448 / 3) < 0.1 * 448 / 3), halfway
    # Unequal splits are seen in proportion to their sizes.
    offsets = task_offsets([100, 200, 600])
    seen = np.zeros(3, dtype=int)
    for batch in union_batches(900, 30, 1, 30):
        for task, local in split_by_task(batch, offsets):
            seen[task] += len(local)
    assert seen.tolist() == [100, 200, 600]


def test_a_batch_splits_into_each_tasks_own_indices() -> None:
    offsets = task_offsets([3, 4, 2])
    groups = split_by_task(np.array([1, 2, 3, 6, 8]), offsets)
    assert [(task, local.tolist()) for task, local in groups] == [(0, [1, 2]), (1, [0, 3]), (2, [1])]
    assert multitask_steps(settings(250), 8) == 2000
    with pytest.raises(ValueError, match="every task needs training examples"):
        task_offsets([3, 0])


def task_loss(visual: torch.nn.Module, task: TrainingTask, spec) -> float:
    with torch.no_grad():
        logits = head_logits(visual(images_to_tensor(task.images, spec, CPU)), task.head, task.logit_scale)
        return float(F.cross_entropy(logits, torch.from_numpy(task.labels)))


def test_two_tasks_both_learn_and_their_heads_never_change(model_dir: Path) -> None:
    spec = load_spec(model_dir)
    tasks = [
        TrainingTask("brightness", random_head(2, 1), LOGIT_SCALE, *brightness_task(96, 0)),
        TrainingTask("colour", random_head(3, 2), LOGIT_SCALE, *colour_task(96, 1)),
    ]
    heads = [(task.head.clone(), task.logit_scale.clone()) for task in tasks]
    visual = load_image_encoder(model_dir)
    before = [task_loss(visual, task, spec) for task in tasks]
    losses = finetune_multitask(visual, tasks, spec, settings(15), CPU, progress=False)
    after = [task_loss(visual, task, spec) for task in tasks]
    assert len(losses) == 2 * 15 and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert after[0] < 0.5 * before[0] and after[1] < 0.5 * before[1], (before, after)
    for task, (head, logit_scale) in zip(tasks, heads, strict=True):
        assert torch.equal(task.head, head) and torch.equal(task.logit_scale, logit_scale)
