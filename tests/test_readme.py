"""The README's configuration table stays true to ``Settings``."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from proxy.ops.config import Settings, env_name, option_name

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_option_is_documented_with_its_environment_variable() -> None:
    text = README.read_text()
    for spec in fields(Settings):
        assert f"| `{option_name(spec.name)}` | `{env_name(spec.name)}` |" in text, spec.name


def test_every_metric_is_documented() -> None:
    from prometheus_client import CollectorRegistry

    from proxy.ops.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry)
    text = README.read_text()
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        name = name + "_info" if family.type == "info" else name
        assert f"`{name}`" in text, name
