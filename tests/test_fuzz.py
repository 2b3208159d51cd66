"""Fuzzing: schemathesis against the live OpenAPI, hypothesis on config and model extraction."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import fake_model
from modelberth.config import Config, ConfigError, parse_config
from modelberth.errors import APIError
from modelberth.proxy.request import model_from_body

# Beside the Python running the tests: the repository's .venv, or another checkout's when a
# git worktree is tested with it.
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def test_schemathesis_finds_no_server_errors(modelberth: Any, tmp_path: Path) -> None:
    mb = modelberth({"models": {"m": fake_model(None, aliases=["alias"]), "n": fake_model(None)}})
    # Real model names for {name}, so management calls reach the lifecycle, not only 404s.
    (tmp_path / "schemathesis.toml").write_text(
        '[parameters]\n"path.name" = "m"\n"path.model_id" = "alias"\n'
    )
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{mb.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "15",
            "--request-timeout",
            "30",
            "--generation-deterministic",
            # endless streams by design:
            "--exclude-path",
            "/api/events",
            "--exclude-path",
            "/api/models/{name}/logs",
            "--exclude-path",
            "/api/logs",
            "--exclude-path",
            "/api/reload",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in result.stdout.lower()


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-10, 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
keys = st.sampled_from(
    [
        "server",
        "defaults",
        "models",
        "command",
        "port",
        "host",
        "m",
        "idle_timeout",
        "aliases",
        "env",
        "template",
        "runtime",
        "image",
        "health_path",
        "api_keys",
        "gpus",
        "volumes",
        "x",
    ]
) | st.text(max_size=8)
trees = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, trees, max_size=4))
def test_any_config_tree_parses_or_fails_with_config_errors(tree: dict[str, Any]) -> None:
    text = yaml.safe_dump(tree)
    try:
        config = parse_config(text, "fuzz.yaml", env={})
    except ConfigError as exc:
        assert exc.issues
        assert all(issue.message for issue in exc.issues)
        return
    assert isinstance(config, Config)
    config.specs()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_fails_with_config_errors(text: str) -> None:
    try:
        parse_config(text, "fuzz.yaml", env={})
    except ConfigError as exc:
        assert exc.issues


SCOPE = {"headers": [(b"content-type", b"application/json")]}
# JSON as RFC 8259 has it: no NaN or Infinity (json.dumps writes them; they are rejected).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-10, 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)


def test_nan_and_infinity_are_not_json() -> None:
    for body in (b'{"model": "m", "temperature": NaN}', b'{"model": "m", "x": Infinity}'):
        try:
            model_from_body(SCOPE, body)
        except APIError as exc:
            assert (exc.status, exc.body()["error"]["code"]) == (400, "invalid_json")
        else:
            raise AssertionError(f"{body!r} was accepted")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_model_extraction_returns_a_name_or_a_400(body: bytes) -> None:
    try:
        name, _ = model_from_body(SCOPE, body)
    except APIError as exc:
        assert exc.status == 400
        assert exc.body()["error"]["code"] in {
            "invalid_json",
            "invalid_body",
            "missing_model",
            "invalid_model",
        }
        return
    assert isinstance(name, str)
    assert json.loads(body)["model"] == name


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.dictionaries(st.text(max_size=6), json_values, max_size=3))
def test_model_field_is_found_in_any_object(model: str, rest: dict[str, Any]) -> None:
    body = json.dumps({**rest, "model": model}).encode()
    assert model_from_body(SCOPE, body)[0] == model
