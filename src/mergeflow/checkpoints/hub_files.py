"""Files from Hugging Face hub repositories, through huggingface_hub's cache (HF_HUB_OFFLINE=1: cache only)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mergeflow.io import InputError

_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HubFile:
    """A downloaded (or cached) hub file and the coordinates to record."""

    repo_id: str
    path_in_repo: str
    revision: str  # as asked for: a branch, tag or commit
    commit: str  # what the hub resolved it to
    local_path: Path

    @property
    def label(self) -> str:
        """How errors name the file: hub coordinates and the local copy."""
        return f"{self.repo_id}/{self.path_in_repo}@{self.commit} ({self.local_path})"


def snapshot_commit(local_path: Path) -> str | None:
    """The commit of a file in the hub cache: its path is `.../snapshots/<commit>/<path in repo>`."""
    parts = local_path.parts
    if "snapshots" in parts:
        index = len(parts) - 1 - parts[::-1].index("snapshots")
        if index + 1 < len(parts) and _COMMIT.fullmatch(parts[index + 1]):
            return parts[index + 1]
    return None


def cached_blob_sha256(local_path: Path) -> str | None:
    """The sha256 the hub announced for an LFS file: the cache names the blob after it (git-sha1 otherwise)."""
    blob = Path(os.path.realpath(local_path)).name
    return blob if _SHA256.fullmatch(blob) else None


def download(
    repo_id: str, candidates: Sequence[str], *, revision: str, cache_dir: str | None, config_key: str
) -> HubFile:
    """The first of `candidates` (paths in the repository) that exists, downloaded into the hub cache.

    Several candidates cover upstream spellings that were seen to differ (e.g. `VIT-B-16` vs `ViT-B-16`).
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    problems: list[str] = []
    for path_in_repo in candidates:
        try:
            local = Path(hf_hub_download(repo_id, path_in_repo, revision=revision, cache_dir=cache_dir))
        except EntryNotFoundError as err:
            problems.append(f"{path_in_repo}: {type(err).__name__}")
            continue
        except (RepositoryNotFoundError, RevisionNotFoundError) as err:
            raise InputError(
                f"{config_key}: hub repository {repo_id!r} at revision {revision!r} not found ({type(err).__name__})"
            ) from None
        commit = snapshot_commit(local)
        if commit is None:
            raise InputError(f"{config_key}: {local} is not in a hub cache snapshot, so its commit is unknown")
        return HubFile(repo_id, path_in_repo, revision, commit, local)
    offline = " HF_HUB_OFFLINE is set, so only the local hub cache was searched." if constants.is_offline_mode() else ""
    tried = "; ".join(problems)
    raise InputError(f"{config_key}: {repo_id}@{revision} has none of the expected files ({tried}).{offline}")
