"""The committed config reference and JSON Schema match the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
HINT = "stale: run `.venv/bin/python scripts/gen_config_docs.py` and commit the result"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_docs",
                                                  ROOT / "scripts" / "gen_config_docs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_schema_file_is_current() -> None:
    text = (ROOT / "docs" / "config.schema.json").read_text()
    assert text == _generator().schema_json(), f"docs/config.schema.json is {HINT}"


def test_reference_is_current() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert text == _generator().configuration_md(), f"docs/configuration.md is {HINT}"
