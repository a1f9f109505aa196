"""Statistics of a fine-tuned encoder on its task's training images, for merges that need data."""
