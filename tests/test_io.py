import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mergeflow.io import InputError, atomic_path, load_state_dict, save_state_dict


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_writer_killed_mid_write_leaves_no_finished_file_and_the_next_write_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    script = (
        "import sys, time\n"
        "from mergeflow.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    with open(tmp, 'wb') as handle:\n"
        "        handle.write(b'half'); handle.flush(); print('writing', flush=True); time.sleep(60)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
    writer.kill()
    writer.wait(timeout=30)
    assert not target.exists()
    [stale] = tmp_path.iterdir()  # the killed writer's temporary file, which no reader takes for the output
    assert stale.name.startswith(".out.bin.") and stale.name.endswith(".tmp")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert [path.name for path in tmp_path.iterdir()] == ["out.bin"] and target.read_bytes() == b"whole"


def test_state_dict_round_trip_is_exact(tmp_path: Path) -> None:
    state = {"w": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64)}
    save_state_dict(tmp_path / "m.safetensors", state, {"model": "x"})
    loaded = load_state_dict(tmp_path / "m.safetensors")
    assert set(loaded) == {"w", "b"}
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_state_dict(path, {"w": torch.randn(64, 64)})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="m.safetensors"):
        load_state_dict(path)
    with pytest.raises(InputError, match="not found"):
        load_state_dict(tmp_path / "absent.safetensors")


def test_a_state_dict_with_nan_or_inf_is_refused_by_file_and_key(tmp_path, caplog) -> None:
    from mergeflow.commands.main import main

    good = {"w": torch.ones(3, 3), "step": torch.tensor(2)}
    save_state_dict(tmp_path / "good.safetensors", good)
    for value, name in ((float("nan"), "nan"), (float("-inf"), "inf")):
        bad = {"w": torch.ones(3, 3), "step": torch.tensor(2)}
        bad["w"][1, 2] = value
        save_state_dict(tmp_path / f"{name}.safetensors", bad)
        with pytest.raises(InputError, match=rf"{name}\.safetensors: key 'w' holds 1 NaN or Inf value\(s\) of 9"):
            load_state_dict(tmp_path / f"{name}.safetensors")
    assert load_state_dict(tmp_path / "good.safetensors")["w"].eq(1).all()
    # Every verb that reads weights says so and writes nothing (decompose: the SVD stage).
    out = tmp_path / "factors.safetensors"
    args = ["decompose", "--pretrained", str(tmp_path / "good.safetensors"), "--kind", "original", "--out", str(out)]
    assert main([*args, "--finetuned", str(tmp_path / "good.safetensors"), str(tmp_path / "nan.safetensors")]) == 2
    assert "nan.safetensors: key 'w' holds 1 NaN or Inf" in caplog.text and not out.exists()


def test_same_tensors_and_metadata_give_the_same_bytes_in_every_process(tmp_path: Path) -> None:
    """safetensors writes metadata in hash-map order, different per process; save_state_dict sorts it."""
    script = (
        "import sys, torch\n"
        "from mergeflow.io import save_state_dict\n"
        "tensors = {'w': torch.arange(6.0).reshape(2, 3), 'b': torch.ones(2, dtype=torch.float16)}\n"
        "save_state_dict(sys.argv[1], tensors, {'model': 'tiny-clip', 'task': 'shapes', 'note': 'θ_t', 'seed': '0'})\n"
    )
    paths = [tmp_path / f"run{index}.safetensors" for index in range(4)]
    for path in paths:
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=120)
    assert len({path.read_bytes() for path in paths}) == 1
    from safetensors import safe_open

    with safe_open(str(paths[0]), "pt") as handle:
        assert handle.metadata() == {"model": "tiny-clip", "task": "shapes", "note": "θ_t", "seed": "0"}
    assert torch.equal(load_state_dict(paths[0])["w"], torch.arange(6.0).reshape(2, 3))
