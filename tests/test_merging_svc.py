"""Singular Value Calibration against direct transcriptions of FusionBench's code, and its identities."""

from __future__ import annotations

import pytest
import torch

from mergeflow.merging.methods.svc import calibrated_tensor, calibrated_update

ALPHAS = (0.1, 0.2, 1.0, 2.0)
IN_PROJ = "visual.transformer.resblocks.0.attn.in_proj_weight"


def fusion_bench_accelerated(
    base_weight: torch.Tensor, task_weights: list[torch.Tensor], merged_weight: torch.Tensor, alpha: float
) -> torch.Tensor:
    """tanganke/fusion_bench @ 54c9e8c9, fusion_bench/method/singular_value_calibration/utils.py L201-275
    (`subspace_consistency_spectral_calibration_accelerated`), on the CPU: transcribed line by line, with the
    choice of accelerator left out."""
    original_device = base_weight.device
    original_dtype = merged_weight.dtype

    compute_dtype = torch.float64
    base_weight = base_weight.to(original_device, dtype=compute_dtype)
    merged_weight = merged_weight.to(original_device, dtype=compute_dtype)
    task_weights = [task_weight.to(original_device, dtype=compute_dtype) for task_weight in task_weights]

    delta_task_matrices = torch.stack([task_weight - base_weight for task_weight in task_weights], dim=0)
    delta_merged_matrix = merged_weight - base_weight

    U_merged, S_merged, Vh_merged = torch.linalg.svd(delta_merged_matrix, full_matrices=False)

    U_sel = U_merged.transpose(0, 1).contiguous()
    merged_responses = U_sel @ delta_merged_matrix
    task_responses = torch.einsum("rm,kmn->rkn", U_sel, delta_task_matrices)

    denom = (task_responses * task_responses).sum(dim=-1).clamp_min(1e-12)
    projection_coefficients = torch.einsum("rn,rkn->rk", merged_responses, task_responses) / denom
    projection_coefficients = torch.nan_to_num(projection_coefficients, nan=alpha, neginf=alpha)

    alpha_t = torch.as_tensor(alpha, device=projection_coefficients.device, dtype=projection_coefficients.dtype)
    calibration_factors = delta_task_matrices.shape[0] / torch.maximum(projection_coefficients, alpha_t).sum(dim=1)

    S_calibrated = calibration_factors.to(S_merged.dtype) * S_merged
    delta_merged_matrix_calibrated = (U_merged * S_calibrated.unsqueeze(0)) @ Vh_merged
    W_calibrated = delta_merged_matrix_calibrated + base_weight

    return W_calibrated.to(original_device, dtype=original_dtype, non_blocking=False)


def fusion_bench_loop(
    base_weight: torch.Tensor, task_weights: list[torch.Tensor], merged_weight: torch.Tensor, alpha: float
) -> torch.Tensor:
    """The same file, L14-76 and L112-198 (`subspace_consistency_spectral_calibration` with the helpers
    `project_onto_singular_vectors` and `compute_projection_coefficient` inlined), on the CPU.

    Kept as written: no clamp of ‖a_r^i‖², and `torch.as_tensor` of the γ_r gives float32 when every one of
    them is a Python float (every s_r^i ≤ alpha), which the tests here never reach."""
    delta_task_matrices = [task_weight - base_weight for task_weight in task_weights]
    delta_merged_matrix = merged_weight - base_weight

    U_merged, S_merged, Vh_merged = torch.linalg.svd(delta_merged_matrix, full_matrices=False)

    def project_onto_singular_vectors(task_matrix: torch.Tensor, U: torch.Tensor) -> list[torch.Tensor]:
        num_subspaces = min(U.shape[1], min(U.shape[1], task_matrix.shape[0]))
        return [(U[:, r].view(1, -1) @ task_matrix).squeeze(0) for r in range(num_subspaces)]

    def compute_projection_coefficient(merged_response: torch.Tensor, task_response: torch.Tensor) -> torch.Tensor:
        norm_squared = torch.dot(task_response, task_response)
        projection = torch.dot(merged_response, task_response)
        return projection / norm_squared

    task_responses = [project_onto_singular_vectors(matrix, U_merged) for matrix in delta_task_matrices]
    merged_responses = project_onto_singular_vectors(delta_merged_matrix, U_merged)

    projection_coefficients = [
        [
            compute_projection_coefficient(merged_responses[r], task_responses[i][r])
            for r in range(len(merged_responses))
        ]
        for i in range(len(task_responses))
    ]

    calibration_factors = []
    K = len(task_responses)
    for r in range(len(merged_responses)):
        gamma_r = K / sum(max(alpha, s_r) for s_r in [projection_coefficients[i][r] for i in range(K)])
        calibration_factors.append(gamma_r)

    S_calibrated = torch.as_tensor(calibration_factors) * S_merged
    delta_merged_matrix_calibrated = U_merged @ torch.diag(S_calibrated) @ Vh_merged
    return delta_merged_matrix_calibrated + base_weight


