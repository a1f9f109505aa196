"""Spectrum analysis of centered and original task vectors: energy, reconstruction error, row-space interference.

Notation (docs/methods.md): for one weight matrix W (m × n, r = min(m, n)) and task t, τ_t is the task
vector (θ_t − θ_0, "original") or the centered one (τ̄_t = θ_t − θ_avg, "centered"), with singular values
σ_{t,1} ≥ … ≥ σ_{t,r} and right singular vectors v_{t,1}, …, v_{t,r} ∈ ℝⁿ. SVD_k keeps the top k triplets.
Everything here is computed exactly from the cached factors of the `decompose` rule:

- cumulative spectral energy of one task vector: E_t(k) = Σ_{i≤k} σ_{t,i}² / Σ_{i≤r} σ_{t,i}²;
- reconstruction error over the tasks of a set 𝒲 of matrices:
  R(k) = Σ_{W∈𝒲} Σ_t ‖τ_t − SVD_k(τ_t)‖_F² / Σ_{W∈𝒲} Σ_t ‖τ_t‖_F², using ‖τ − SVD_k(τ)‖_F² = Σ_{i>k} σ_i²
  (Eckart–Young), so R(0) = 1 and R(r) = 0; for one matrix this is the issue's
  Σ_t ‖τ̄_t − SVD_k(τ̄_t)‖² / Σ_t ‖τ̄_t‖²;
- row-space interference between the tasks' top-k right singular subspaces: with V_t^k ∈ ℝ^{n×k} holding
  v_{t,1..k} as columns, the overlap of tasks s and t is O_st(k) = ‖(V_s^k)ᵀ V_t^k‖_F² / k, the mean squared
  cosine of the k principal angles between the two subspaces (0: orthogonal, 1: the same subspace), and
  I(k) = the mean of O_st(k) over the unordered task pairs s < t and over the matrices in 𝒲.
  Two independent uniformly random k-dimensional subspaces of ℝⁿ have E[O] = k / n: the chance level.

Interference measures how much the low-rank terms of different tasks act on the same input directions of W
(the rows of SVD_k(τ_t) span V_t^k), which is where they can overwrite each other in a merge.

Only the matrices CART makes low-rank are analysed (`mergeflow.merging.keys.is_cart_matrix`: attention
in/out and MLP in/out of every residual block); in every open_clip ViT they all have r = width, so k means
the same thing for all of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from safetensors import SafetensorError, safe_open

from mergeflow.evaluation.results import PathLike
from mergeflow.io import InputError
from mergeflow.merging.keys import is_cart_matrix

KINDS = ("centered", "original")
# Human-readable layer types, keyed by the end of the state-dict key.
LAYER_TYPES = {
    "attn.in_proj_weight": "attention in (QKV)",
    "attn.out_proj.weight": "attention out",
    "mlp.c_fc.weight": "MLP in (c_fc)",
    "mlp.c_proj.weight": "MLP out (c_proj)",
}
ALL_LAYERS = "all"
# Interference needs the top-k right singular vectors of every pair of tasks (cost ∝ T² k² n per matrix);
# it is computed for k ≤ this fraction of r, which covers every rank ratio CART is run at (≤ 0.32).
INTERFERENCE_MAX_RATIO = 0.5
# The decompose rule's file format (`mergeflow.merging.factors`): tensors `<key>|s` (T, r) and `<key>|vh` (T, r, n).
_FACTORS_FORMAT = "mergeflow.task_factors"
_SEPARATOR = "|"
_LAYER_TYPE_PATTERN = re.compile("(" + "|".join(re.escape(suffix) for suffix in LAYER_TYPES) + ")$")

SPECTRUM_COLUMNS = (
    "kind",
    "layer_type",
    "k",
    "rank_ratio",
    "energy_mean",
    "energy_min",
    "energy_max",
    "reconstruction_error",
    "interference",
    "chance_interference",
)


@dataclass(frozen=True)
class MatrixSpectrum:
    """What the curves need from one matrix: its tasks' singular values and subspace overlaps."""

    key: str
    layer_type: str
    num_columns: int  # n, the dimension of the row space
    singular_values: np.ndarray  # (T, r), float64, descending per task
    overlap: np.ndarray  # (k_max + 1,): I(k) of this matrix alone for k = 0..k_max; NaN at k = 0

    @property
    def rank(self) -> int:
        return self.singular_values.shape[1]


