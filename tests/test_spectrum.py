"""Spectrum analysis: energy, R(k) and interference by hand and against torch SVDs; factor files; figures; CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mergeflow.commands.report import main
from mergeflow.io import InputError, save_state_dict
from mergeflow.merging import compute_task_factors, save_task_factors
from mergeflow.report.spectrum import (
    ALL_LAYERS,
    LAYER_TYPES,
    SPECTRUM_COLUMNS,
    cumulative_energy,
    interference_limit,
    layer_type,
    read_matrix_spectra,
    reconstruction_error,
    spectrum_curves,
    subspace_overlap,
)
from mergeflow.report.spectrum_figures import plot_spectrum_energy, plot_spectrum_error_interference

WIDTH, BLOCKS, NUM_TASKS = 12, 2, 3
MATRIX_SHAPES = {
    "attn.in_proj_weight": (3 * WIDTH, WIDTH),
    "attn.out_proj.weight": (WIDTH, WIDTH),
    "mlp.c_fc.weight": (4 * WIDTH, WIDTH),
    "mlp.c_proj.weight": (WIDTH, 4 * WIDTH),
}


def _state_dict(generator: torch.Generator, scale: float) -> dict[str, torch.Tensor]:
    """An open_clip-shaped image encoder: CART matrices in every block, plus tensors the analysis must skip."""
    tensors = {
        f"transformer.resblocks.{block}.{suffix}": scale * torch.randn(shape, generator=generator)
        for block in range(BLOCKS)
        for suffix, shape in MATRIX_SHAPES.items()
    }
    tensors["proj"] = scale * torch.randn((WIDTH, 8), generator=generator)
    tensors["ln_post.weight"] = scale * torch.randn((WIDTH,), generator=generator)
    return tensors


@pytest.fixture(scope="module")
def models() -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(0)
    pretrained = _state_dict(generator, 1.0)
    finetuned = [
        {key: value + delta for (key, value), delta in zip(pretrained.items(), _state_dict(generator, 0.1).values())}
        for _ in range(NUM_TASKS)
    ]
    return pretrained, finetuned


@pytest.fixture(scope="module")
def factor_files(models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pretrained, finetuned = models
    directory = tmp_path_factory.mktemp("svd")
    paths = {}
    for kind in ("centered", "original"):
        paths[kind] = directory / f"{kind}.safetensors"
        save_task_factors(paths[kind], compute_task_factors(pretrained, finetuned, centered=kind == "centered"))
    return paths


@pytest.fixture(scope="module")
def curves(factor_files: dict[str, Path]) -> pd.DataFrame:
    return spectrum_curves({kind: read_matrix_spectra(path, kind) for kind, path in factor_files.items()})


def test_reconstruction_error_is_one_at_k_zero_and_zero_at_full_rank() -> None:
    singular_values = np.sort(np.random.default_rng(0).random((5, 7)), axis=1)[:, ::-1]
    error = reconstruction_error([singular_values, 2 * singular_values])
    assert len(error) == 8
    assert error[0] == 1.0 and error[-1] == 0.0
    assert np.all(np.diff(error) <= 0)


def test_reconstruction_error_by_hand() -> None:
    # One matrix, two tasks: σ² = (9, 1) and (4, 0); Σσ² = 14. Keeping 1 component loses 1 + 0.
    error = reconstruction_error([np.array([[3.0, 1.0], [2.0, 0.0]])])
    assert error.tolist() == pytest.approx([1.0, 1 / 14, 0.0])


def test_reconstruction_error_equals_truncated_svd_residuals() -> None:
    generator = torch.Generator().manual_seed(1)
    vectors = torch.randn((4, 9, 6), generator=generator, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(vectors, full_matrices=False)
    error = reconstruction_error([s.numpy()])
    total = float((vectors**2).sum())
    for k in range(7):
        truncated = u[:, :, :k] @ torch.diag_embed(s[:, :k]) @ vh[:, :k, :]
        assert error[k] == pytest.approx(float(((vectors - truncated) ** 2).sum()) / total, abs=1e-12)


def test_reconstruction_error_rejects_zero_vectors_and_mixed_ranks() -> None:
    with pytest.raises(InputError, match="every task vector is zero"):
        reconstruction_error([np.zeros((2, 3))])
    with pytest.raises(InputError, match=r"different min\(m, n\) \[2, 3\]"):
        reconstruction_error([np.ones((2, 3)), np.ones((2, 2))])


def test_cumulative_energy_by_hand() -> None:
    energy = cumulative_energy(np.array([[4.0, 3.0], [0.0, 0.0]]))
    np.testing.assert_allclose(energy, [[0.0, 16 / 25, 1.0], [0.0, 0.0, 0.0]], rtol=1e-12)


def _rotation(angle: float) -> np.ndarray:
    return np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])


def test_subspace_overlap_by_hand() -> None:
    # Two tasks in R²: first right singular vectors at an angle a, so O(1) = cos² a; both span R² at k = 2.
    angle = 0.4
    right_vectors = np.stack([np.eye(2), _rotation(angle)])
    overlap = subspace_overlap(right_vectors)
    assert math.isnan(overlap[0])
    assert overlap[1:].tolist() == pytest.approx([math.cos(angle) ** 2, 1.0])


def test_subspace_overlap_of_identical_and_orthogonal_tasks() -> None:
    basis = np.eye(6)
    identical = subspace_overlap(np.stack([basis[:3]] * 3))
    assert identical[1:].tolist() == pytest.approx([1.0, 1.0, 1.0])
    orthogonal = subspace_overlap(np.stack([basis[:3], basis[3:]]))
    assert orthogonal[1:].tolist() == [0.0, 0.0, 0.0]


def test_subspace_overlap_of_random_subspaces_is_near_chance() -> None:
    generator = np.random.default_rng(2)
    dimension, tasks = 400, 6
    right_vectors = np.stack([np.linalg.qr(generator.standard_normal((dimension, 40)))[0].T for _ in range(tasks)])
    overlap = subspace_overlap(right_vectors)
    for k in (10, 20, 40):
        assert overlap[k] == pytest.approx(k / dimension, rel=0.2)


def test_subspace_overlap_needs_two_tasks() -> None:
    with pytest.raises(InputError, match="at least two tasks, got 1"):
        subspace_overlap(np.eye(3)[None])


def test_layer_types_of_open_clip_keys() -> None:
    assert layer_type("visual.transformer.resblocks.11.mlp.c_proj.weight") == "MLP out (c_proj)"
    assert layer_type("transformer.resblocks.0.attn.in_proj_weight") == "attention in (QKV)"
    with pytest.raises(InputError, match="'proj' is not an attention or MLP weight matrix"):
        layer_type("proj")


def test_factor_files_give_every_cart_matrix_and_nothing_else(factor_files: dict[str, Path]) -> None:
    spectra = read_matrix_spectra(factor_files["original"], "original")
    assert len(spectra) == BLOCKS * len(MATRIX_SHAPES)
    assert {spectrum.layer_type for spectrum in spectra} == set(LAYER_TYPES.values())
    assert all(spectrum.rank == WIDTH for spectrum in spectra)
    c_proj = next(spectrum for spectrum in spectra if spectrum.key.endswith("c_proj.weight"))
    assert c_proj.num_columns == 4 * WIDTH
    assert len(c_proj.overlap) == interference_limit(WIDTH) + 1 == WIDTH // 2 + 1


def test_reconstruction_error_from_files_matches_the_task_vectors(models, curves: pd.DataFrame) -> None:
    pretrained, finetuned = models
    keys = [key for key in pretrained if key.startswith("transformer.")]
    average = {key: sum(model[key] for model in finetuned) / NUM_TASKS for key in keys}
    for kind, origin in (("centered", average), ("original", pretrained)):
        vectors = [torch.stack([model[key] - origin[key] for model in finetuned]).double() for key in keys]
        pooled = curves[(curves["kind"] == kind) & (curves["layer_type"] == ALL_LAYERS)].set_index("k")
        total = sum(float((v**2).sum()) for v in vectors)
        for k in (0, 1, 3, WIDTH):
            u, s, vh = zip(*(torch.linalg.svd(v, full_matrices=False) for v in vectors), strict=True)
            lost = sum(
                float(((v - a[:, :, :k] @ torch.diag_embed(b[:, :k]) @ c[:, :k, :]) ** 2).sum())
                for v, a, b, c in zip(vectors, u, s, vh, strict=True)
            )
            assert pooled.loc[k, "reconstruction_error"] == pytest.approx(lost / total, abs=1e-5)


def test_two_centered_tasks_share_their_row_spaces(models, tmp_path: Path) -> None:
    # With T = 2, τ̄_1 = −τ̄_2: the same singular subspaces, so the interference is 1 at every k.
    pretrained, finetuned = models
    path = tmp_path / "centered.safetensors"
    save_task_factors(path, compute_task_factors(pretrained, finetuned[:2], centered=True))
    curves = spectrum_curves({"centered": read_matrix_spectra(path, "centered")})
    measured = curves.loc[curves["interference"].notna(), "interference"]
    assert len(measured) > 0
    assert measured.to_numpy() == pytest.approx(1.0, abs=1e-4)


def test_curves_frame_layout(curves: pd.DataFrame) -> None:
    assert list(curves.columns) == list(SPECTRUM_COLUMNS)
    assert list(pd.unique(curves["layer_type"])) == [ALL_LAYERS, *LAYER_TYPES.values()]
    assert len(curves) == 2 * (1 + len(LAYER_TYPES)) * (WIDTH + 1)
    pooled = curves[(curves["kind"] == "original") & (curves["layer_type"] == ALL_LAYERS)].set_index("k")
    assert pooled.loc[WIDTH, "rank_ratio"] == 1.0
    assert pooled.loc[0, "energy_mean"] == 0.0 and pooled.loc[WIDTH, "energy_min"] == pytest.approx(1.0)
    # Chance level: mean of k / n over 2 blocks x (n = 12, 12, 12, 48).
    assert pooled.loc[6, "chance_interference"] == pytest.approx((3 * 6 / 12 + 6 / 48) / 4)
    limit = interference_limit(WIDTH)
    assert pooled["interference"].isna().tolist() == [True] + [False] * limit + [True] * (WIDTH - limit)
    assert ((pooled["interference"].dropna() >= 0) & (pooled["interference"].dropna() <= 1 + 1e-9)).all()


def test_wrong_kind_and_wrong_file_are_named(factor_files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"centered\.safetensors: holds centered task factors; expected original"):
        read_matrix_spectra(factor_files["centered"], "original")
    plain = tmp_path / "model.safetensors"
    save_state_dict(plain, {"transformer.resblocks.0.attn.in_proj_weight": torch.zeros(3, 1)})
    with pytest.raises(InputError, match=r"model\.safetensors: not a mergeflow task-factors file"):
        read_matrix_spectra(plain, "centered")
    with pytest.raises(InputError, match=r"absent\.safetensors: not a readable safetensors file"):
        read_matrix_spectra(tmp_path / "absent.safetensors", "centered")


def test_spectrum_figures_are_valid_and_byte_identical(curves: pd.DataFrame, tmp_path: Path) -> None:
    runs = []
    for run in ("a", "b"):
        written = plot_spectrum_energy(curves, tmp_path / run / "energy", title="synthetic, 3 tasks")
        written += plot_spectrum_error_interference(curves, tmp_path / run / "error", title="synthetic, 3 tasks")
        runs.append([path.read_bytes() for path in written])
    assert [path.name for path in written] == ["energy.png", "energy.pdf", "error.png", "error.pdf"]
    for png, pdf in (runs[0][:2], runs[0][2:]):
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and pdf.startswith(b"%PDF-") and b"CreationDate" not in pdf
    assert runs[0] == runs[1]


def test_spectrum_figures_need_both_kinds(curves: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="lack the original task vectors"):
        plot_spectrum_energy(curves[curves["kind"] == "centered"], tmp_path / "energy")
    assert not list(tmp_path.iterdir())


def test_cli_spectrum_writes_table_and_figures(factor_files: dict[str, Path], tmp_path: Path) -> None:
    argv = ["spectrum", "--centered", str(factor_files["centered"]), "--original", str(factor_files["original"]),
            "--table", str(tmp_path / "tables/spectrum.csv"), "--figures-dir", str(tmp_path / "figures")]  # fmt: skip
    assert main(argv) == 0
    table = pd.read_csv(tmp_path / "tables/spectrum.csv")
    assert set(table["kind"]) == {"centered", "original"} and len(table) == 2 * 5 * (WIDTH + 1)
    assert sorted(path.name for path in (tmp_path / "figures").iterdir()) == [
        "spectrum_energy.pdf",
        "spectrum_energy.png",
        "spectrum_error_interference.pdf",
        "spectrum_error_interference.png",
    ]
    # Kinds swapped: an error naming the file, and nothing written.
    swapped = [*argv[:2], str(factor_files["original"]), "--original", str(factor_files["centered"]), *argv[5:]]
    swapped[-3] = str(tmp_path / "other/spectrum.csv")
    assert main(swapped) == 2
    assert not (tmp_path / "other").exists()