def random_weights(
    shape: tuple[int, int], num_tasks: int, seed: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """θ_0, the θ_t (θ_0 plus task vectors ~1e-2), and a task-arithmetic merge θ_0 + Σ_t τ_t.

    Scaled by 1 rather than FusionBench's 0.3: at 0.3 every s_r^i of these independent τ_t is below 1, so
    alpha = 1 would leave the update as it is (γ_r = K / K) and test nothing."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(*shape, generator=generator, dtype=dtype)
    tasks = [base + 1e-2 * torch.randn(*shape, generator=generator, dtype=dtype) for _ in range(num_tasks)]
    merged = base + sum(task - base for task in tasks)
    return base, tasks, merged


def exact_updates(
    base: torch.Tensor, tasks: list[torch.Tensor], merged: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ΔW_merge and the τ_t as FusionBench forms them: float64 differences of the weights."""
    base64 = base.to(torch.float64)
    return merged.to(torch.float64) - base64, torch.stack([task.to(torch.float64) - base64 for task in tasks])


SHAPES = ((0, (6, 6), 3), (1, (12, 4), 4), (2, (4, 12), 2), (3, (9, 7), 8), (4, (96, 32), 4))


def test_equals_fusion_bench_accelerated_bit_for_bit() -> None:
    for seed, shape, num_tasks in SHAPES:
        base, tasks, merged = random_weights(shape, num_tasks, seed)
        merged_update, task_vectors = exact_updates(base, tasks, merged)
        for alpha in ALPHAS:
            ours = calibrated_update(merged_update, task_vectors, alpha)
            assert ours.dtype == torch.float64
            weight = (ours + base.to(torch.float64)).to(torch.float32)
            theirs = fusion_bench_accelerated(base, tasks, merged, alpha)
            assert torch.equal(weight, theirs), (shape, alpha)
            assert not torch.equal(theirs, merged)


def test_equals_fusion_bench_accelerated_bit_for_bit_on_float64_weights() -> None:
    # Their result is then float64 too, so every rounding of the update shows (a float32 weight hides most:
    # forming U diag(γS) Vᵀ with torch.diag instead rounds the (96, 32) update apart, not its float32 weight).
    for seed, shape, num_tasks in SHAPES:
        base, tasks, merged = random_weights(shape, num_tasks, seed, dtype=torch.float64)
        merged_update, task_vectors = exact_updates(base, tasks, merged)
        for alpha in ALPHAS:
            ours = calibrated_update(merged_update, task_vectors, alpha) + base
            assert torch.equal(ours, fusion_bench_accelerated(base, tasks, merged, alpha)), (shape, alpha)


def test_close_to_fusion_bench_loop_in_float64() -> None:
    for seed, shape, num_tasks in SHAPES:
        base, tasks, merged = random_weights(shape, num_tasks, seed, dtype=torch.float64)
        merged_update, task_vectors = exact_updates(base, tasks, merged)
        for alpha in ALPHAS:
            ours = calibrated_update(merged_update, task_vectors, alpha)
            theirs = fusion_bench_loop(base, tasks, merged, alpha) - base
            assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-15), (shape, alpha)
            # the calibration moved the update by far more than the tolerance
            assert float((ours - merged_update).abs().max()) > 1e-4


def test_keeps_the_input_dtype_and_computes_in_float64() -> None:
    base, tasks, merged = random_weights((6, 5), 3, 7)
    merged_update, task_vectors = merged - base, torch.stack([task - base for task in tasks])
    ours = calibrated_update(merged_update, task_vectors, 0.1)
    assert ours.dtype == torch.float32
    expected = calibrated_update(merged_update.to(torch.float64), task_vectors.to(torch.float64), 0.1)
    assert torch.equal(ours, expected.to(torch.float32))