def layer_type(key: str) -> str:
    """The layer type of a CART matrix key; InputError for any other key."""
    match = _LAYER_TYPE_PATTERN.search(key)
    if not is_cart_matrix(key) or match is None:
        raise InputError(f"key {key!r} is not an attention or MLP weight matrix of a residual block")
    return LAYER_TYPES[match.group(1)]


def cumulative_energy(singular_values: np.ndarray) -> np.ndarray:
    """E_t(k) for k = 0..r, one row per task, from singular values (T, r); a zero task vector has E = 0."""
    squared = np.square(np.asarray(singular_values, dtype=np.float64))
    cumulative = np.concatenate([np.zeros((squared.shape[0], 1)), np.cumsum(squared, axis=1)], axis=1)
    total = cumulative[:, -1:]
    return np.divide(cumulative, total, out=np.zeros_like(cumulative), where=total > 0)


def reconstruction_error(singular_values: Sequence[np.ndarray]) -> np.ndarray:
    """R(k) for k = 0..r over a set of matrices, from their singular values (each (T, r), the same r)."""
    ranks = sorted({values.shape[1] for values in singular_values})
    if len(ranks) != 1:
        raise InputError(f"matrices of different min(m, n) {ranks}; R(k) needs one k axis")
    # Σ over matrices and tasks of σ_i², per component i; then R(k) = Σ_{i>k} / Σ_i.
    squared = [np.square(np.asarray(values, dtype=np.float64)) for values in singular_values]
    per_component = np.sum([values.sum(axis=0) for values in squared], axis=0)
    # tail[k] = Σ_{i>k} (0-based: components k..r-1); tail[0] is the total, so R(0) = 1 and R(r) = 0 exactly.
    tail = np.concatenate([np.cumsum(per_component[::-1])[::-1], [0.0]])
    if tail[0] <= 0:
        raise InputError("every task vector is zero; R(k) is undefined")
    return tail / tail[0]


def subspace_overlap(right_vectors: np.ndarray) -> np.ndarray:
    """I(k) of one matrix for k = 0..K (NaN at 0), from the top-K right singular vectors (T, K, n) of its tasks.

    For every pair s < t the cross-Gram matrix G = V_s V_tᵀ (K × K) is formed once; ‖(V_s^k)ᵀ V_t^k‖_F² is the
    sum of G² over its leading k × k block, read for every k from a 2-D prefix sum.
    """
    num_tasks, num_vectors, _ = right_vectors.shape
    if num_tasks < 2:
        raise InputError(f"interference needs at least two tasks, got {num_tasks}")
    diagonal = np.arange(num_vectors)
    pair_sums = np.zeros(num_vectors)
    for first in range(num_tasks - 1):
        gram = np.matmul(right_vectors[first + 1 :], right_vectors[first].T).astype(np.float64)
        prefix = np.square(gram).cumsum(axis=1).cumsum(axis=2)
        pair_sums += prefix[:, diagonal, diagonal].sum(axis=0)
    pairs = num_tasks * (num_tasks - 1) / 2
    overlap = pair_sums / pairs / np.arange(1, num_vectors + 1)
    return np.concatenate([[math.nan], overlap])


def interference_limit(rank: int, max_ratio: float = INTERFERENCE_MAX_RATIO) -> int:
    """Largest k at which interference is computed: floor(max_ratio · r), at least 1."""
    return max(1, math.floor(max_ratio * rank))


def matrix_spectrum(key: str, singular_values: np.ndarray, right_vectors: np.ndarray) -> MatrixSpectrum:
    """Summarise one matrix from its factors: singular values (T, r) and top right singular vectors (T, K, n)."""
    if singular_values.ndim != 2 or right_vectors.ndim != 3 or right_vectors.shape[0] != singular_values.shape[0]:
        raise InputError(
            f"key {key!r}: singular values {list(singular_values.shape)} and right singular vectors "
            f"{list(right_vectors.shape)}; expected (T, r) and (T, k, n) for the same T"
        )
    values = np.asarray(singular_values, dtype=np.float64)
    return MatrixSpectrum(key, layer_type(key), right_vectors.shape[2], values, subspace_overlap(right_vectors))


