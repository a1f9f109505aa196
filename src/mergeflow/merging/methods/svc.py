"""Singular Value Calibration (SVC, arXiv 2602.05536): shrink the singular values of a merged update that several
tasks over-count.

Followed: tanganke/fusion_bench @ 54c9e8c9d9621620c720452cd8533332a32d3689,
`fusion_bench/method/singular_value_calibration/utils.py` L201-275
(`subspace_consistency_spectral_calibration_accelerated`), the implementation `svc.py` L35-39 picks unless
FUSION_BENCH_SVC_IMPL=original selects the loop-based `subspace_consistency_spectral_calibration` (utils.py
L112-198; same rule, no clamp, in the weights' dtype). For a merged update ΔW = U S Vᵀ (m, n) and task vectors
τ_1..τ_K, in float64:

    a_r = u_rᵀ ΔW,  a_r^i = u_rᵀ τ_i,  s_r^i = ⟨a_r, a_r^i⟩ / max(‖a_r^i‖², 1e-12)  (NaN → alpha),
    γ_r = K / Σ_i max(alpha, s_r^i),  ΔW' = U diag(γ S) Vᵀ,

with the operations in their order, so that ΔW' matches theirs bit for bit (tests/test_merging_svc.py). s_r^i
is how many times the merged update carries task i's response along u_r; γ_r undoes the over-count. The
hyper-parameter is `alpha`, the floor on s_r^i: alpha ≤ 1 lets directions the merge under-counts (s < 1) grow,
a larger alpha shrinks every direction more. alpha > 0 keeps γ finite: the clamp turns a task that is zero
along u_r into s = 0, so a matrix on which every task vector is zero gets γ = 1/alpha.

FusionBench's `alpha` per base method (`config/method/singular_value_calibration/*.yaml`, same commit):
task_arithmetic 0.1 (scaling_factor 0.3), simple_average 0.1, ties_merging 0.1 (scaling_factor 0.3,
threshold 20), dare_task_arithmetic 0.1 (scaling_factor 0.3, sparsity_ratio 0.5), iso_c 0.1 (scaling_factor
1.5), iso_cts 0.2 (scaling_factor 1.5, common_space_fraction 0.8), task_singular_vector 1.0, wudi 1.0.

Which tensors: FusionBench calibrates every parameter with dim() == 2 and leaves the others as the base method
merged them (svc.py L69-91). It runs on Hugging Face's `transformers.CLIPVisionModel`
(`fusion_bench/modelpool/clip_vision/modelpool.py` L116), whose attention keeps q_proj, k_proj and v_proj as
three (d, d) matrices; open_clip stacks them as one `attn.in_proj_weight` of shape (3d, d), rows q, k, v. The
SVD of the stack mixes the three subspaces, so to calibrate what FusionBench calibrates we split that tensor
into its three row blocks, calibrate each alone and stack them again. Every other 2-D tensor (out_proj, c_fc,
c_proj, positional_embedding, proj) is calibrated whole. (`proj` has no counterpart there: FusionBench takes the
visual projection from the pretrained CLIP, fusion_bench/mixins/clip_classification.py L190.)
"""

from __future__ import annotations

import torch

IN_PROJ_SUFFIX = "attn.in_proj_weight"
# FusionBench's floor on ‖a_r^i‖² (utils.py L251).
_MIN_SQUARED_NORM = 1e-12


def projection_coefficients(
    basis: torch.Tensor, merged_update: torch.Tensor, task_vectors: torch.Tensor
) -> torch.Tensor:
    """s_r^i = ⟨a_r, a_r^i⟩ / max(‖a_r^i‖², 1e-12), shape (R, K), for the rows u_rᵀ of `basis` (R, m)."""
    merged_responses = basis @ merged_update
    task_responses = torch.einsum("rm,kmn->rkn", basis, task_vectors)
    denom = (task_responses * task_responses).sum(dim=-1).clamp_min(_MIN_SQUARED_NORM)
    return torch.einsum("rn,rkn->rk", merged_responses, task_responses) / denom


def calibration_factors(coefficients: torch.Tensor, alpha: float) -> torch.Tensor:
    """γ_r = K / Σ_i max(alpha, s_r^i) from the (R, K) coefficients, NaN and −inf counted as alpha."""
    coefficients = torch.nan_to_num(coefficients, nan=alpha, neginf=alpha)
    floor = torch.as_tensor(alpha, device=coefficients.device, dtype=coefficients.dtype)
    return coefficients.shape[1] / torch.maximum(coefficients, floor).sum(dim=1)


def calibrated_update(merged_update: torch.Tensor, task_vectors: torch.Tensor, alpha: float) -> torch.Tensor:
    """U diag(γ S) Vᵀ for the merged update ΔW = U S Vᵀ (m, n) and task vectors (K, m, n), in ΔW's dtype.

    Computed in float64 whatever the inputs' dtype, as FusionBench does.
    """
    merged = merged_update.to(torch.float64)
    vectors = task_vectors.to(torch.float64)
    u, s, vh = torch.linalg.svd(merged, full_matrices=False)
    gamma = calibration_factors(projection_coefficients(u.transpose(0, 1).contiguous(), merged, vectors), alpha)
    calibrated = (u * (gamma.to(s.dtype) * s).unsqueeze(0)) @ vh
    return calibrated.to(merged_update.dtype)


def calibrated_tensor(key: str, merged_update: torch.Tensor, task_vectors: torch.Tensor, alpha: float) -> torch.Tensor:
    """`calibrated_update` of a 2-D floating-point tensor, of each of q, k, v apart for an attention in_proj.

    Any other tensor is returned unchanged (the very object).
    """
    if merged_update.ndim != 2 or not merged_update.is_floating_point():
        return merged_update
    if not key.endswith(IN_PROJ_SUFFIX):
        return calibrated_update(merged_update, task_vectors, alpha)
    rows = merged_update.shape[0]
    if rows % 3:
        raise ValueError(f"{key}: in_proj weight of shape {tuple(merged_update.shape)} does not stack q, k, v")
    width = rows // 3
    blocks = [
        calibrated_update(merged_update[start : start + width], task_vectors[:, start : start + width], alpha)
        for start in range(0, rows, width)
    ]
    return torch.cat(blocks, dim=0)
