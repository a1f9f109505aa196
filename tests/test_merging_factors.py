"""SVD once, every rank: cached task factors, their file format, and sweeps built from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from random_models import perturbed_models
from torch.testing import assert_close

from mergeflow.io import InputError, save_state_dict
from mergeflow.merging import (
    compute_task_factors,
    load_task_factors,
    merge_direction,
    merge_state_dicts,
    save_task_factors,
)
from mergeflow.merging.spectral import low_rank_sum, thin_svd, truncated_svd

SHAPES = {
    "positional_embedding": (5, 8),
    "transformer.resblocks.0.ln_1.weight": (8,),
    "transformer.resblocks.0.attn.in_proj_weight": (24, 8),
    "transformer.resblocks.0.attn.out_proj.weight": (8, 8),
    "transformer.resblocks.0.mlp.c_fc.weight": (16, 8),
    "transformer.resblocks.0.mlp.c_proj.weight": (8, 16),
    "proj": (8, 4),
}
MATRICES = [key for key, shape in SHAPES.items() if len(shape) == 2]
SWEEP = (0.0, 0.1, 0.25, 0.4, 0.6, 0.8, 1.0)


def random_models(num_tasks: int = 3) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    return perturbed_models(SHAPES, num_tasks, seed=11)


def test_factors_cover_every_matrix_and_reconstruct_the_task_vectors() -> None:
    pretrained, finetuned = random_models()
    for centered in (True, False):
        factors = compute_task_factors(pretrained, finetuned, centered=centered)
        assert factors.centered is centered and factors.num_tasks == 3
        assert sorted(factors.matrices) == sorted(MATRICES)
        for key, matrix in factors.matrices.items():
            stacked = torch.stack([model[key] for model in finetuned])
            origin = stacked.mean(dim=0) if centered else pretrained[key]
            reconstructed = matrix.u @ torch.diag_embed(matrix.s) @ matrix.vh
            assert_close(reconstructed, stacked - origin, rtol=0, atol=1e-5)


def test_low_rank_sum_matches_numpy_truncations() -> None:
    generator = torch.Generator().manual_seed(0)
    matrices = torch.randn(3, 9, 6, generator=generator)
    factors = thin_svd(matrices)
    for k in (1, 2, 5):
        expected = np.zeros((9, 6))
        for matrix in matrices.double().numpy():
            u, s, vt = np.linalg.svd(matrix, full_matrices=False)
            expected += (u[:, :k] * s[:k]) @ vt[:k]
        assert_close(low_rank_sum(factors.truncated(k)).double(), torch.from_numpy(expected), rtol=0, atol=1e-5)
        direct = truncated_svd(matrices, k)
        assert torch.equal(low_rank_sum(direct), low_rank_sum(factors.truncated(k)))


def test_factors_round_trip_through_a_file_bit_for_bit(tmp_path: Path) -> None:
    pretrained, finetuned = random_models()
    factors = compute_task_factors(pretrained, finetuned, centered=True, keys=MATRICES[1:3])
    save_task_factors(tmp_path / "svd" / "factors.safetensors", factors)
    loaded = load_task_factors(tmp_path / "svd" / "factors.safetensors")
    assert loaded.centered is True and loaded.num_tasks == 3
    assert sorted(loaded.matrices) == sorted(MATRICES[1:3])
    for key, matrix in factors.matrices.items():
        for part in ("u", "s", "vh"):
            assert torch.equal(getattr(loaded.matrices[key], part), getattr(matrix, part))
    assert [path.name for path in (tmp_path / "svd").iterdir()] == ["factors.safetensors"]


@pytest.mark.parametrize(("name", "centered"), [("cart", True), ("lowrank_ta", False)])
def test_rank_sweep_from_cached_factors_equals_recomputation(tmp_path: Path, name: str, centered: bool) -> None:
    pretrained, finetuned = random_models()
    save_task_factors(tmp_path / "f.safetensors", compute_task_factors(pretrained, finetuned, centered=centered))
    factors = load_task_factors(tmp_path / "f.safetensors")
    for rank in SWEEP:
        cached = merge_state_dicts(name, pretrained, finetuned, {"rank": rank, "lam": 1.3}, factors=factors)
        recomputed = merge_state_dicts(name, pretrained, finetuned, {"rank": rank, "lam": 1.3})
        for key in cached:
            assert_close(cached[key], recomputed[key], rtol=0, atol=1e-6)


def test_tsv_m_from_cached_factors_equals_recomputation() -> None:
    pretrained, finetuned = random_models()
    factors = compute_task_factors(pretrained, finetuned, centered=False)
    cached = merge_state_dicts("tsv_m", pretrained, finetuned, {}, factors=factors)
    recomputed = merge_state_dicts("tsv_m", pretrained, finetuned, {})
    for key in cached:
        assert_close(cached[key], recomputed[key], rtol=0, atol=1e-6)


def test_factors_only_for_some_keys_decompose_the_rest_on_the_spot() -> None:
    pretrained, finetuned = random_models()
    partial = compute_task_factors(pretrained, finetuned, centered=True, keys=MATRICES[:2])
    cached = merge_direction("cart", pretrained, finetuned, {"rank": 0.3}, factors=partial)
    recomputed = merge_direction("cart", pretrained, finetuned, {"rank": 0.3})
    assert cached.delta.keys() == recomputed.delta.keys()
    for key in cached.delta:
        assert_close(cached.delta[key], recomputed.delta[key], rtol=0, atol=1e-6)


def test_factors_of_the_wrong_kind_or_size_are_refused() -> None:
    pretrained, finetuned = random_models()
    original = compute_task_factors(pretrained, finetuned, centered=False)
    with pytest.raises(InputError, match="cart needs centered task factors, got original ones"):
        merge_state_dicts("cart", pretrained, finetuned, {}, factors=original)
    with pytest.raises(InputError, match="ties does not use task factors"):
        merge_state_dicts("ties", pretrained, finetuned, {}, factors=original)
    with pytest.raises(InputError, match="factors are for 3 tasks, but 2 models were given"):
        merge_state_dicts("lowrank_ta", pretrained, finetuned[:2], {}, factors=original)
    with pytest.raises(InputError, match="'transformer.resblocks.0.ln_1.weight' is not a 2-D floating-point tensor"):
        compute_task_factors(pretrained, finetuned, centered=True, keys=["transformer.resblocks.0.ln_1.weight"])
    with pytest.raises(InputError, match="'missing' is not in the pretrained model"):
        compute_task_factors(pretrained, finetuned, centered=True, keys=["missing"])


def test_loading_a_file_that_is_not_a_factors_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_state_dict(path, {"w": torch.zeros(2)})
    with pytest.raises(InputError, match="model.safetensors: not a mergeflow task-factors file"):
        load_task_factors(path)
    with pytest.raises(InputError, match="absent.safetensors: file not found"):
        load_task_factors(tmp_path / "absent.safetensors")


def test_svd_is_redone_in_float64_when_float32_lapack_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    native_svd = torch.linalg.svd

    def fails_in_float32(matrices: torch.Tensor, full_matrices: bool = True) -> tuple:
        if matrices.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return native_svd(matrices, full_matrices=full_matrices)

    matrices = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(torch.linalg, "svd", fails_in_float32)
    factors = truncated_svd(matrices, 4)
    assert factors.u.dtype == factors.s.dtype == factors.vh.dtype == torch.float32
    assert_close(factors.u @ torch.diag_embed(factors.s) @ factors.vh, matrices, rtol=0, atol=1e-5)
