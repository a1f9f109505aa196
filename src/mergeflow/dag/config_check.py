"""The workflow config, checked before any job starts: the schema, then every cross-field rule, as one message.

Torch-free on purpose: the Snakefile runs it at every start-up. Each problem reads "<config key path>: what
is wrong (what is allowed)"; all of them are reported at once, so that one run shows every mistake.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import yaml

from mergeflow.adaptive.settings import ADAPTIVE_METHODS, FROM_CART, SELECTED, is_adaptive, method_settings
from mergeflow.checkpoints import tables
from mergeflow.image_tasks.registry import TASKS as IMAGE_TASKS
from mergeflow.io import InputError
from mergeflow.merging.entries import base_method, entry_pattern, expand_grid, merge_name
from mergeflow.merging.registry import METHODS, MODIFIER_SEPARATOR, merge_spec, resolve_hparams
from mergeflow.tiny.tasks import TINY_TASKS

# Config values that become one component of a path under results/.
_PATH_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]*")
# The schema's patterns in words, for the messages.
_PATTERN_WORDS = {
    "^[A-Za-z0-9_.-]+$": "letters, digits, '_', '.' and '-' only",
    "^[A-Za-z0-9_]+$": "letters, digits and '_' only",
    "^(auto|cpu|cuda(:[0-9]+)?)$": "auto, cpu, cuda or cuda:<index>",
    "^https?://": "an http:// or https:// URL",
    "^[0-9a-f]{64}$": "a sha256: 64 lowercase hexadecimal digits",
}
# Stands in for CART's val-selected setting, which exists only once cart has run.
_SELECTED_PLACEHOLDER = {"rank": 0.1, "lam": 1.0}


class ConfigError(InputError):
    """The config breaks the schema or a cross-field rule; `problems` holds one line per mistake."""

    def __init__(self, problems: Sequence[str], source: str = "config") -> None:
        self.problems = list(problems)
        count = f"{len(self.problems)} problem" + ("s" if len(self.problems) != 1 else "")
        listed = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"invalid {source} ({count}):\n{listed}")


def key_path(parts: Sequence[str | int]) -> str:
    """("methods", "cart", "rank", 2) → "methods.cart.rank[2]"; the empty path is the document itself."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _close(name: str, known: Sequence[str]) -> str:
    matches = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def _describe(error: jsonschema.ValidationError) -> str:
    """One schema violation in words, with what the schema allows there."""
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    kind, instance = error.validator, error.instance
    if kind == "additionalProperties" and isinstance(instance, Mapping):
        allowed = sorted(schema.get("properties", {}))
        unknown = sorted(str(key) for key in instance if key not in allowed)
        hints = "".join(_close(key, allowed) for key in unknown)
        return f"unknown key(s) {unknown}{hints}; allowed: {allowed}"
    if kind == "required":
        return error.message.replace("is a required property", "is required here")
    if kind == "enum":
        return f"{instance!r} is not allowed; expected one of {list(error.validator_value)}"
    if kind == "const":
        return f"{instance!r} is not allowed here; expected {error.validator_value!r}"
    if kind == "type":
        return f"expected {error.validator_value}, got {instance!r} ({type(instance).__name__})"
    if kind == "pattern":
        if "propertyNames" in error.absolute_schema_path and list(error.absolute_path) == ["methods"]:
            known = [*METHODS, *ADAPTIVE_METHODS]
            name = base_method(str(instance))
            if name in known and MODIFIER_SEPARATOR in merge_name(str(instance)):
                return _modifier_problem(merge_name(str(instance)))
            return f"unknown method {name!r}{_close(name, known)}; known: {known}, each optionally with @<variant>"
        words = _PATTERN_WORDS.get(error.validator_value, f"matching {error.validator_value!r}")
        return f"{instance!r} is not allowed; expected {words}"
    return error.message


def _modifier_problem(name: str) -> str:
    """Why `name` (`emr+svc`, `cart+foo`) is no valid method with modifiers, in the registry's words."""
    if base_method(name) not in METHODS:
        return f"{base_method(name)} is a test-time adaptive method; modifiers apply to static merges"
    try:
        merge_spec(name)
    except InputError as err:
        return str(err)
    return f"{name!r} is not allowed"


