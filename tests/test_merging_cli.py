"""`mergeflow merge` as wired by `register`, and `mergeflow methods` through the `mergeflow` command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from mergeflow.adaptive.settings import SETTINGS_CLASSES
from mergeflow.commands.main import main
from mergeflow.commands.merging import register
from mergeflow.io import load_state_dict, save_state_dict
from mergeflow.merging import METHODS, merge_state_dicts
from mergeflow.merging.registry import MODIFIERS, NEEDS_GROUPS

KEYS = {
    "transformer.resblocks.0.attn.in_proj_weight": (12, 4),
    "transformer.resblocks.0.attn.in_proj_bias": (12,),
    "transformer.resblocks.0.mlp.c_fc.weight": (8, 4),
}


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mergeflow")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def models(tmp_path: Path) -> tuple[list[dict[str, torch.Tensor]], list[str]]:
    generator = torch.Generator().manual_seed(3)
    states = [{key: torch.randn(shape, generator=generator) for key, shape in KEYS.items()} for _ in range(3)]
    paths = []
    for index, state in enumerate(states):
        path = tmp_path / f"m{index}.safetensors"
        save_state_dict(path, state)
        paths.append(str(path))
    return states, paths


def test_merge_writes_the_merge_and_reports_it(models, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    states, paths = models
    output = tmp_path / "out" / "cart.safetensors"
    argv = ["merge", "--method", "cart", "--set", "rank=0.5", "--set", "lam=1.5", "--pretrained", paths[0]]
    code = run([*argv, "--finetuned", *paths[1:], "--output", str(output), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "method: cart",
        "hyper-parameters: rank=0.5, lam=1.5",
        "tasks: 2",
        "tensors touched: 3 of 3",
        f"output: {output}",
    ]
    merged = load_state_dict(output)
    expected = merge_state_dicts("cart", states[0], states[1:], {"rank": 0.5, "lam": 1.5})
    assert all(torch.equal(merged[key], expected[key]) for key in KEYS)


def test_merge_with_defaults_prints_them(models, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, paths = models
    code = run(
        [
            "merge",
            "--method",
            "consensus",
            "--set",
            "mask_lam=0.2,0.3",
            "--pretrained",
            paths[0],
            "--finetuned",
            *paths[1:],
            "--output",
            str(tmp_path / "c.safetensors"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "hyper-parameters: k=2, mask_lam=0.2,0.3, lam=0.3, base=task_arithmetic" in out


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--method", "kart"], ["unknown merge method 'kart'", "cart", "weight_averaging"]),
        (["--method", "cart", "--set", "rank"], ["--set 'rank': expected KEY=VALUE"]),
        (["--method", "cart", "--set", "rank=2"], ["cart: hyper-parameter 'rank'", "[0, 1]"]),
        (["--method", "cart", "--set", "lam=1", "--set", "lam=2"], ["--set lam: given more than once"]),
    ],
)
def test_merge_errors_are_reported_and_leave_no_output(
    models, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], fragments: list[str]
) -> None:
    _, paths = models
    output = tmp_path / "never.safetensors"
    code = run(["merge", *extra, "--pretrained", paths[0], "--finetuned", *paths[1:], "--output", str(output)])
    assert code == 2
    error = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in error
    assert not output.exists()


def test_merge_key_mismatch_names_file_and_key(models, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    states, paths = models
    odd = tmp_path / "odd.safetensors"
    save_state_dict(odd, {key: value for key, value in states[1].items() if "bias" not in key})
    code = run(
        [
            "merge",
            "--method",
            "task_arithmetic",
            "--pretrained",
            paths[0],
            "--finetuned",
            paths[1],
            str(odd),
            "--output",
            str(tmp_path / "x.safetensors"),
        ]
    )
    assert code == 2
    assert f"{odd}: key 'transformer.resblocks.0.attn.in_proj_bias'" in capsys.readouterr().err


def test_methods_lists_every_method_and_hyper_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    headers = [line.split(":")[0] for line in out.splitlines() if not line.startswith((" ", "#"))]
    groups = [line for line in out.splitlines() if line.startswith("#")]
    assert groups[:3] == ["# data-free", "# needs training data", "# needs the task at inference"]
    assert groups[3].startswith("# modifiers: write <method>+<modifier> (e.g. cart+svc)")
    adaptive = "; test-time adaptation on unlabeled test images)"
    order = list(NEEDS_GROUPS)
    by_group = sorted(METHODS.items(), key=lambda item: order.index(item[1].needs))
    static = [f"{name} ({method.display})" for name, method in by_group]
    modifiers = [f"+{name} ({modifier.display})" for name, modifier in MODIFIERS.items()]
    assert headers == static + modifiers + [
        f"{name} ({cls.display}{adaptive}" for name, cls in SETTINGS_CLASSES.items()
    ]
    assert out.index("emr (EMR)") > out.index("# needs the task at inference") > out.index("wudi (WUDI)")
    assert "    alpha (float, default 0.1; (0, inf)): calibration strength" in out
    assert headers[-1] == "adarank (AdaRank; test-time adaptation on unlabeled test images)"
    assert list(SETTINGS_CLASSES) == ["adamerging", "adamerging_cart", "adarank"]
    for method in METHODS.values():
        for param in method.params:
            assert f"    {param.name} ({param.type_name}, default " in out
    assert "p (float, default 0.5; [0, 1)): drop probability" in out
    assert "merge (choice, default mean; one of 'mean', 'sum')" in out
    adarank = out[out.index("adarank (AdaRank" + adaptive) :]
    assert "    steps (int, default 10000): Adam steps" in adarank
    assert "    initial_rank (float, required): " in adarank
    assert "    granularity (one of 'task', 'layer', default \"layer\"): " in out
    assert "    tasks_per_pass (int or null, default null): " in out
