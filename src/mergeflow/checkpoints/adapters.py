"""One adapter per source kind: from the `finetuned` config block to a local file plus its provenance.

Config blocks (the keys each source accepts; anything else is an error so that typos do not pass silently):
    {"source": "tall_masks", "revision": "main", "repo_id": "nik-dim/tall_masks", "allow_pickle": false}
    {"source": "task_vectors", "directory": "...", "allow_pickle": true}
    {"source": "cart_authors", "revision": "main", "repo_id": "JH-C-k/ViT-B-32",
     "pattern": "{model}/{task}Val/nonlinear_finetuned.pt" (or a list tried in order), "key_prefix": "model.visual."}
    {"source": "fusionbench", "revision": "main"}
    {"source": "local", "directory": "...", "pattern": "{task}.safetensors", "key_prefix": null}
    {"source": "url", "urls": {"DTD": {"url": "https://...", "sha256": "<64 hex>"}}, "key_prefix": null}
`allow_pickle` is accepted by every source (task_vectors requires it); `key_prefix: null` means "recognise the
layout". A hub source without `revision` asks for `tables.default_revision(repo_id)`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergeflow.checkpoints import hub_files, tables
from mergeflow.checkpoints.download import SHA256_PATTERN, check_url, default_cache_dir, fetch_verified
from mergeflow.checkpoints.record import sha256_file
from mergeflow.io import InputError

log = logging.getLogger(__name__)

CONFIG_ROOT = "finetuned"
_COMMON_KEYS = frozenset({"source", "allow_pickle"})


@dataclass(frozen=True)
class Options:
    """The validated config block of one source."""

    kind: str
    values: Mapping[str, Any]

    @staticmethod
    def key(name: str) -> str:
        return f"{CONFIG_ROOT}.{name}"

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        """The string under `name`; `default` when absent; an explicit null stays None (e.g. key_prefix: auto)."""
        value = self.values.get(name, default)
        if value is None and required:
            raise InputError(f"{self.key(name)}: required by source {self.kind!r}")
        if value is not None and not isinstance(value, str):
            raise InputError(f"{self.key(name)}: expected a string, got {type(value).__name__}")
        return value

    def flag(self, name: str) -> bool:
        value = self.values.get(name, False)
        if not isinstance(value, bool):
            raise InputError(f"{self.key(name)}: expected true or false, got {value!r}")
        return value

    def patterns(self, name: str, default: Sequence[str]) -> list[str]:
        value = self.values.get(name, list(default))
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not items or not all(isinstance(v, str) for v in items):
            raise InputError(f"{self.key(name)}: expected a path pattern or a list of them, got {value!r}")
        return list(items)


@dataclass(frozen=True)
class Located:
    """A checkpoint file on disk and what is known about it before reading it."""

    path: Path
    label: str  # names the file in every error
    layout: str  # "open_clip", "transformers" or "auto"
    key_prefix: str | None  # open_clip layout: the prefix to strip (None: recognise it)
    provenance: dict[str, Any] = field(default_factory=dict)
    caveat: str | None = None


Adapter = Callable[[Options, str, str, str | None, bool], Located]


def _lookup(table: Mapping[str, Any], name: str, what: str, source: str) -> Any:
    if name not in table:
        raise InputError(f"{CONFIG_ROOT}: {what} {name!r} is not in the {source} table (known: {sorted(table)})")
    return table[name]


def _format(pattern: str, config_key: str, **fields: str) -> str:
    try:
        return pattern.format(**fields)
    except (KeyError, IndexError, ValueError) as err:
        raise InputError(f"{config_key}: bad pattern {pattern!r} ({err}); placeholders are {sorted(fields)}") from None


def _hub_located(
    kind: str, found: hub_files.HubFile, layout: str, key_prefix: str | None, caveat: str | None = None, **extra: Any
) -> Located:
    """Provenance of a hub file; a cached LFS file whose content no longer matches its hub sha256 is refused."""
    digest = sha256_file(found.local_path)
    announced = hub_files.cached_blob_sha256(found.local_path)
    if announced is not None and announced != digest:
        raise InputError(
            f"{found.label}: the cached file is damaged or truncated (hub sha256 {announced}, content {digest}); "
            "delete it from the hub cache and fetch again"
        )
    provenance = {
        "source": kind,
        "repo_id": found.repo_id,
        "revision": found.revision,
        "commit": found.commit,
        "path_in_repo": found.path_in_repo,
        "source_sha256": digest,
        **extra,
    }
    if caveat:
        provenance["caveat"] = caveat
    return Located(found.local_path, found.label, layout, key_prefix, provenance, caveat)


def _revision(options: Options, repo_id: str) -> str:
    return options.text("revision") or tables.default_revision(repo_id)


def locate_tall_masks(options: Options, model: str, task: str, cache_dir: str | None, progress: bool) -> Located:
    """`nik-dim/tall_masks`: single_task/<model>/<Task>Val/nonlinear_finetuned.pt, keys `model.visual.*`."""
    model_dirs = _lookup(tables.TALL_MASKS_MODEL_DIRS, model, "model", "tall_masks")
    task_dir = _lookup(tables.TALL_MASKS_TASK_DIRS, task, "task", "tall_masks")
    candidates = [tables.TALL_MASKS_PATTERN.format(model_dir=d, task_dir=task_dir) for d in model_dirs]
    repo_id = str(options.text("repo_id", tables.TALL_MASKS_REPO))
    revision = _revision(options, repo_id)
    found = hub_files.download(repo_id, candidates, revision=revision, cache_dir=cache_dir, config_key=CONFIG_ROOT)
    return _hub_located("tall_masks", found, "open_clip", tables.IMAGE_ENCODER_PREFIX)


def _first_file(directory: Path, patterns: Sequence[str], model: str, task: str) -> Path | None:
    for pattern in patterns:
        path = directory / pattern.format(model=model, task=task)
        if path.is_file():
            return path
    return None


def locate_task_vectors(options: Options, model: str, task: str, cache_dir: str | None, progress: bool) -> Located:
    """The task_vectors release as downloaded from its Drive folder: pickled whole ImageEncoder modules."""
    _lookup(dict.fromkeys(tables.TASK_VECTORS_MODELS), model, "model", "task_vectors")
    _lookup(dict.fromkeys(tables.TASK_VECTORS_TASKS), task, "task", "task_vectors")
    if not options.flag("allow_pickle"):
        raise InputError(
            f"{Options.key('allow_pickle')}: source 'task_vectors' serves whole ImageEncoder modules pickled with "
            "torch.save; set `allow_pickle: true` to read them (module classes become inert stand-ins, nothing "
            "else in the file is accepted)"
        )
    directory = Path(str(options.text("directory", required=True)))
    path = _first_file(directory, tables.TASK_VECTORS_PATTERNS, model, task)
    if path is None:
        tried = [str(directory / p.format(model=model, task=task)) for p in tables.TASK_VECTORS_PATTERNS]
        raise InputError(f"{Options.key('directory')}: none of {tried} exists (download {tables.TASK_VECTORS_DRIVE})")
    provenance: dict[str, Any] = {
        "source": "task_vectors",
        "origin": tables.TASK_VECTORS_DRIVE,
        "local_path": str(path.resolve()),
        "source_sha256": sha256_file(path),
    }
    zeroshot = _first_file(directory, tables.TASK_VECTORS_ZEROSHOT, model, task)
    if zeroshot is not None:
        provenance |= {"zeroshot_path": str(zeroshot.resolve()), "zeroshot_sha256": sha256_file(zeroshot)}
    return Located(path, str(path), "open_clip", tables.IMAGE_ENCODER_PREFIX, provenance)


def locate_cart_authors(options: Options, model: str, task: str, cache_dir: str | None, progress: bool) -> Located:
    """`JH-C-k/<model>`: the layout the authors' code reads; their hub listing was never seen (tables.py)."""
    _lookup({t: t for t in tables.TASKS}, task, "task", "cart_authors")
    repo_id = options.text("repo_id") or _lookup(tables.CART_REPOS, model, "model", "cart_authors")
    key = Options.key("pattern")
    candidates = [_format(p, key, task=task, model=model) for p in options.patterns("pattern", tables.CART_PATTERNS)]
    revision = _revision(options, repo_id)
    found = hub_files.download(repo_id, candidates, revision=revision, cache_dir=cache_dir, config_key=CONFIG_ROOT)
    return _hub_located("cart_authors", found, "open_clip", options.text("key_prefix", tables.IMAGE_ENCODER_PREFIX))


