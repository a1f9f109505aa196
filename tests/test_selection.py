import pandas as pd

from mergeflow.evaluation.selection import as_rows, best_setting, selected_settings, setting_key, sweep_axis_of
from mergeflow.merging.entries import expand_grid


def test_grid_is_cartesian_with_first_key_slowest() -> None:
    grid = expand_grid({"rank": [0.0, 0.5], "lam": [1, 2, 3], "merge": "mean"})
    assert len(grid) == 6
    assert grid[0] == {"rank": 0.0, "lam": 1, "merge": "mean"}
    assert grid[3] == {"rank": 0.5, "lam": 1, "merge": "mean"}
    assert expand_grid({}) == [{}]


def test_setting_key_is_order_independent() -> None:
    assert (
        setting_key({"lam": 1.0, "rank": 0.1}) == setting_key({"rank": 0.1, "lam": 1.0}) == '{"lam": 1.0, "rank": 0.1}'
    )


def _val(scores: dict[tuple[float, float], list[float]]) -> pd.DataFrame:
    rows = []
    reference = {"a": 0.5, "b": 1.0}
    for (rank, lam), (acc_a, acc_b) in scores.items():
        rows += as_rows("cart", {"rank": rank, "lam": lam}, "val", {"a": acc_a, "b": acc_b}, reference)
    return pd.DataFrame(rows)


def test_selection_uses_normalized_accuracy_per_rank() -> None:
    # Normalized: task a divides by 0.5, so (0.1, 2) scores (0.8 + 0.4)/2 = 0.6 > (0.1, 1) at (0.6+0.5)/2=0.55.
    val = _val({(0.1, 1): [0.3, 0.5], (0.1, 2): [0.4, 0.4], (0.5, 1): [0.45, 0.2], (0.5, 2): [0.2, 0.76]})
    best, per_rank = selected_settings(val, sweep_axis_of({"rank": [0.1, 0.5], "lam": [1, 2]}))
    assert best == setting_key({"rank": 0.1, "lam": 2})
    assert per_rank == {setting_key({"rank": 0.1, "lam": 2}), setting_key({"rank": 0.5, "lam": 2})}
    assert val.loc[0, "normalized_accuracy"] == 0.6


def test_ties_go_to_the_first_setting_in_grid_order() -> None:
    val = _val({(0.1, 1): [0.5, 0.5], (0.1, 2): [0.5, 0.5]})
    assert best_setting(val) == setting_key({"rank": 0.1, "lam": 1})
    assert sweep_axis_of({"lam": [1, 2]}) is None
