"""Read a checkpoint that pickles whole `nn.Module` objects, without importing or running the code it names.

The task_vectors release saves `torch.save(image_encoder.cpu())` (github.com/mlfoundations/task_vectors @ 826a64c,
src/utils.py L49-52): the pickle names `src.modeling.ImageEncoder`, the open_clip classes of the CLIP it holds as
`.model`, torch.nn layers, and the torchvision / open_clip preprocessing transforms it keeps as attributes
(src/modeling.py L18-19). None of that code needs to exist here: a module's tensors live in the generic
`nn.Module` state (`_parameters`, `_buffers`, `_modules`), which the pickle restores into whatever object the
class name resolves to.

`restricted_pickle()` is a `pickle` replacement for `torch.load(pickle_module=...)` whose Unpickler resolves only
- torch's tensor and parameter rebuild functions and dtypes, `collections.OrderedDict` and `set`;
- classes under `MODULE_PREFIXES`, each to a `PickledObject` stand-in that stores what the pickle hands it.
Any other global is refused, naming it. Storages never reach it: torch.load resolves them itself.
`module_state_dict` then flattens the stand-in tree the way `nn.Module.state_dict()` does.
"""

from __future__ import annotations

import collections
import pickle
import types
from collections.abc import Mapping
from typing import Any

import torch

from mergeflow.io import InputError
from mergeflow.types import StateDict

# The authors' packages are all called `src`; the rest are the libraries whose classes such a module tree holds.
MODULE_PREFIXES: tuple[str, ...] = ("src.", "open_clip.", "torch.nn.", "torchvision.transforms.")
_FUNCTIONS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # protocol 2 pickles name Python 2's module
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
}
_MODULE_STATE = ("_parameters", "_buffers", "_modules")


class PickledObject:
    """Stand-in for a class named in the pickle: holds the state the pickle restores, runs nothing."""

    pickled_class = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["pickled_args"] = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], Mapping):
            state, slots = state
            self.__dict__.update(slots)
        if isinstance(state, Mapping):
            self.__dict__.update(state)
        else:
            self.__dict__["pickled_state"] = state


def _stand_in(module: str, name: str) -> type[PickledObject]:
    namespace = {"__module__": module, "__qualname__": name, "pickled_class": f"{module}.{name}"}
    return type(name, (PickledObject,), namespace)


def restricted_pickle(label: str) -> types.ModuleType:
    """A `pickle` module whose Unpickler accepts only the globals a pickled module tree needs."""
    stand_ins: dict[tuple[str, str], type[PickledObject]] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in _FUNCTIONS:
                return _FUNCTIONS[module, name]
            if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
            if module.startswith(MODULE_PREFIXES):
                return stand_ins.setdefault((module, name), _stand_in(module, name))
            raise InputError(
                f"{label}: the pickle names {module}.{name}, which a pickled module tree does not need; only "
                f"tensors, torch rebuild functions and classes under {list(MODULE_PREFIXES)} are read"
            )

    restricted = types.ModuleType("mergeflow_restricted_pickle")
    restricted.__dict__.update({key: getattr(pickle, key) for key in dir(pickle) if not key.startswith("__")})
    restricted.Unpickler = Unpickler  # type: ignore[attr-defined]
    restricted.load = lambda file, **kwargs: Unpickler(file, **kwargs).load()  # type: ignore[attr-defined]
    return restricted


def is_module(obj: object) -> bool:
    return isinstance(obj, PickledObject) and all(isinstance(obj.__dict__.get(key), Mapping) for key in _MODULE_STATE)


def module_state_dict(root: PickledObject, label: str) -> StateDict:
    """`<path>.<name>` → tensor for every parameter and persistent buffer of the tree, as `state_dict()` names them."""
    tensors: StateDict = {}
    pending: list[tuple[str, PickledObject]] = [("", root)]
    seen: set[int] = set()
    while pending:
        prefix, node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if not is_module(node):
            raise InputError(f"{label}: {prefix or 'the pickled object'} is a {type(node).__name__}, not a module")
        state = node.__dict__
        transient = state.get("_non_persistent_buffers_set") or set()
        named = [*state["_parameters"].items(), *((k, v) for k, v in state["_buffers"].items() if k not in transient)]
        for name, value in named:
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise InputError(f"{label}: {prefix}{name} holds a {type(value).__name__}, expected a tensor")
            tensors[f"{prefix}{name}"] = value.detach()
        pending += [(f"{prefix}{name}.", child) for name, child in state["_modules"].items() if child is not None]
    return tensors
