"""tiny8: an embedded, offline benchmark of eight procedurally generated image tasks."""

from mergeflow.tiny.tasks import TINY_TASKS, TinyTask, caption, generate_images, generate_split, get_task

__all__ = ["TINY_TASKS", "TinyTask", "caption", "generate_images", "generate_split", "get_task"]