def read_matrix_spectra(path: PathLike, kind: str, max_ratio: float = INTERFERENCE_MAX_RATIO) -> list[MatrixSpectrum]:
    """The CART matrices' spectra from a task-factors file of `kind` ("centered" or "original").

    Streams one key at a time and reads only the top `interference_limit(r)` rows of each `vh`, so memory
    stays at one matrix's T leading subspaces however large the file (tens of GB for ViT-L/14 on 20 tasks).
    """
    if kind not in KINDS:
        raise InputError(f"unknown task-vector kind {kind!r}; expected one of {', '.join(KINDS)}")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            _check_factors_metadata(path, handle.metadata() or {}, kind)
            names = set(handle.keys())
            keys = sorted({name.rpartition(_SEPARATOR)[0] for name in names})
            spectra = []
            for key in filter(is_cart_matrix, keys):
                missing = [part for part in ("s", "vh") if f"{key}{_SEPARATOR}{part}" not in names]
                if missing:
                    raise InputError(f"{path}: key {key!r} lacks its {' and '.join(missing)} factor")
                singular_values = handle.get_tensor(f"{key}{_SEPARATOR}s")
                limit = interference_limit(singular_values.shape[1], max_ratio)
                right_vectors = handle.get_slice(f"{key}{_SEPARATOR}vh")[:, :limit, :]
                spectra.append(matrix_spectrum(key, singular_values, right_vectors))
    except (SafetensorError, OSError) as err:
        raise InputError(f"{path}: not a readable safetensors file ({err})") from None
    if not spectra:
        raise InputError(f"{path}: no attention or MLP weight matrices; expected the factors of an open_clip ViT")
    return spectra


def _check_factors_metadata(path: PathLike, metadata: dict[str, str], kind: str) -> None:
    if metadata.get("format") != _FACTORS_FORMAT:
        raise InputError(f"{path}: not a mergeflow task-factors file (expected one written by `mergeflow decompose`)")
    have = "centered" if metadata.get("centered") == "true" else "original"
    if have != kind:
        raise InputError(f"{path}: holds {have} task factors; expected {kind} ones")


def spectrum_curves(spectra_by_kind: Mapping[str, Sequence[MatrixSpectrum]]) -> pd.DataFrame:
    """Every curve of the spectrum figures as one tidy frame (columns `SPECTRUM_COLUMNS`).

    One row per (kind, layer type, k = 0..r), layer type "all" pooling every matrix, then each layer type.
    energy_mean / energy_min / energy_max: mean, min and max of E_t(k) over the tasks and matrices of that
    layer type; reconstruction_error: R(k) over those matrices; interference: I(k) (NaN at k = 0 and above
    k_max); chance_interference: the mean of k / n over those matrices.
    """
    frames = []
    for kind, spectra in spectra_by_kind.items():
        ranks = sorted({spectrum.rank for spectrum in spectra})
        if len(ranks) != 1:
            raise InputError(
                f"{kind} factors: matrices of different min(m, n) {ranks}; expected one k axis "
                "(every attention and MLP matrix of an open_clip ViT has min(m, n) = width)"
            )
        groups = {ALL_LAYERS: list(spectra)}
        for name in LAYER_TYPES.values():
            members = [spectrum for spectrum in spectra if spectrum.layer_type == name]
            if members:
                groups[name] = members
        frames += [_group_curves(kind, name, members) for name, members in groups.items()]
    return pd.concat(frames, ignore_index=True).loc[:, list(SPECTRUM_COLUMNS)]


def _group_curves(kind: str, name: str, members: Sequence[MatrixSpectrum]) -> pd.DataFrame:
    rank = members[0].rank
    k = np.arange(rank + 1)
    energy = np.concatenate([cumulative_energy(member.singular_values) for member in members])
    limit = min(len(member.overlap) for member in members)
    interference = np.full(rank + 1, math.nan)
    interference[:limit] = np.mean([member.overlap[:limit] for member in members], axis=0)
    return pd.DataFrame(
        {
            "kind": kind,
            "layer_type": name,
            "k": k,
            "rank_ratio": k / rank,
            "energy_mean": energy.mean(axis=0),
            "energy_min": energy.min(axis=0),
            "energy_max": energy.max(axis=0),
            "reconstruction_error": reconstruction_error([member.singular_values for member in members]),
            "interference": interference,
            "chance_interference": np.mean([k / member.num_columns for member in members], axis=0),
        }
    )
