"""The committed config reference and JSON Schema match the code."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from modelberth.config import json_schema, parse_config

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_config_docs.py"
HINT = "is stale: run `.venv/bin/python scripts/gen_config_docs.py` and commit the result"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_schema_file_is_current(generator: ModuleType) -> None:
    text = (ROOT / "docs" / "config.schema.json").read_text(encoding="utf-8")
    assert text == generator.schema_json(), f"docs/config.schema.json {HINT}"
    assert json.loads(text) == json_schema()
    assert text.endswith("}\n")


def test_reference_is_current(generator: ModuleType) -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert text == generator.configuration_md(), f"docs/configuration.md {HINT}"


def test_reference_covers_every_key_and_template(generator: ModuleType) -> None:
    text = generator.configuration_md()
    for section in (
        "`server`",
        "`defaults`",
        "`resources`",
        "`docker`",
        "`models.NAME`",
        "Templates",
    ):
        assert f"## {section}" in text
    for name in (
        "server.port",
        "defaults.idle_timeout",
        "resources.gpus",
        "docker.url",
        "command",
        "health_path",
        "aliases",
    ):
        assert f"| `{name}` |" in text
    for name in ("llama-cpp", "vllm", "tgi", "sglang", "openai"):
        assert f"| `{name}` |" in text
    for topic in (
        "-c PATH",
        "MODELBERTH_CONFIG",
        "./modelberth.yaml",
        "${NAME:-default}",
        "`$$`",
        "${PORT}",
        "${MODEL_PATH}",
        "${MODEL_NAME}",
        "`250ms`",
        "`1h`",
    ):
        assert topic in text


def test_reference_example_is_a_valid_config(generator: ModuleType) -> None:
    example = generator.configuration_md().split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(example, "example", env={"MODELBERTH_KEY": "k"})
    specs = config.specs()
    assert specs["qwen"].model_path == "/models/qwen2.5-7b-q4_k_m.gguf"
    assert specs["embed"].idle_timeout == 30.0
    assert specs["qwen"].idle_timeout == 300.0
