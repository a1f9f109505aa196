"""The paper's 20 image-classification tasks from their real sources (Hugging Face hub, or torchvision).

    TASKS["SUN397"].hub.repo_id                   # "tanganke/sun397"
    counts = prepare_image_task("SUN397", "data/SUN397", image_size=224)   # {"train": ..., "val": ..., "test": ...}

The registry (task names, sources, class names, templates) is light; preparation imports pyarrow, Pillow,
huggingface_hub or torchvision only when it runs. Names are resolved on first use (`mergeflow.lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergeflow.lazy import lazy_exports

_EXPORTS = {
    "EMNIST_LETTERS": "registry",
    "EMNIST_SPLITS": "registry",
    "TASKS": "registry",
    "TASKS_8": "registry",
    "TASKS_14": "registry",
    "TASKS_20": "registry",
    "TASK_GROUPS": "registry",
    "HubSource": "registry",
    "ImageTask": "registry",
    "TorchvisionSource": "registry",
    "get_task": "registry",
    "task_source": "registry",
    "LabelMap": "labels",
    "build_label_map": "labels",
    "normalise_name": "labels",
    "resize_center_crop": "images",
    "prepare_image_task": "prepare",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from mergeflow.image_tasks.images import resize_center_crop
    from mergeflow.image_tasks.labels import LabelMap, build_label_map, normalise_name
    from mergeflow.image_tasks.prepare import prepare_image_task
    from mergeflow.image_tasks.registry import (
        EMNIST_LETTERS,
        EMNIST_SPLITS,
        TASK_GROUPS,
        TASKS,
        TASKS_8,
        TASKS_14,
        TASKS_20,
        HubSource,
        ImageTask,
        TorchvisionSource,
        get_task,
        task_source,
    )


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