def check_clip_vision_config(config: Mapping[str, Any], label: str) -> None:
    """Refuse transformers configs whose model the open_clip conversion would not reproduce exactly."""
    model_type = config.get("model_type")
    if model_type not in ("clip_vision_model", "clip"):
        raise InputError(f"{label}: model_type {model_type!r}, expected 'clip_vision_model'")
    vision = (config.get("vision_config") or {}) if model_type == "clip" else config
    act = vision.get("hidden_act", "quick_gelu")  # transformers' CLIPVisionConfig default
    if act != "quick_gelu":
        raise InputError(f"{label}: hidden_act {act!r}; OpenAI CLIP image encoders (open_clip) use quick_gelu")
    eps = float(vision.get("layer_norm_eps", 1e-5))
    if abs(eps - 1e-5) > 1e-12:
        raise InputError(f"{label}: layer_norm_eps {eps}; open_clip's LayerNorm uses 1e-05")


def locate_fusionbench(options: Options, model: str, task: str, cache_dir: str | None, progress: bool) -> Located:
    """`tanganke/clip-vit-*_<slug>`: transformers CLIPVisionModel weights, converted later; θ_0 supplies `proj`."""
    hf_model = _lookup(tables.FUSIONBENCH_MODELS, model, "model", "fusionbench")
    slug = _lookup(tables.FUSIONBENCH_SLUGS, task, "task", "fusionbench")
    repo_id = tables.FUSIONBENCH_REPO.format(hf_model=hf_model, slug=slug)
    revision = _revision(options, repo_id)
    config_file = hub_files.download(
        repo_id, [tables.FUSIONBENCH_CONFIG], revision=revision, cache_dir=cache_dir, config_key=CONFIG_ROOT
    )
    try:
        config = json.loads(config_file.local_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{config_file.label}: not valid JSON ({err})") from None
    check_clip_vision_config(config, config_file.label)
    weights = hub_files.download(
        repo_id, [tables.FUSIONBENCH_WEIGHTS], revision=revision, cache_dir=cache_dir, config_key=CONFIG_ROOT
    )
    caveat = tables.FUSIONBENCH_CAVEATS.get(task)
    config_sha256 = sha256_file(config_file.local_path)
    return _hub_located("fusionbench", weights, "transformers", None, caveat, config_sha256=config_sha256)


def locate_local(options: Options, model: str, task: str, cache_dir: str | None, progress: bool) -> Located:
    """`<directory>/<pattern>`; any supported file format and key layout."""
    directory = Path(str(options.text("directory", required=True)))
    pattern = str(options.text("pattern", "{task}.safetensors"))
    path = directory / _format(pattern, Options.key("pattern"), task=task, model=model)
    if not path.is_file():
        raise InputError(
            f"{Options.key('directory')}/{Options.key('pattern')}: {path} not found (model {model}, task {task})"
        )
    provenance = {"source": "local", "local_path": str(path.resolve()), "source_sha256": sha256_file(path)}
    return Located(path, str(path), "auto", options.text("key_prefix"), provenance)


def _url_entry(options: Options, task: str) -> tuple[str, str]:
    urls = options.values.get("urls")
    if not isinstance(urls, Mapping):
        raise InputError(f"{Options.key('urls')}: required by source 'url', a mapping task -> {{url, sha256}}")
    if task not in urls:
        raise InputError(f"{Options.key('urls')}: no entry for task {task!r} (entries: {sorted(urls)})")
    entry, key = urls[task], Options.key(f"urls.{task}")
    if not isinstance(entry, Mapping) or not isinstance(entry.get("url"), str):
        raise InputError(f"{key}: expected {{url: ..., sha256: ...}}, got {entry!r}")
    sha256 = entry.get("sha256")
    if not isinstance(sha256, str) or not SHA256_PATTERN.fullmatch(sha256.lower()):
        raise InputError(f"{key}.sha256: required, the 64-hex-digit sha256 of the file (got {sha256!r})")
    check_url(entry["url"], f"{key}.url")
    return entry["url"], sha256.lower()


def locate_url(options: Options, model: str, task: str, cache_dir: str | None, progress: bool) -> Located:
    """An http(s) file per task, verified against its configured sha256 before anything reads it."""
    url, sha256 = _url_entry(options, task)
    downloads = Path(cache_dir) / "downloads" if cache_dir else default_cache_dir()
    path = fetch_verified(url, sha256, cache_dir=downloads, progress=progress)
    provenance = {"source": "url", "url": url, "source_sha256": sha256}
    return Located(path, f"{url} ({path})", "auto", options.text("key_prefix"), provenance)


_ADAPTERS: dict[str, Adapter] = {
    "tall_masks": locate_tall_masks,
    "task_vectors": locate_task_vectors,
    "cart_authors": locate_cart_authors,
    "fusionbench": locate_fusionbench,
    "local": locate_local,
    "url": locate_url,
}
SOURCES: dict[str, tuple[Adapter, frozenset[str]]] = {
    kind: (adapter, tables.SOURCE_KEYS[kind]) for kind, adapter in _ADAPTERS.items()
}


def parse_options(block: Mapping[str, Any]) -> Options:
    """Validate the config block: a known source and only the keys that source reads."""
    if not isinstance(block, Mapping):
        raise InputError(f"{CONFIG_ROOT}: expected a mapping with a 'source' key, got {type(block).__name__}")
    kind = block.get("source")
    if kind not in SOURCES:
        raise InputError(f"{CONFIG_ROOT}.source: unknown source {kind!r}; expected one of {sorted(SOURCES)}")
    unknown = sorted(set(block) - _COMMON_KEYS - SOURCES[kind][1])
    if unknown:
        allowed = sorted(_COMMON_KEYS | SOURCES[kind][1])
        raise InputError(f"{CONFIG_ROOT}: unknown key(s) {unknown} for source {kind!r} (allowed: {allowed})")
    return Options(kind=kind, values=dict(block))
