"""Test-time adaptation on the tiny seeds: AdaMerging, AdaMerging + CART and AdaRank at two learning rates.

Reads the artefacts `benchmarks/tiny_seeds.py` leaves under benchmarks/out/seeds/<suite>-seed<s>/ (θ_0, heads,
data, fine-tuned models, reference.csv and cart.csv), runs `mergeflow adapt-eval` for every (seed, method, lr)
into benchmarks/out/adaptation/, and prints test accuracy as mean ± sd over the seeds, beside the static merge
each method starts from (task arithmetic at λ 0.3, measured as adamerging with 0 steps; CART's val-selected
setting). Adaptation reads unlabeled test images only; labels are read afterwards, to measure accuracy.

    python benchmarks/tiny_seeds.py                       # once, for the artefacts
    python benchmarks/tiny_adaptation.py --steps 50 --lrs 0.001 0.01
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
SEEDS_DIR = REPO / "benchmarks" / "out" / "seeds"
OUT = REPO / "benchmarks" / "out" / "adaptation"


def settings(method: str, steps: int, lr: float) -> dict:
    common = {"steps": steps, "lr": lr}
    if method == "adamerging":
        return {"granularity": "layer", **common}
    if method == "adamerging_cart":
        return {"rank": "selected", "lam": "selected", **common}
    return {"base": "cart", "initial_rank": "selected", "prior": "selected", **common}


def run(suite_dir: Path, config: dict, method: str, steps: int, lr: float, out: Path) -> Path:
    """One adapt-eval job; returns its CSV (skipped when it exists)."""
    if (out / "rows.csv").exists():
        return out / "rows.csv"
    out.mkdir(parents=True, exist_ok=True)
    results, model = suite_dir / "results", config["model"]["name"]
    suite = results / config["benchmark"] / model / "eval"
    tasks = config["tasks"]
    command = [
        "mergeflow", "adapt-eval", "--method", method, "--settings", json.dumps(settings(method, steps, lr)),
        "--model-dir", str(results / "models" / model), "--tasks", *tasks,
        "--heads", *(str(results / "heads" / model / f"{t}.safetensors") for t in tasks),
        "--data", *(str(results / "data" / t) for t in tasks),
        "--finetuned", *(str(results / "finetuned" / model / f"{t}.safetensors") for t in tasks),
        "--cart-eval", str(suite / "cart.csv"), "--reference", str(suite / "reference.csv"),
        "--batch-size", str(config["evaluation"]["batch_size"]), "--learned", str(out / "learned.safetensors"),
        "--entropy", str(out / "entropy.csv"), "--out", str(out / "rows.csv"), "--threads", "1", "--no-progress",
    ]  # fmt: skip
    with open(out / "job.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    return out / "rows.csv"


def test_average(path: Path) -> float:
    rows = pd.read_csv(path)
    return 100.0 * rows[rows["split"] == "test"]["accuracy"].mean()


def cart_start(suite_dir: Path, config: dict, learned_rows: Path) -> float:
    """Test average of CART at the setting the adaptive method started from (its rank and lam)."""
    chosen = json.loads(pd.read_csv(learned_rows)["setting"].iloc[0])
    rank, lam = chosen.get("rank", chosen.get("initial_rank")), chosen.get("lam", chosen.get("prior"))
    cart = pd.read_csv(suite_dir / "results" / config["benchmark"] / config["model"]["name"] / "eval" / "cart.csv")
    rows = cart[(cart["split"] == "test") & (cart["rank"] == rank) & (cart["lam"] == lam)]
    return 100.0 * rows["accuracy"].mean()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2])
    parser.add_argument("--jobs", type=int, default=2, help="adapt-eval jobs at once (one thread each)")
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    methods = ("adamerging", "adamerging_cart", "adarank")
    plan = [(seed, method, lr) for seed in args.seeds for method in methods for lr in args.lrs]
    plan += [(seed, "adamerging", None) for seed in args.seeds]  # 0 steps: task arithmetic at λ 0.3
    suites = {seed: SEEDS_DIR / f"{config['benchmark']}-seed{seed}" for seed in args.seeds}
    missing = [str(path) for path in suites.values() if not (path / "results").is_dir()]
    if missing:
        raise SystemExit(f"no tiny_seeds.py artefacts in {missing}; run python benchmarks/tiny_seeds.py first")

    def job(entry: tuple[int, str, float | None]) -> tuple[int, str, float | None, Path]:
        seed, method, lr = entry
        label = f"{method}-lr{lr}-steps{args.steps}" if lr is not None else "adamerging-steps0"
        out = OUT / f"{config['benchmark']}-seed{seed}" / label
        steps, rate = (args.steps, lr) if lr is not None else (0, 1e-3)
        return seed, method, lr, run(suites[seed], config, method, steps, rate, out)

    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(job, plan))
    rows = []
    for seed, method, lr, path in done:
        start = cart_start(suites[seed], config, path) if method != "adamerging" else None
        rows.append({"seed": seed, "method": method, "lr": lr, "test": test_average(path), "start": start})
    frame = pd.DataFrame(rows)
    ta_start = frame[frame["lr"].isna()]["test"]
    print(f"{config['benchmark']}, seeds {args.seeds}, {args.steps} steps; test accuracy (%), mean ± sd over seeds\n")
    print("| method | start (static merge) | " + " | ".join(f"lr {lr:g}" for lr in args.lrs) + " |")
    print("|---|---|" + "---|" * len(args.lrs))
    for method in methods:
        adapted = frame[(frame["method"] == method) & frame["lr"].notna()]
        start = ta_start if method == "adamerging" else adapted.groupby("seed")["start"].first()
        name = "task arithmetic λ 0.3" if method == "adamerging" else "CART, val-selected"
        cells = [f"{g['test'].mean():.1f} ± {g['test'].std():.1f}" for _, g in adapted.groupby("lr", sort=True)]
        print(f"| {method} | {name}: {start.mean():.1f} ± {start.std():.1f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