def test_single_task_merged_as_itself_is_unchanged_for_alpha_up_to_one() -> None:
    # s_r = ⟨a_r, a_r⟩ / ‖a_r‖² = 1 in every direction, γ_r = 1 / max(alpha, 1).
    vector = torch.randn(1, 7, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    for alpha in (0.1, 0.5, 1.0):
        assert torch.allclose(calibrated_update(vector[0], vector, alpha), vector[0], rtol=0, atol=1e-13)
    assert torch.allclose(calibrated_update(vector[0], vector, 2.0), vector[0] / 2, rtol=0, atol=1e-13)


def test_identical_tasks_summed_come_back_to_one_task() -> None:
    # K copies summed: s_r^i = K for every task and direction, γ_r = K / (K · max(alpha, K)) = 1/K for alpha ≤ K.
    vector = torch.randn(6, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    vectors = vector.expand(4, 6, 4)
    for alpha in (0.1, 1.0, 4.0):
        assert torch.allclose(calibrated_update(4 * vector, vectors, alpha), vector, rtol=0, atol=1e-13)


def test_diagonal_example_by_hand() -> None:
    # τ_1 = diag(2, 0), τ_2 = diag(2, 1), ΔW = τ_1 + τ_2 = diag(4, 1): U = V = I (up to signs, which cancel in s),
    # S = (4, 1), alpha = 0.5, K = 2.
    # r = 1: a = (4, 0), a^1 = a^2 = (2, 0): s^1 = s^2 = 8 / 4 = 2; γ_1 = 2 / (2 + 2) = 0.5.
    # r = 2: a = (0, 1), a^1 = (0, 0), a^2 = (0, 1): s^1 = 0 / max(0, 1e-12) = 0, s^2 = 1 / 1 = 1;
    #        γ_2 = 2 / (max(0.5, 0) + max(0.5, 1)) = 2 / 1.5 = 4/3.
    # ΔW' = diag(4 · 0.5, 1 · 4/3) = diag(2, 4/3).
    vectors = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    result = calibrated_update(vectors.sum(dim=0), vectors, 0.5)
    expected = torch.tensor([[2.0, 0.0], [0.0, 4.0 / 3.0]], dtype=torch.float64)
    assert torch.allclose(result, expected, rtol=0, atol=1e-14)
    # alpha = 3 floors both coefficients of r = 1 and r = 2: γ_1 = 2 / (3 + 3), γ_2 = 2 / (3 + 3), diag(4/3, 1/3).
    expected = torch.tensor([[4.0 / 3.0, 0.0], [0.0, 1.0 / 3.0]], dtype=torch.float64)
    assert torch.allclose(calibrated_update(vectors.sum(dim=0), vectors, 3.0), expected, rtol=0, atol=1e-14)


def test_zero_task_vectors_give_a_finite_result() -> None:
    # ‖a_r^i‖² = 0 would make s = 0/0 = NaN (which FusionBench replaces with alpha), but its clamp to 1e-12 comes
    # first: s = 0 / 1e-12 = 0, so max(alpha, 0) = alpha and γ_r = K / (K · alpha) = 1 / alpha.
    vectors = torch.zeros(3, 6, 4)
    result = calibrated_update(torch.zeros(6, 4), vectors, 0.1)
    assert torch.equal(result, torch.zeros(6, 4))
    merged_update = torch.randn(6, 4, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    result = calibrated_update(merged_update, vectors.to(torch.float64), 0.1)
    assert bool(torch.isfinite(result).all())
    assert torch.allclose(result, merged_update / 0.1, rtol=1e-12, atol=0)
    base = torch.randn(6, 4, generator=torch.Generator().manual_seed(11))
    merged = base + merged_update.to(torch.float32)
    theirs = fusion_bench_accelerated(base, [base.clone() for _ in range(3)], merged, 0.1)
    ours = (calibrated_update(*exact_updates(base, [base] * 3, merged), 0.1) + base.to(torch.float64)).float()
    assert torch.equal(ours, theirs)


def test_in_proj_is_calibrated_as_q_k_v_apart() -> None:
    width = 4
    base, tasks, merged = random_weights((3 * width, width), 3, 12)
    merged_update, task_vectors = exact_updates(base, tasks, merged)
    ours = calibrated_tensor(IN_PROJ, merged_update, task_vectors, 0.1)
    blocks = [slice(i * width, (i + 1) * width) for i in range(3)]
    apart = torch.cat([calibrated_update(merged_update[b].clone(), task_vectors[:, b].clone(), 0.1) for b in blocks])
    assert torch.equal(ours, apart)
    whole = calibrated_update(merged_update, task_vectors, 0.1)
    assert not torch.allclose(ours, whole, rtol=1e-3, atol=1e-6)
    # what FusionBench does to Hugging Face's separate q_proj, k_proj, v_proj weights
    theirs = torch.cat([fusion_bench_accelerated(base[b], [task[b] for task in tasks], merged[b], 0.1) for b in blocks])
    assert torch.equal((ours + base.to(torch.float64)).to(torch.float32), theirs)


def test_other_matrices_are_calibrated_whole() -> None:
    base, tasks, merged = random_weights((12, 4), 3, 13)
    merged_update, task_vectors = exact_updates(base, tasks, merged)
    whole = calibrated_update(merged_update, task_vectors, 0.2)
    for key in (
        "visual.transformer.resblocks.0.attn.out_proj.weight",
        "visual.transformer.resblocks.0.mlp.c_fc.weight",
        "visual.positional_embedding",
        "visual.proj",
    ):
        assert torch.equal(calibrated_tensor(key, merged_update, task_vectors, 0.2), whole), key


def test_other_tensors_come_back_unchanged() -> None:
    generator = torch.Generator().manual_seed(14)
    for key, shape in (
        ("visual.transformer.resblocks.0.attn.in_proj_bias", (12,)),
        ("visual.class_embedding", (4,)),
        ("visual.conv1.weight", (4, 3, 2, 2)),
    ):
        merged_update = torch.randn(*shape, generator=generator)
        task_vectors = torch.randn(3, *shape, generator=generator)
        result = calibrated_tensor(key, merged_update, task_vectors, 0.1)
        assert result is merged_update
        assert torch.equal(result, merged_update.clone())


def test_in_proj_rows_must_stack_three_blocks() -> None:
    with pytest.raises(ValueError, match="q, k, v"):
        calibrated_tensor(IN_PROJ, torch.randn(10, 4), torch.randn(2, 10, 4), 0.1)
