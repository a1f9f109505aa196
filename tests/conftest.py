import os

# Tests share two cores with whatever else runs; one torch thread keeps them predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tests never reach a hub: real sources are exercised against cache fixtures in their served layout.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)


import huggingface_hub.constants  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test offline: huggingface_hub parsed HF_HUB_OFFLINE once at import, so pin that value too."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
