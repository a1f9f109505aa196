"""One small worked example per method: expected values written out by hand, or by plain numpy below."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from random_models import perturbed_models
from torch.testing import assert_close

from mergeflow.merging import merge_state_dicts

MATRIX = "transformer.resblocks.0.attn.out_proj.weight"  # a CART matrix
OTHER_MATRIX = "positional_embedding"  # 2-D but not a CART matrix
VECTOR = "transformer.resblocks.0.ln_1.weight"


def t(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def models_from_task_vectors(
    pretrained: dict[str, list], task_vectors: list[dict[str, list]]
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    base = {key: t(value) for key, value in pretrained.items()}
    return base, [{key: base[key] + t(vector[key]) for key in base} for vector in task_vectors]


# Two tasks, a 2x2 CART matrix and a 3-vector, θ_0 = 1 everywhere.
ONES = {MATRIX: [[1.0, 1.0], [1.0, 1.0]], VECTOR: [1.0, 1.0, 1.0]}
TAU_1 = {MATRIX: [[4.0, -1.0], [0.5, 2.0]], VECTOR: [-3.0, 0.25, 2.5]}
TAU_2 = {MATRIX: [[-5.0, 0.5], [1.0, 3.0]], VECTOR: [-4.0, 0.1, -2.5]}


def two_task_models() -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    return models_from_task_vectors(ONES, [TAU_1, TAU_2])


def assert_merged(merged: dict[str, torch.Tensor], expected: dict[str, list]) -> None:
    assert merged.keys() == expected.keys()
    for key, values in expected.items():
        assert_close(merged[key], t(values), rtol=0, atol=1e-6)


def test_zeroshot_is_the_pretrained_model() -> None:
    pretrained, finetuned = two_task_models()
    assert_merged(merge_state_dicts("zeroshot", pretrained, finetuned, {}), ONES)


def test_weight_averaging() -> None:
    pretrained, finetuned = two_task_models()
    # 1 + (τ_1 + τ_2) / 2
    expected = {MATRIX: [[0.5, 0.75], [1.75, 3.5]], VECTOR: [-2.5, 1.175, 1.0]}
    assert_merged(merge_state_dicts("weight_averaging", pretrained, finetuned, {}), expected)


def test_task_arithmetic() -> None:
    pretrained, finetuned = two_task_models()
    # 1 + 0.5 (τ_1 + τ_2)
    expected = {MATRIX: [[0.5, 0.75], [1.75, 3.5]], VECTOR: [-2.5, 1.175, 1.0]}
    assert_merged(merge_state_dicts("task_arithmetic", pretrained, finetuned, {"lam": 0.5}), expected)
    # 1 + 0.3 (τ_1 + τ_2) at the default λ
    expected = {MATRIX: [[0.7, 0.85], [1.45, 2.5]], VECTOR: [-1.1, 1.105, 1.0]}
    assert_merged(merge_state_dicts("task_arithmetic", pretrained, finetuned, {}), expected)


def test_ties_by_hand() -> None:
    # k = 0.6 of the 7 entries: each task keeps its floor(4.2) = 4 largest |τ_t| over both tensors.
    #   τ_1 magnitudes 4, 1, .5, 2 | 3, .25, 2.5 -> threshold 2:   trimmed [[4, 0], [0, 2]]  | [-3, 0, 2.5]
    #   τ_2 magnitudes 5, .5, 1, 3 | 4, .1, 2.5  -> threshold 2.5: trimmed [[-5, 0], [0, 3]] | [-4, 0, -2.5]
    # Σ trimmed = [[-1, 0], [0, 5]] | [-7, 0, 0], so γ = [[-, 0], [0, +]] | [-, 0, 0]; Σγ = -1 over the
    # whole model, so every zero of γ becomes -: the cancelling pair (2.5, -2.5) of the vector elects -2.5.
    # mean of agreeing entries: [[-5, 0], [0, 2.5]] | [-3.5, 0, -2.5]; sum: [[-5, 0], [0, 5]] | [-7, 0, -2.5].
    pretrained, finetuned = two_task_models()
    mean = merge_state_dicts("ties", pretrained, finetuned, {"k": 0.6, "lam": 0.5})
    assert_merged(mean, {MATRIX: [[-1.5, 1.0], [1.0, 2.25]], VECTOR: [-0.75, 1.0, -0.25]})
    summed = merge_state_dicts("ties", pretrained, finetuned, {"k": 0.6, "lam": 0.5, "merge": "sum"})
    assert_merged(summed, {MATRIX: [[-1.5, 1.0], [1.0, 3.5]], VECTOR: [-2.5, 1.0, -0.25]})


def test_ties_keeps_nothing_at_k_zero() -> None:
    pretrained, finetuned = two_task_models()
    assert_merged(merge_state_dicts("ties", pretrained, finetuned, {"k": 0.0}), ONES)


def test_magmax_by_hand() -> None:
    pretrained, finetuned = models_from_task_vectors(
        {VECTOR: [0.0, 0.0, 0.0, 0.0]}, [{VECTOR: [1.0, -3.0, 2.0, 0.5]}, {VECTOR: [-2.0, 1.0, -2.0, 0.25]}]
    )
    # largest |·| per coordinate; on the tie (2, -2) the first task wins.
    merged = merge_state_dicts("magmax", pretrained, finetuned, {"lam": 0.5})
    assert_merged(merged, {VECTOR: [-1.0, -1.5, 1.0, 0.25]})


def test_consensus_by_hand() -> None:
    # τ_MTL = [2.5, 3, 0, -2]; with λ_t = 0.5, m_t = |τ_t| > 0.5 |τ_MTL - τ_t|:
    #   coordinate 0: 1 > .75 yes, 1 > .75 yes, .5 > 1 no    -> 2 votes
    #   coordinate 1: 0 > 1.5 no, 3 > 0 yes, 0 > 1.5 no      -> 1 vote
    #   coordinate 2: 2 > 1 yes, 2 > 1 yes, 0 > 0 no         -> 2 votes
    #   coordinate 3: 1 > .5 yes, 0 > 1 no, 1 > .5 yes       -> 2 votes
    # k = 2 keeps [1, 0, 1, 1] of τ_MTL: [2.5, 0, 0, -2].
    pretrained, finetuned = models_from_task_vectors(
        {VECTOR: [0.0, 0.0, 0.0, 0.0]},
        [{VECTOR: [1.0, 0.0, 2.0, -1.0]}, {VECTOR: [1.0, 3.0, -2.0, 0.0]}, {VECTOR: [0.5, 0.0, 0.0, -1.0]}],
    )
    merged = merge_state_dicts("consensus", pretrained, finetuned, {"mask_lam": 0.5, "lam": 0.5})
    assert_merged(merged, {VECTOR: [1.25, 0.0, 0.0, -1.0]})
    # λ_3 = 3 withdraws task 3's vote on coordinate 3 (1 > 3 is false), leaving it one vote.
    per_task = merge_state_dicts("consensus", pretrained, finetuned, {"mask_lam": "0.5,0.5,3", "lam": 0.5})
    assert_merged(per_task, {VECTOR: [1.25, 0.0, 0.0, 0.0]})
    # k = 3: no coordinate has three votes.
    assert_merged(merge_state_dicts("consensus", pretrained, finetuned, {"mask_lam": 0.5, "k": 3}), {VECTOR: [0.0] * 4})


def expected_dare_mask(seed: int, task: int, key: str, shape: tuple[int, ...], p: float) -> torch.Tensor:
    """The documented seeding contract, written independently: sha256("seed:task:key")[:8], 63 bits."""
    digest = hashlib.sha256(f"{seed}:{task}:{key}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") & (2**63 - 1))
    return torch.rand(shape, generator=generator) >= p


def test_dare_by_hand() -> None:
    # τ_1 = 1 and τ_2 = 10 everywhere, p = 0.5: every entry of a 2-D delta is 2·(kept τ's) in {0, 2, 20, 22}.
    shape = (6, 5)
    pretrained = {MATRIX: torch.zeros(shape), VECTOR: torch.zeros(3)}
    finetuned = [
        {MATRIX: torch.full(shape, 1.0), VECTOR: torch.full((3,), 1.0)},
        {MATRIX: torch.full(shape, 10.0), VECTOR: torch.full((3,), 10.0)},
    ]
    merged = merge_state_dicts("dare", pretrained, finetuned, {"p": 0.5, "lam": 1.0, "seed": 3})
    first = expected_dare_mask(3, 0, MATRIX, shape, 0.5).float()
    second = expected_dare_mask(3, 1, MATRIX, shape, 0.5).float()
    assert_close(merged[MATRIX], 2.0 * first + 20.0 * second, rtol=0, atol=0)
    assert 0 < int(first.sum()) < first.numel()
    # 1-D tensors are not dropped: plain Σ τ_t.
    assert_close(merged[VECTOR], torch.full((3,), 11.0), rtol=0, atol=0)


def np_svd_k(matrix: np.ndarray, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


def np_polar(matrix: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(matrix, full_matrices=False)
    return u @ vt


def diagonal(values: list[float]) -> list[list[float]]:
    return np.diag(values).tolist()


# Three tasks whose 3x3 task vectors are diagonal, so every SVD can be read off by eye.
DIAGONAL_TAUS = [
    {MATRIX: diagonal([6.0, 1.0, 0.0]), VECTOR: [1.0, 2.0]},
    {MATRIX: diagonal([0.5, 4.5, 0.0]), VECTOR: [3.0, 0.0]},
    {MATRIX: diagonal([0.0, 0.0, 2.0]), VECTOR: [-1.0, 1.0]},
]
DIAGONAL_ORIGIN = {MATRIX: diagonal([1.0, 1.0, 1.0]), VECTOR: [0.0, 0.0]}


def test_lowrank_ta_by_hand() -> None:
    pretrained, finetuned = models_from_task_vectors(DIAGONAL_ORIGIN, DIAGONAL_TAUS)
    # rank 0.34 -> k = 1: SVD_1 keeps each diagonal's largest entry: diag(6,0,0)+diag(0,4.5,0)+diag(0,0,2).
    merged = merge_state_dicts("lowrank_ta", pretrained, finetuned, {"rank": 0.34, "lam": 0.5})
    assert_merged(merged, {MATRIX: diagonal([4.0, 3.25, 2.0]), VECTOR: [1.5, 1.5]})


def test_cart_by_hand() -> None:
    # θ_t on the matrix: 1 + diag(6,1,0), 1 + diag(.5,4.5,0), 1 + diag(0,0,2); θ_avg = 1 + diag(13/6, 11/6, 2/3).
    # τ̄_1 = diag(23/6, -5/6, -2/3), τ̄_2 = diag(-5/3, 8/3, -2/3), τ̄_3 = diag(-13/6, -11/6, 4/3).
    # k = 1 keeps each one's largest |entry|: 23/6 e1, 8/3 e2, -13/6 e1 -> sum diag(5/3, 8/3, 0).
    pretrained, finetuned = models_from_task_vectors(DIAGONAL_ORIGIN, DIAGONAL_TAUS)
    merged = merge_state_dicts("cart", pretrained, finetuned, {"rank": 0.34, "lam": 1.5})
    expected_matrix = np.eye(3) + np.diag([13 / 6, 11 / 6, 2 / 3]) + 1.5 * np.diag([5 / 3, 8 / 3, 0.0])
    # every other tensor is θ_avg: (1+3-1)/3, (2+0+1)/3
    assert_merged(merged, {MATRIX: expected_matrix.tolist(), VECTOR: [1.0, 1.0]})


def test_tsv_m_by_hand() -> None:
    # floor(3/3) = 1 triplet per task: 6 e1e1ᵀ, 4.5 e2e2ᵀ, 2 e3e3ᵀ; U = Vᵀ = I are already orthogonal.
    pretrained, finetuned = models_from_task_vectors(DIAGONAL_ORIGIN, DIAGONAL_TAUS)
    merged = merge_state_dicts("tsv_m", pretrained, finetuned, {"lam": 0.5})
    # 1-D tensors: θ_0 + λ·mean τ_t = 0.5·[1, 1]
    assert_merged(merged, {MATRIX: diagonal([4.0, 3.25, 2.0]), VECTOR: [0.5, 0.5]})


def test_iso_c_by_hand() -> None:
    # Σ τ_t = diag(6.5, 5.5, 2) -> mean singular value 14/3, U Vᵀ = I.
    pretrained, finetuned = models_from_task_vectors(DIAGONAL_ORIGIN, DIAGONAL_TAUS)
    merged = merge_state_dicts("iso_c", pretrained, finetuned, {"lam": 0.5})
    assert_merged(merged, {MATRIX: diagonal([1 + 7 / 3] * 3), VECTOR: [0.5, 0.5]})


def random_models(
    shapes: dict[str, tuple[int, ...]], num_tasks: int, seed: int
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    return perturbed_models(shapes, num_tasks, seed=seed)


def as_numpy(pretrained: dict, finetuned: list, key: str) -> tuple[np.ndarray, list[np.ndarray]]:
    return pretrained[key].double().numpy(), [model[key].double().numpy() for model in finetuned]


SHAPES = {MATRIX: (7, 5), OTHER_MATRIX: (6, 8), VECTOR: (5,)}


def test_cart_and_lowrank_ta_match_numpy() -> None:
    pretrained, finetuned = random_models(SHAPES, 3, seed=1)
    cart = merge_state_dicts("cart", pretrained, finetuned, {"rank": 0.4, "lam": 1.7})
    lowrank = merge_state_dicts("lowrank_ta", pretrained, finetuned, {"rank": 0.4, "lam": 0.7})
    for key in SHAPES:
        base, models = as_numpy(pretrained, finetuned, key)
        average = sum(models) / 3
        if key == MATRIX:  # k = floor(0.4·5) = 2
            expected_cart = average + 1.7 * sum(np_svd_k(model - average, 2) for model in models)
            expected_lowrank = base + 0.7 * sum(np_svd_k(model - base, 2) for model in models)
        else:
            expected_cart = average
            expected_lowrank = base + 0.7 * sum(model - base for model in models)
        assert_close(cart[key].double(), torch.from_numpy(expected_cart), rtol=0, atol=1e-5)
        assert_close(lowrank[key].double(), torch.from_numpy(expected_lowrank), rtol=0, atol=1e-5)


def np_tsv_m(vectors: list[np.ndarray]) -> np.ndarray:
    per_task = min(vectors[0].shape) // len(vectors)
    svds = [np.linalg.svd(vector, full_matrices=False) for vector in vectors]
    u = np.concatenate([u[:, :per_task] for u, _, _ in svds], axis=1)
    s = np.concatenate([s[:per_task] for _, s, _ in svds])
    vt = np.concatenate([vt[:per_task] for _, _, vt in svds], axis=0)
    return np_polar(u) @ np.diag(s) @ np_polar(vt)


def test_tsv_m_matches_numpy() -> None:
    pretrained, finetuned = random_models(SHAPES, 3, seed=2)
    merged = merge_state_dicts("tsv_m", pretrained, finetuned, {"lam": 0.8})
    for key in SHAPES:
        base, models = as_numpy(pretrained, finetuned, key)
        vectors = [model - base for model in models]
        delta = np_tsv_m(vectors) if len(SHAPES[key]) == 2 else sum(vectors) / 3
        assert_close(merged[key].double(), torch.from_numpy(base + 0.8 * delta), rtol=0, atol=1e-5)


def np_iso_cts(vectors: list[np.ndarray], common_fraction: float) -> np.ndarray:
    rank, tasks = min(vectors[0].shape), len(vectors)
    common = rank - round((rank - int(common_fraction * rank)) / tasks) * tasks
    per_task = (rank - common) // tasks
    u, s, vt = np.linalg.svd(sum(vectors), full_matrices=False)
    us, ss, vts = [u[:, :common]], [s[:common]], [vt[:common]]
    for vector in vectors:
        residual = vector - u[:, :common] @ u[:, :common].T @ vector
        ru, rs, rvt = np.linalg.svd(residual, full_matrices=False)
        us.append(ru[:, :per_task])
        ss.append(rs[:per_task])
        vts.append(rvt[:per_task])
    s_all = np.concatenate(ss)
    return s_all.mean() * np_polar(np.concatenate(us, axis=1)) @ np_polar(np.concatenate(vts, axis=0))


@pytest.mark.parametrize("common_fraction", [0.8, 0.3])
def test_iso_cts_and_iso_c_match_numpy(common_fraction: float) -> None:
    shapes = {MATRIX: (9, 7), OTHER_MATRIX: (6, 8), VECTOR: (5,)}
    pretrained, finetuned = random_models(shapes, 2, seed=3)
    iso_cts = merge_state_dicts("iso_cts", pretrained, finetuned, {"lam": 0.9, "common_fraction": common_fraction})
    iso_c = merge_state_dicts("iso_c", pretrained, finetuned, {"lam": 0.9})
    for key in shapes:
        base, models = as_numpy(pretrained, finetuned, key)
        vectors = [model - base for model in models]
        if len(shapes[key]) == 2:
            expected_cts = np_iso_cts(vectors, common_fraction)
            _, s, _ = np.linalg.svd(sum(vectors))
            expected_c = s.mean() * np_polar(sum(vectors))
        else:
            expected_cts = expected_c = sum(vectors) / 2
        assert_close(iso_cts[key].double(), torch.from_numpy(base + 0.9 * expected_cts), rtol=0, atol=1e-5)
        assert_close(iso_c[key].double(), torch.from_numpy(base + 0.9 * expected_c), rtol=0, atol=1e-5)
