"""WUDI merging against a direct transcription of its authors' code, and its identities."""

from __future__ import annotations

import numpy as np
import torch
from random_models import perturbed_models

from mergeflow.merging import merge_state_dicts
from mergeflow.merging.methods.wudi import wudi_loss, wudi_vector

SHAPES = {
    "transformer.resblocks.0.attn.in_proj_weight": (12, 4),
    "transformer.resblocks.0.mlp.c_proj.weight": (4, 6),
    "transformer.resblocks.0.ln_1.weight": (4,),
    "proj": (4, 3),
}


def authors_wudi(vectors: torch.Tensor, iter_num: int, lr: float) -> torch.Tensor:
    """nathanielyvo/WUDI-Merging @ dc3cd12, vit/wudi_main.py L43-62 (`get_redundant_task_vector`), on the CPU:
    transcribed line by line, with its hard-coded lr made an argument."""
    merging_vector = torch.nn.Parameter(torch.sum(vectors, dim=0))
    optimizer = torch.optim.Adam([merging_vector], lr=lr, weight_decay=0)
    l2_norms = torch.square(torch.norm(vectors.reshape(vectors.shape[0], -1), p=2, dim=-1))
    for _ in range(iter_num):
        disturbing_vectors = merging_vector.unsqueeze(0) - vectors
        inner_product = torch.matmul(disturbing_vectors, vectors.transpose(1, 2))
        loss = torch.sum(torch.square(inner_product) / l2_norms.unsqueeze(-1).unsqueeze(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return merging_vector.data.detach().cpu()


def test_equals_the_authors_algorithm_bit_for_bit_up_to_square_matrices() -> None:
    for shape in ((4, 12), (6, 6)):
        vectors = torch.randn(3, *shape, generator=torch.Generator().manual_seed(5))
        for iterations, lr in ((0, 1e-5), (25, 1e-5), (40, 1e-2)):
            ours = wudi_vector(vectors, iterations, lr)
            assert torch.equal(ours, authors_wudi(vectors, iterations, lr)), (shape, iterations, lr)
        assert not torch.equal(wudi_vector(vectors, 40, 1e-2), vectors.sum(dim=0))


def test_tall_matrices_take_the_gram_form_and_agree_with_the_authors() -> None:
    # in_proj and c_fc shapes (3d × d, 4d × d), at the default 300 steps of lr 1e-5 on task vectors of a
    # fine-tuned encoder's size (entries ~1e-3): the two orders of operations round apart by ~1e-9.
    for shape in ((48, 16), (64, 16)):
        vectors = 1e-3 * torch.randn(4, *shape, generator=torch.Generator().manual_seed(6))
        ours, theirs = wudi_vector(vectors, 300, 1e-5), authors_wudi(vectors, 300, 1e-5)
        moved = float((theirs - vectors.sum(dim=0)).abs().max())
        assert moved > 1e-3
        assert float((ours - theirs).abs().max()) < 1e-4 * moved
    vectors = torch.randn(3, 12, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours, theirs = wudi_vector(vectors, 40, 1e-2), authors_wudi(vectors, 40, 1e-2)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)


def test_loss_is_the_papers_interference_by_hand() -> None:
    tau = [np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[0.0, 1.0], [1.0, 0.0]])]
    merged = np.array([[1.0, 1.0], [1.0, 2.0]])
    by_hand = sum(np.sum(((merged - t) @ t.T) ** 2) / np.sum(t**2) for t in tau)
    vectors = torch.tensor(np.stack(tau), dtype=torch.float64)
    norms = torch.square(torch.norm(vectors.reshape(2, -1), dim=-1))
    assert abs(float(wudi_loss(torch.tensor(merged), vectors, norms)) - by_hand) < 1e-12
    # (merged − τ_1) τ_1ᵀ = [[0, 2], [1, 0]] over ‖τ_1‖² = 5, (merged − τ_2) τ_2ᵀ = [[0, 1], [2, 0]] over 2.
    assert abs(by_hand - (5 / 5 + 5 / 2)) < 1e-12


def test_adam_lowers_the_interference() -> None:
    vectors = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(2))
    norms = torch.square(torch.norm(vectors.reshape(4, -1), dim=-1))
    start = float(wudi_loss(vectors.sum(dim=0), vectors, norms))
    after = float(wudi_loss(wudi_vector(vectors, 200, 1e-2), vectors, norms))
    assert after < 0.5 * start


def test_one_task_is_that_expert_on_the_matrices_and_theta_0_elsewhere() -> None:
    pretrained, finetuned = perturbed_models(SHAPES, 1, seed=3)
    merged = merge_state_dicts("wudi", pretrained, finetuned, {"iterations": 20, "lr": 1e-3})
    for key in SHAPES:
        expected = (
            finetuned[0][key] if "resblocks" in key and key.endswith("weight") and merged[key].ndim == 2 else None
        )
        if expected is None:
            assert torch.equal(merged[key], pretrained[key]), key
        else:
            assert torch.allclose(merged[key], expected, atol=1e-6, rtol=0), key


def test_several_tasks_merge_only_the_cart_matrices() -> None:
    pretrained, finetuned = perturbed_models(SHAPES, 3, seed=4)
    merged = merge_state_dicts("wudi", pretrained, finetuned, {"iterations": 30, "lr": 1e-3, "lam": 0.5})
    assert torch.equal(merged["proj"], pretrained["proj"])
    assert torch.equal(merged["transformer.resblocks.0.ln_1.weight"], pretrained["transformer.resblocks.0.ln_1.weight"])
    key = "transformer.resblocks.0.mlp.c_proj.weight"
    vectors = torch.stack([model[key] - pretrained[key] for model in finetuned])
    assert torch.allclose(merged[key], pretrained[key] + 0.5 * wudi_vector(vectors, 30, 1e-3), atol=1e-6, rtol=0)


def test_a_task_that_did_not_move_is_left_out_of_the_loss() -> None:
    vectors = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(9))
    with_still = torch.cat([vectors, torch.zeros(1, 6, 4)])
    assert torch.equal(wudi_vector(with_still, 30, 1e-2), wudi_vector(vectors, 30, 1e-2))
    assert torch.isfinite(wudi_vector(torch.zeros(2, 6, 4), 5, 1e-2)).all()
