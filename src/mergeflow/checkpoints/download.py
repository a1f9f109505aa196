"""Download an http(s) file whose sha256 is known in advance, into a content-addressed cache.

The bytes are streamed to a temporary file and hashed on the way; only a file whose digest matches is renamed
into `<cache>/<sha256>/<name>`, so nothing is loaded (or unpickled) from an unverified download and a
mismatch leaves nothing behind. A cached file is re-hashed before each use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from mergeflow.checkpoints.record import sha256_file
from mergeflow.io import InputError

log = logging.getLogger(__name__)

SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
_TIMEOUT_S = 60


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/mergeflow/downloads` (or `~/.cache/...`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mergeflow" / "downloads"


def file_name(url: str) -> str:
    """A safe local name from the URL's last path segment."""
    name = os.path.basename(unquote(urlparse(url).path))
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "download"


def check_url(url: str, config_key: str) -> None:
    if urlparse(url).scheme not in ("http", "https"):
        raise InputError(f"{config_key}: {url!r} is not an http(s) URL")


def fetch_verified(url: str, sha256: str, *, cache_dir: Path, progress: bool) -> Path:
    """The local copy of `url` whose content hashes to `sha256` (downloaded unless already cached)."""
    final = cache_dir / sha256 / file_name(url)
    if final.is_file():
        if sha256_file(final) == sha256:
            log.info("%s: using cached %s", url, final)
            return final
        final.unlink()  # damaged cache entry: fetch it again
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".download.", suffix=".part", dir=cache_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            actual = _stream(url, handle, progress)
        if actual != sha256:
            raise InputError(
                f"{url}: sha256 mismatch, expected {sha256} but the download has {actual}; nothing was kept"
            )
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _stream(url: str, handle, progress: bool) -> str:  # type: ignore[no-untyped-def]
    """Write the response body to `handle`; returns its sha256."""
    import requests
    from tqdm import tqdm

    digest = hashlib.sha256()
    try:
        with requests.get(url, stream=True, timeout=_TIMEOUT_S) as response:
            response.raise_for_status()
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=file_name(url), disable=not progress) as bar:
                for chunk in response.iter_content(chunk_size=_CHUNK):
                    handle.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as err:
        raise InputError(f"{url}: download failed ({err})") from None
    return digest.hexdigest()
