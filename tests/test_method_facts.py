"""Every method's facts live on its declaration, and everything that shows a method reads them from there."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from mergeflow.adaptive.settings import ADAPTIVE_METHODS, SETTINGS_CLASSES, is_adaptive
from mergeflow.dag.config_check import load_schema
from mergeflow.merging.entries import factor_kind
from mergeflow.merging.registry import METHODS
from mergeflow.report.tables import display_name

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
ALL_METHODS = [*METHODS, *SETTINGS_CLASSES]


@pytest.mark.parametrize("name", list(METHODS))
def test_every_static_method_declares_its_facts(name: str) -> None:
    method = METHODS[name]
    assert method.name == name and method.display.strip() and method.summary.strip()
    assert method.factors in (None, "centered", "original")
    for param in method.params:
        assert param.summary.strip(), f"{name}.{param.name} has no summary"
        assert param.parse(param.default) == param.default, f"{name}.{param.name}: default does not parse"


@pytest.mark.parametrize("name", list(SETTINGS_CLASSES))
def test_every_adaptive_method_declares_its_facts(name: str) -> None:
    cls = SETTINGS_CLASSES[name]
    assert cls.method == name and cls.display.strip() and (cls.__doc__ or "").strip()
    for item in dataclasses.fields(cls):
        assert item.metadata.get("help"), f"{name}.{item.name} has no help text"


def test_names_and_display_names_are_unique_and_documented() -> None:
    displays = [display_name(name) for name in ALL_METHODS]
    assert len(set(ALL_METHODS)) == len(ALL_METHODS) and len(set(displays)) == len(displays)
    assert display_name("cart") == METHODS["cart"].display == "CART"
    assert display_name("adarank@ta") == "AdaRank (ta)"
    documented = (REPO / "docs" / "methods.md").read_text(encoding="utf-8")
    assert [name for name in ALL_METHODS if f"`{name}`" not in documented] == []


def test_factor_kinds_and_adaptivity_come_from_the_declarations() -> None:
    assert {name: factor_kind(name) for name in ALL_METHODS if factor_kind(name)} == {
        "tsv_m": "original",
        "lowrank_ta": "original",
        "cart": "centered",
    }
    assert factor_kind("cart@released") == "centered" and factor_kind("adamerging_cart") is None
    assert ADAPTIVE_METHODS == ("adamerging", "adamerging_cart", "adarank")
    assert is_adaptive("adarank@ta") and not is_adaptive("cart")


def test_the_schema_admits_exactly_the_declared_methods() -> None:
    pattern = re.compile(load_schema(SCHEMA)["properties"]["methods"]["propertyNames"]["pattern"])
    for name in ALL_METHODS:
        assert pattern.fullmatch(name) and pattern.fullmatch(f"{name}@variant_1")
    for wrong in ("carts", "cart@", "CART", "cart@a b", "ada"):
        assert not pattern.fullmatch(wrong), wrong