def _most_specific(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """A oneOf/anyOf violation as its closest branch's, not the whole schema's."""
    return jsonschema.exceptions.best_match(error.context) if error.context else error


def _conditions(schema: Any, prefix: Sequence[str] = ()) -> list[str]:
    """An `if` clause's `const` and `enum` tests in words: "model.source is 'pretrain'"."""
    if not isinstance(schema, Mapping):
        return []
    if "const" in schema:
        return [f"{'.'.join(prefix)} is {schema['const']!r}"]
    if "enum" in schema:
        return [f"{'.'.join(prefix)} is one of {list(schema['enum'])}"]
    if isinstance(schema.get("not"), Mapping) and "required" in schema["not"]:
        return [f"{'.'.join([*prefix, key])} is not set" for key in schema["not"]["required"]]
    found = []
    for key, sub in schema.get("properties", {}).items():
        found += _conditions(sub, [*prefix, key])
    return found


def _because(error: jsonschema.ValidationError, schema: Mapping[str, Any]) -> str:
    """For a violation inside an `allOf` item's `then`, the condition that made the rule apply."""
    path = list(error.absolute_schema_path)
    if len(path) > 2 and path[0] == "allOf" and path[2] == "then":
        conditions = _conditions(schema["allOf"][path[1]].get("if", {}))
        if conditions:
            return f" (because {' and '.join(conditions)})"
    return ""


def schema_problems(config: Any, schema: Mapping[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in validator.iter_errors(config):
        leaf = _most_specific(error)
        path = list(leaf.absolute_path)
        if "propertyNames" in leaf.absolute_schema_path and isinstance(leaf.instance, str):
            path.append(leaf.instance)
        problems.append(f"{key_path(path)}: {_describe(leaf)}{_because(leaf, schema)}")
    return sorted(set(problems))


def _known_tasks(source: str) -> dict[str, str]:
    """Task names the data source serves, each with the source's name for it in messages."""
    if source == "tiny":
        return {name: "tiny" for name in TINY_TASKS}
    if source == "torchvision":
        return {name: "torchvision" for name, task in IMAGE_TASKS.items() if task.torchvision is not None}
    return {name: "huggingface" for name in IMAGE_TASKS}


def task_problems(config: Mapping[str, Any]) -> list[str]:
    source = config["data"]["source"]
    known = sorted(_known_tasks(source))
    problems = [
        f"tasks[{index}]: unknown task {name!r} for data.source {source!r}{_close(name, known)}; known: {known}"
        for index, name in enumerate(config["tasks"])
        if name not in known
    ]
    if config["model"]["source"] == "pretrain":
        tiny = sorted(TINY_TASKS)
        for index, name in enumerate(config.get("pretrain", {}).get("tasks", [])):
            if name not in TINY_TASKS:
                problems.append(
                    f"pretrain.tasks[{index}]: unknown tiny task {name!r}{_close(name, tiny)}; known: {tiny}"
                )
    return problems


def _path_problem(value: Any, key: str) -> str | None:
    if isinstance(value, str) and _PATH_COMPONENT.fullmatch(value) and value not in (".", ".."):
        return None
    return (
        f"{key}: {value!r} names a folder under results/, so it must be one path component of letters, digits, "
        "'_', '.', '@' or '-' that does not start with '.' or '-' ('..' and '/' would leave results/)"
    )


def path_problems(config: Mapping[str, Any], repository: str | os.PathLike[str] | None = None) -> list[str]:
    """Every config value that becomes part of an output path stays one component inside results/.

    The shipped folders (`model.shipped`, `finetune.shipped`) stay inside the repository and, when
    `repository` is given, exist there (a mistyped one would silently pre-train or fine-tune instead).
    """
    named: list[tuple[Any, str]] = [(config["benchmark"], "benchmark"), (config["model"]["name"], "model.name")]
    named += [(task, f"tasks[{index}]") for index, task in enumerate(config["tasks"])]
    named += [(entry, f"methods.{entry}") for entry in config["methods"]]
    problems = [problem for value, key in named if (problem := _path_problem(value, key)) is not None]
    shipped = (
        (config["model"].get("shipped"), "model.shipped", "θ_0"),
        (config.get("finetune", {}).get("shipped"), "finetune.shipped", "fine-tuned encoders"),
    )
    for folder, key, what in shipped:
        if folder is None:
            continue
        if os.path.isabs(folder) or ".." in PurePosixPath(folder).parts:
            problems.append(f"{key}: {folder!r} must be a folder inside the repository (relative, without '..')")
        elif repository is not None and not os.path.isdir(os.path.join(repository, folder)):
            problems.append(f"{key}: {folder!r} is not a folder of the repository {repository}; expected the shipped "
                            f"{what}, or null")  # fmt: skip
    return problems


def _static_problems(entry: str, grid: Mapping[str, Any]) -> list[str]:
    problems = []
    for point in expand_grid(grid):
        try:
            resolve_hparams(merge_name(entry), point)
        except InputError as err:
            problems.append(f"methods.{entry}: {str(err).removeprefix(merge_name(entry) + ': ')}")
    return list(dict.fromkeys(problems))


def _adaptive_problems(entry: str, values: Mapping[str, Any], has_cart: bool, config: Mapping[str, Any]) -> list[str]:
    cart = _SELECTED_PLACEHOLDER if has_cart else None
    try:
        settings = method_settings(entry, values, cart)
    except InputError as err:
        return [str(err)]
    test_size = config["data"].get("test_size") if config["data"]["source"] == "tiny" else None
    if test_size is not None and settings.batch_size > test_size:
        return [f"methods.{entry}.batch_size: {settings.batch_size} is more than data.test_size {test_size} images"]
    return []


def method_problems(config: Mapping[str, Any]) -> list[str]:
    """Every grid point of every entry through the registry's (or the adaptive settings') own validation."""
    methods = config["methods"]
    problems = []
    for entry, values in methods.items():
        # The schema has already restricted entries to known method names.
        if is_adaptive(entry):
            problems += _adaptive_problems(entry, values, "cart" in methods, config)
        else:
            selected = [key for key, value in values.items() if value == SELECTED]
            problems += [
                f"methods.{entry}.{key}: 'selected' is only for adaptive methods' {sorted(FROM_CART)}"
                for key in selected
            ]
            if not selected:
                problems += _static_problems(entry, values)
            if METHODS[base_method(entry)].needs == "task_at_inference" and "task" in values:
                problems.append(f"methods.{entry}.task: set by the sweep (every task gets its own model), not a config")
    return problems


def _finetuned_problems(config: Mapping[str, Any]) -> list[str]:
    """The fine-tuned source has a checkpoint for the model and every task, and reads only its own keys."""
    block = config.get("finetuned", {"source": "finetune"})
    kind, model, tasks = block["source"], config["model"]["name"], config["tasks"]
    problems = []
    if kind in ("tall_masks", "fusionbench"):
        models, task_table = {
            "tall_masks": (tables.TALL_MASKS_MODEL_DIRS, tables.TALL_MASKS_TASK_DIRS),
            "fusionbench": (tables.FUSIONBENCH_MODELS, tables.FUSIONBENCH_SLUGS),
        }[kind]
        if model not in models:
            problems.append(
                f"model.name: finetuned.source {kind!r} has no checkpoints for {model!r}; it has {sorted(models)}"
            )
        problems += [
            f"tasks: finetuned.source {kind!r} has no checkpoint for {task!r}"
            for task in tasks
            if task not in task_table
        ]
    elif kind == "cart_authors":
        if "repo_id" not in block and model not in tables.CART_REPOS:
            problems.append(f"finetuned.repo_id: required, as 'cart_authors' has no repository for {model!r}")
        problems += [
            f"tasks: finetuned.source 'cart_authors' has no checkpoint for {task!r}"
            for task in tasks
            if task not in tables.TASKS
        ]
    elif kind == "task_vectors":
        if model not in tables.TASK_VECTORS_MODELS:
            problems.append(
                f"model.name: finetuned.source 'task_vectors' has no checkpoints for {model!r}; "
                f"it has {list(tables.TASK_VECTORS_MODELS)}"
            )
        problems += [
            f"tasks: finetuned.source 'task_vectors' has no checkpoint for {task!r} (its release has the 8 tasks)"
            for task in tasks
            if task not in tables.TASK_VECTORS_TASKS
        ]
        if block.get("allow_pickle") is not True:
            problems.append("finetuned.allow_pickle: must be true for source 'task_vectors' (pickled whole modules)")
        if "directory" not in block:
            problems.append("finetuned.directory: required by source 'task_vectors'")
    elif kind == "url":
        urls = block.get("urls", {})
        problems += [f"finetuned.urls: no entry for task {task!r}" for task in tasks if task not in urls]
    elif kind == "local" and "directory" not in block:
        problems.append("finetuned.directory: required by source 'local'")
    accepted = {"source", "allow_pickle"} | tables.SOURCE_KEYS.get(kind, frozenset())
    unknown = sorted(set(block) - accepted)
    if unknown:
        problems.append(f"finetuned: unknown key(s) {unknown} for source {kind!r}; allowed: {sorted(accepted)}")
    return problems


def cross_field_problems(config: Mapping[str, Any], repository: str | os.PathLike[str] | None = None) -> list[str]:
    """The rules a schema cannot state; they assume the config already passed the schema."""
    problems = path_problems(config, repository) + task_problems(config) + method_problems(config)
    return problems + _finetuned_problems(config)


def load_schema(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The config schema, with the method names its file leaves open filled in from the methods' declarations."""
    schema = yaml.safe_load(Path(path).read_text())
    schema["properties"]["methods"]["propertyNames"]["pattern"] = entry_pattern([*METHODS, *ADAPTIVE_METHODS])
    return schema


# YAML 1.2's core-schema spellings, which is what a value typed on the command line means.
_BOOLEANS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_NULLS = ("null", "Null", "NULL", "~")
_INTEGER = re.compile(r"[-+]?[0-9]+")
_NUMBER = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _declared_types(schema: Mapping[str, Any]) -> set[str]:
    declared = schema.get("type")
    return set([declared] if isinstance(declared, str) else declared or [])


def _types(schema: Any) -> set[str]:
    """The JSON types a schema node admits (its own `type`, `enum` or `const`, or any of its oneOf/anyOf)."""
    if not isinstance(schema, Mapping):
        return set()
    types = _declared_types(schema)
    for value in [*schema.get("enum", []), *([schema["const"]] if "const" in schema else [])]:
        types.add("string" if isinstance(value, str) else "boolean" if isinstance(value, bool) else "number")
    for branch in [*schema.get("oneOf", []), *schema.get("anyOf", [])]:
        types |= _types(branch)
    return types


def _branches(schema: Any, kind: str) -> list[Mapping[str, Any]]:
    """The schema node and those of its oneOf/anyOf branches that describe a value of JSON type `kind`."""
    if not isinstance(schema, Mapping):
        return []
    found = [schema] if kind in _declared_types(schema) else []
    for branch in [*schema.get("oneOf", []), *schema.get("anyOf", [])]:
        found += _branches(branch, kind)
    return found


def _scalar_from_text(text: str, types: set[str]) -> Any:
    """`text` as the null, boolean, integer or number the schema admits there; unchanged when it is none."""
    if "null" in types and text in _NULLS:
        return None
    if "boolean" in types and text in _BOOLEANS:
        return _BOOLEANS[text]
    if types & {"integer", "number"} and _INTEGER.fullmatch(text):
        return int(text)
    if "number" in types and _NUMBER.fullmatch(text):
        return float(text)
    return text


def command_line_values(config: Any, schema: Mapping[str, Any]) -> Any:
    """Turn the strings of `snakemake --config` into the booleans, numbers and nulls the schema expects.

    Snakemake keeps `job_server=false` as the string 'false', and every value inside a nested
    `evaluation={batch_size: 64}` as a string too. Where the schema admits a boolean, an integer, a number
    or null at that key path, a string spelling one of them (YAML 1.2: true/false, 64, 1.5e3, null) becomes
    it; any other string stays and meets the schema's own check. Returns the converted value; dictionaries
    and lists are converted in place, so the workflow's `config` itself holds the typed values.
    """
    if isinstance(config, str):
        return _scalar_from_text(config, _types(schema))
    if isinstance(config, dict):
        for node in _branches(schema, "object"):
            for key, value in config.items():
                properties = node.get("properties", {})
                child = properties.get(key, node.get("additionalProperties"))
                if isinstance(child, Mapping):
                    config[key] = command_line_values(value, child)
    elif isinstance(config, list):
        for node in _branches(schema, "array"):
            if isinstance(node.get("items"), Mapping):
                for index, value in enumerate(config):
                    config[index] = command_line_values(value, node["items"])
    return config


def check_config(
    config: Any,
    schema_path: str | os.PathLike[str],
    source: str = "config",
    repository: str | os.PathLike[str] | None = None,
) -> None:
    """ConfigError listing every problem of `config`; the cross-field rules run once the schema holds.

    `repository` (the workflow's base directory) also checks that the shipped folders exist.
    """
    schema = load_schema(schema_path)
    problems = schema_problems(config, schema)
    if not problems:
        problems = cross_field_problems(config, repository)
    if problems:
        raise ConfigError(problems, source)
