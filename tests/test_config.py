"""Config: every error names its key path and YAML line; defaults, templates, placeholders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelberth.config import ConfigError, ModelSpec, load_config, parse_config
from modelberth.templates import TEMPLATES

GOOD = """\
server:
  port: 9000
defaults:
  idle_timeout: 5m
  start_timeout: 30s
models:
  a:
    command: llama-server -m "/models/my model.gguf" --port ${PORT}
    aliases: [gpt-4o-mini]
    env: {THREADS: 4, FLAG: true}
    idle_timeout: 250ms
  b:
    template: llama-cpp
    model_path: ${MODELS}/b.gguf
"""


def issues(text: str, env: dict[str, str] | None = None) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.yaml", env=env or {})
    return [(i.path, i.line, i.message) for i in caught.value.issues]


def one_issue(text: str, env: dict[str, str] | None = None) -> tuple[str, int | None, str]:
    found = issues(text, env)
    assert len(found) == 1, found
    return found[0]


def test_good_config_resolves_defaults_templates_and_env() -> None:
    specs = parse_config(GOOD, env={"MODELS": "/srv/models"}).specs()
    a, b = specs["a"], specs["b"]
    assert a.command == ("llama-server", "-m", "/models/my model.gguf", "--port", "${PORT}")
    assert a.argv(1234)[-1] == "1234"
    assert a.env == {"THREADS": "4", "FLAG": "true"}
    assert a.idle_timeout == 0.25  # the model's own value wins
    assert b.idle_timeout == 300.0  # 5m from defaults
    assert a.start_timeout == b.start_timeout == 30.0
    assert a.aliases == ("gpt-4o-mini",)
    assert b.model_path == "/srv/models/b.gguf"
    assert b.argv(5) == ["llama-server", "--host", "127.0.0.1", "--port", "5",
                         "-m", "/srv/models/b.gguf"]
    assert b.health_path == "/health"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_resolves(name: str) -> None:
    extra = 'command: [srv, "${PORT}"]' if not TEMPLATES[name].command else ""
    text = f"models:\n  m:\n    template: {name}\n    model_path: /m\n    {extra}\n"
    spec = parse_config(text, env={}).specs()["m"]
    assert spec.health_path.startswith("/")
    assert "7" in spec.argv(7)
    if TEMPLATES[name].command:
        assert "/m" in spec.argv(7)


def test_docker_template_uses_image_and_gpu_variant() -> None:
    text = """\
models:
  cpu: {runtime: docker, template: llama-cpp, model_path: /models/x.gguf}
  gpu: {runtime: docker, template: llama-cpp, model_path: /models/x.gguf, gpus: all}
  bridged: {runtime: docker, template: vllm, model_path: org/model, network: bridge}
