"""The experts' validation split: `torch.utils.data.random_split(train, [N - v, v], Generator().manual_seed(0))`.

The task_vectors, TALL-masks and CART experts were fine-tuned on "<Task>Val" datasets made this way
(`split_train_into_train_val` in src/datasets/registry.py of nik-dim/tall_masks @d10af8b, L43-88; the same code in
mlfoundations/task_vectors @826a64c and JH-GEECS/CART @964cfd7): v = min(5000, int(0.1 · N)) held out of the base
training set in that dataset's own order. `random_split` draws `randperm(N, generator)` and cuts it into
consecutive pieces, so the training subset is the first N − v entries of the permutation and the validation subset
the last v. We do the same arithmetic, not a look-alike, so that the held-out images are
exactly the images the experts never trained on.
"""

from __future__ import annotations

import numpy as np

VAL_FRACTION = 0.1
MAX_VAL = 5000
SEED = 0


def val_size(n_train: int, *, fraction: float = VAL_FRACTION, max_val: int = MAX_VAL) -> int:
    """v = min(max_val, int(fraction · N)), as the experts' registry computes it."""
    return min(max_val, int(n_train * fraction))


def experts_train_val_indices(
    n_train: int, *, seed: int = SEED, fraction: float = VAL_FRACTION, max_val: int = MAX_VAL
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices) into the base training set: `random_split`'s two subsets, each sorted.

    Sorted, so that prepared splits keep the source's order (membership is what the experts' split fixes; their
    loaders shuffle training batches and evaluation does not depend on order).
    """
    import torch

    n_val = val_size(n_train, fraction=fraction, max_val=max_val)
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(order[: n_train - n_val]), np.sort(order[n_train - n_val :])
