"""Write Hugging Face hub cache directories exactly as `huggingface_hub` lays them out after a download.

Layout (huggingface_hub's cache, for repo type "model" or "dataset"):
    <cache>/<models|datasets>--<org>--<name>/blobs/<sha256 of the file>
    <cache>/<models|datasets>--<org>--<name>/snapshots/<commit>/<path in repo>  → symlink to ../../blobs/<sha>
    <cache>/<models|datasets>--<org>--<name>/refs/<revision>                    (the commit hash, no newline)
With HF_HUB_OFFLINE=1, `hf_hub_download` and `snapshot_download` resolve files from this layout only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

FIXTURE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def repo_cache_dir(cache_dir: Path, repo_id: str, repo_type: str = "model") -> Path:
    return Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}"


def write_hub_repo(
    cache_dir: Path,
    repo_id: str,
    files: Mapping[str, bytes | Path],
    *,
    repo_type: str = "model",
    revision: str = "main",
    commit: str = FIXTURE_COMMIT,
) -> Path:
    """Place `files` (path in repo → bytes, or a local file to move in) in the cache; returns the snapshot dir."""
    repo_dir = repo_cache_dir(cache_dir, repo_id, repo_type)
    snapshot = repo_dir / "snapshots" / commit
    blobs = repo_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for path_in_repo, content in files.items():
        if isinstance(content, Path):
            digest = hashlib.sha256(content.read_bytes()).hexdigest()
            os.replace(content, blobs / digest)
        else:
            digest = hashlib.sha256(content).hexdigest()
            (blobs / digest).write_bytes(content)
        link = snapshot / path_in_repo
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blobs / digest, link.parent))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    return snapshot