"""
    specs = parse_config(text, env={}).specs()
    assert specs["cpu"].docker is not None
    assert specs["cpu"].docker.image == "ghcr.io/ggml-org/llama.cpp:server"
    assert specs["gpu"].docker is not None
    assert specs["gpu"].docker.image.endswith(":server-cuda")
    assert specs["cpu"].argv(81) == ["--host", "127.0.0.1", "--port", "81", "-m",
                                     "/models/x.gguf"]
    bridged = specs["bridged"]
    assert bridged.docker is not None
    assert bridged.docker.container_port == 8000
    assert bridged.listen_host == "0.0.0.0"


def test_placeholders_and_dollar_escape() -> None:
    text = 'models:\n  m:\n    command: [srv, "--port=${PORT}", "--name=${MODEL_NAME}", "$$HOME"]\n'
    spec = parse_config(text, env={"HOME": "/root"}).specs()["m"]
    assert spec.argv(42) == ["srv", "--port=42", "--name=m", "$HOME"]
    env_text = 'models:\n  m:\n    command: [srv]\n    env: {PORT: "${PORT}", X: "${Y:-dflt}"}\n'
    env_spec = parse_config(env_text, env={}).specs()["m"]
    assert env_spec.environment(9) == {"PORT": "9", "X": "dflt"}


def test_config_hash_follows_what_changes_the_upstream() -> None:
    def spec(extra: str) -> ModelSpec:
        return parse_config(f'models:\n  m:\n    command: [s, "${{PORT}}"]\n{extra}',
                            env={}).specs()["m"]

    base = spec("")
    assert spec("    idle_timeout: 9\n").config_hash() == base.config_hash()
    assert spec("    aliases: [x]\n").config_hash() == base.config_hash()
    assert spec("    env: {A: b}\n").config_hash() != base.config_hash()


@pytest.mark.parametrize(
    ("text", "path", "line", "message"),
    [
        ("bogus: 1\n", "bogus", 1, "unknown key 'bogus'"),
        ("server:\n  prot: 1\n", "server.prot", 2, "unknown key 'prot'"),
        ("defaults:\n  idle_timout: 1\n", "defaults.idle_timout", 2, "unknown key"),
        ("models:\n  m:\n    command: [x, '${PORT}']\n    comand: x\n", "models.m.comand", 4,
         "unknown key 'comand'"),
        ("server:\n  port: high\n", "server.port", 2, "valid integer"),
        ("server:\n  port: 70000\n", "server.port", 2, "less than or equal to 65535"),
        ("defaults:\n  idle_timeout: -1\n", "defaults.idle_timeout", 2, "greater than or equal"),
        ("defaults:\n  idle_timeout: soon\n", "defaults.idle_timeout", 2, "duration"),
        ("models:\n  m:\n    template: nope\n", "models.m.template", 3, "'llama-cpp'"),
        ("models:\n  m:\n    command: [x, '${PORT}']\n    health_path: health\n",
         "models.m.health_path", 4, "must start with '/'"),
        ("models:\n  m:\n    command: []\n", "models.m.command", 3, "must not be empty"),
        ("models:\n  m:\n    template: llama-cpp\n", "models.m", 2, "needs `model_path`"),
        ("models:\n  m:\n    command: [x]\n", "models.m", 2, "cannot learn its port"),
        ("models:\n  m:\n    command: [x, '${PORT}']\n    image: y\n", "models.m", 2,
         "only for runtime: docker"),
        ("models:\n  m: {runtime: docker, command: [x, '${PORT}']}\n", "models.m", 2,
         "needs `image`"),
        ("models:\n  m: {runtime: docker, image: i, command: [x, '${PORT}'], volumes: [a]}\n",
         "models.m.volumes", 2, "is not 'host:/container"),
        ("models:\n  'bad name':\n    command: [x, '${PORT}']\n", "models", 1,
         "may hold only letters"),
        ("models:\n  a: {command: [x, '${PORT}']}\n  b: {command: [y, '${PORT}'], aliases: [a]}\n",
         "models", 1, "alias 'a' of 'b' is already used by 'a'"),
        ("models:\n  a: {command: [x, '${PORT}'], aliases: [z]}\n"
         "  b: {command: [y, '${PORT}'], aliases: [z]}\n",
         "models", 1, "alias 'z' of 'b' is already used by 'a'"),
        ("server:\n  port: 1\nserver:\n  port: 2\n", "server", 3, "duplicate key"),
        ("server: [1,\n", "", 2, "invalid YAML"),
        ("- a\n- b\n", "", 1, "must be a mapping"),
        ("models:\n  m:\n    command: [x, '${PORT}', '${NOT_SET}']\n", "models.m.command.2", 3,
         "${NOT_SET} is not set"),
    ],
)
def test_each_error_names_its_key_and_line(text: str, path: str, line: int,
                                           message: str) -> None:
    found_path, found_line, found_message = one_issue(text)
    assert (found_path, found_line) == (path, line)
    assert message in found_message


def test_all_errors_are_reported_sorted_by_line() -> None:
    text = """\
server:
  port: -1
models:
  m:
    comand: x
    idle_timeout: never
  n:
    command: [x, "${PORT}", "${MISSING}"]
"""
    found = issues(text)
    lines = [line or 0 for _, line, _ in found]
    assert lines == sorted(lines)
    assert {(p, line) for p, line, _ in found} >= {
        ("server.port", 2), ("models.m.comand", 5), ("models.m.idle_timeout", 6),
        ("models.n.command.2", 8)}


def test_env_default_is_used_when_unset() -> None:
    spec = parse_config('models:\n  m:\n    command: ["${BIN:-llama-server}", "${PORT}"]\n',
                        env={}).specs()["m"]
    assert spec.command[0] == "llama-server"


def test_load_config_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.yaml")
    assert "cannot read" in str(caught.value)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelberth", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("models:\n  m: {command: [x, '${PORT}']}\n")
    ok = run_cli("check", "-c", str(good))
    assert ok.returncode == 0
    assert "OK, 1 model(s): m" in ok.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: x\nmodels:\n  m:\n    comand: y\n")
    failed = run_cli("check", "-c", str(bad))
    assert failed.returncode == 2
    assert f"{bad}:line 2: server.port" in failed.stderr
    assert f"{bad}:line 5: models.m.comand: unknown key 'comand'" in failed.stderr

    missing = run_cli("check", "-c", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr


def test_schema_command_prints_a_json_schema() -> None:
    result = run_cli("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"server", "defaults", "models", "docker"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
