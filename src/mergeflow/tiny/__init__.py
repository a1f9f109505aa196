"""The embedded, offline tiny benchmarks: twenty procedurally generated image tasks, each in its own domain."""

from mergeflow.tiny.domains import apply_domain, task_look
from mergeflow.tiny.tasks import TINY_TASKS, TinyTask, caption, generate_images, generate_split, get_task

__all__ = [
    "apply_domain",
    "task_look",
    "TINY_TASKS",
    "TinyTask",
    "caption",
    "generate_images",
    "generate_split",
    "get_task",
]
