"""Config: every error names its key path and YAML line; defaults, templates, placeholders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema_rs  # installed with schemathesis (test extra)
import pytest
import yaml
from pydantic import ValidationError

from modelberth.config import (
    Config,
    ConfigError,
    ConfigIssue,
    ModelSpec,
    config_path,
    json_schema,
    load_config,
    parse_config,
)
from modelberth.config.templates import TEMPLATES

ROOT = Path(__file__).resolve().parent.parent
PORT_CMD = "[srv, '${PORT}']"

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
    assert caught.value.source == "test.yaml"
    return [(i.path, i.line, i.message) for i in caught.value.issues]


def one_issue(text: str, env: dict[str, str] | None = None) -> tuple[str, int | None, str]:
    found = issues(text, env)
    assert len(found) == 1, found
    return found[0]


def spec_of(text: str, env: dict[str, str] | None = None, name: str = "m") -> ModelSpec:
    return parse_config(text, "test.yaml", env=env or {}).specs()[name]


def model(body: str, env: dict[str, str] | None = None) -> ModelSpec:
    """The spec of model `m` whose settings are the (4-space indented) YAML lines in body."""
    return spec_of("models:\n  m:\n" + body, env)


# --- error paths: key path and line ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "line", "message"),
    [
        # unknown keys, at every level
        ("server:\n  port: 1\nbogus: 1\n", "bogus", 3, "unknown key 'bogus'"),
        ("server:\n  host: h\n  prot: 1\n", "server.prot", 3, "unknown key 'prot'"),
        ("defaults:\n  idle_timout: 1\n", "defaults.idle_timout", 2, "unknown key 'idle_timout'"),
        ("resources:\n  gpu: auto\n", "resources.gpu", 2, "unknown key 'gpu'"),
        ("docker:\n  host: x\n", "docker.host", 2, "unknown key 'host'"),
        (
            f"models:\n  m:\n    command: {PORT_CMD}\n    comand: x\n",
            "models.m.comand",
            4,
            "unknown key 'comand'",
        ),
        (
            "resources:\n  gpus:\n    - index: 0\n      vram_budget_mb: 9\n      vram: 1\n",
            "resources.gpus.0.vram",
            5,
            "unknown key 'vram'",
        ),
        # keys are read as written: YAML 1.1 would make `on` the boolean true
        ("on: 1\n", "on", 1, "unknown key 'on'"),
        # bad types
        ("server:\n  port: high\n", "server.port", 2, "valid integer"),
        ("server:\n  port: 70000\n", "server.port", 2, "less than or equal to 65535"),
        ("server:\n  api_keys: secret\n", "server.api_keys", 2, "valid list"),
        ("server:\n  protect_health: maybe\n", "server.protect_health", 2, "valid boolean"),
        ("server: 5\n", "server", 1, "valid dictionary"),
        ("models: [a, b]\n", "models", 1, "valid dictionary"),
        ("defaults:\n  max_queue: -1\n", "defaults.max_queue", 2, "greater than or equal to 0"),
        ("models:\n  m: {command: 5}\n", "models.m.command", 2, "valid list"),
        (
            "models:\n  m:\n    command: [srv, '${PORT}', null]\n",
            "models.m.command.2",
            3,
            "valid string",
        ),
        (
            "models:\n  m:\n    command: [srv, '${PORT}']\n    env: [A]\n",
            "models.m.env",
            4,
            "valid dictionary",
        ),
        (
            "models:\n  m:\n    command: [srv, '${PORT}']\n    runtime: podman\n",
            "models.m.runtime",
            4,
            "'swarm' or 'remote' (got 'podman')",
        ),
        # a union's members are not keys; a list is checked as the list member only
        (
            "resources:\n  gpus:\n    - index: 0\n",
            "resources.gpus.0.vram_budget_mb",
            3,
            "Field required",
        ),
        # durations
        ("defaults:\n  idle_timeout: -1\n", "defaults.idle_timeout", 2, "greater than or equal"),
        ("defaults:\n  stop_timeout: -5s\n", "defaults.stop_timeout", 2, "duration like '30s'"),
        ("defaults:\n  idle_timeout: soon\n", "defaults.idle_timeout", 2, "duration like '30s'"),
        ("defaults:\n  drain_timeout: 5 minutes\n", "defaults.drain_timeout", 2, "duration"),
        ("defaults:\n  start_timeout: 0\n", "defaults.start_timeout", 2, "greater than 0"),
        (
            "models:\n  m:\n    command: [srv, '${PORT}']\n    idle_timeout: -3\n",
            "models.m.idle_timeout",
            4,
            "greater than or equal to 0",
        ),
        (
            "models:\n  m:\n    command: [srv, '${PORT}']\n    start_timeout: 0s\n",
            "models.m.start_timeout",
            4,
            "greater than 0",
        ),
        # templates, commands, health
        (
            "models:\n  m:\n    template: nope\n",
            "models.m.template",
            3,
            "'llama-cpp', 'vllm', 'tgi', 'sglang' or 'openai' (got 'nope')",
        ),
        (
            "models:\n  m:\n    command: [x, '${PORT}']\n    health_path: health\n",
            "models.m.health_path",
            4,
            "must start with '/'",
        ),
        ("models:\n  m:\n    command: []\n", "models.m.command", 3, "must not be empty"),
        ("models:\n  m:\n    command: ''\n", "models.m.command", 3, "must not be empty"),
        (
            'models:\n  m:\n    command: srv "${PORT}\n',
            "models.m.command",
            3,
            "No closing quotation",
        ),
        (
            "models:\n  m:\n    template: llama-cpp\n",
            "models.m",
            2,
            "template 'llama-cpp' needs `model_path`",
        ),
        (
            "models:\n  m:\n    runtime: docker\n    template: vllm\n",
            "models.m",
            2,
            "template 'vllm' needs `model_path`",
        ),
        ("models:\n  m:\n    template: openai\n", "models.m", 2, "no command"),
        ("models:\n  m:\n    idle_timeout: 3\n", "models.m", 2, "no command"),
        (
            "models:\n  m:\n    command: [x, --port, 80]\n",
            "models.m",
            2,
            "cannot learn its port: put ${PORT} in `command` or `env`, or set a fixed `port`",
        ),
        (
            "models:\n  m:\n    command: [x, '${PORT}']\n    port: 0\n",
            "models.m.port",
            4,
            "greater than or equal to 1",
        ),
        # runtime-specific keys
        (
            "models:\n  m:\n    command: [x, '${PORT}']\n    image: y\n",
            "models.m",
            2,
            "image: only for runtime: docker",
        ),
        (
            "models:\n  m: {runtime: docker, command: [x, '${PORT}']}\n",
            "models.m",
            2,
            "needs `image`",
        ),
        (
            "models:\n  m: {runtime: docker, image: i, cwd: /tmp, command: [x, '${PORT}']}\n",
            "models.m",
            2,
            "cwd: only for runtime: process",
        ),
        (
            "models:\n  m: {runtime: docker, image: i, network: bridge}\n",
            "models.m",
            2,
            "network: bridge needs `container_port`",
        ),
        (
            "models:\n  m: {runtime: docker, image: i, command: [x, '${PORT}'], volumes: [a]}\n",
            "models.m.volumes",
            2,
            "'a' is not 'host:/container[:ro|rw]'",
        ),
        # names and aliases: the offending key or list item, on its own line
        (
            "models:\n  ok: {command: [x, '${PORT}']}\n"
            "  'bad name':\n    command: [x, '${PORT}']\n",
            "models.bad name",
            3,
            "model name 'bad name' may hold only letters, digits and ._:@+-",
        ),
        ("models:\n  -m: {command: [x, '${PORT}']}\n", "models.-m", 2, "may hold only"),
        (
            "models:\n  a: {command: [x, '${PORT}']}\n  b:\n    command: [y, '${PORT}']\n"
            "    aliases:\n      - c\n      - a\n",
            "models.b.aliases.1",
            7,
            "alias 'a' of 'b' is already used by 'a'",
        ),
        (
            "models:\n  a: {command: [x, '${PORT}'], aliases: [z]}\n"
            "  b: {command: [y, '${PORT}'], aliases: [z]}\n",
            "models.b.aliases.0",
            3,
            "alias 'z' of 'b' is already used by 'a'",
        ),
        (
            "models:\n  a: {command: [x, '${PORT}'], aliases: [b]}\n"
            "  b: {command: [y, '${PORT}']}\n",
            "models.a.aliases.0",
            2,
            "alias 'b' of 'a' is already used by 'b'",
        ),
        (
            "server:\n  trusted_proxies:\n    - 10.0.0.0/8\n    - localhost\n",
            "server.trusted_proxies",
            2,
            "'localhost' is not an IP address or CIDR network",
        ),
        ("server:\n  header_timeout: 0\n", "server.header_timeout", 2, "greater than 0"),
        ("server:\n  instance_id: 'a b'\n", "server.instance_id", 2, "should match pattern"),
        (
            "defaults:\n  max_timeouts: 0\n",
            "defaults.max_timeouts",
            2,
            "greater than or equal to 1",
        ),
        # YAML itself
        ("server:\n  port: 1\nserver:\n  port: 2\n", "server", 3, "duplicate key"),
        ("server:\n  host: a\n  host: b\n", "server.host", 3, "duplicate key"),
        ("server: [1,\n", "", 2, "invalid YAML"),
        ("server:\n  port: 1\n bad indent: 2\n", "", 3, "invalid YAML"),
        ("server:\n\tport: 1\n", "", 2, "invalid YAML"),
        ("a: 1\n---\nb: 2\n", "", 2, "invalid YAML"),
        ("server:\n  host: !env HOST\n", "", 2, "invalid YAML"),
        ("server:\n  host: !!python/object:os.system x\n", "", 2, "invalid YAML"),
        ("models:\n  m: &m\n    aliases: *m\n", "", 2, "an anchor is used inside itself"),
        ("models:\n  m: &m\n    command: [x]\n    <<: *m\n", "", 4, "`<<` merges a mapping"),
        ("? [a, b]\n: 1\n", "", 1, "keys must be strings"),
        # the document
        ("- a\n- b\n", "", 1, "the config must be a mapping of keys"),
        ("just text\n", "", 1, "the config must be a mapping of keys"),
        ("~\n", "", 1, "the config must be a mapping of keys"),
        # environment
        (
            "models:\n  m:\n    command: [x, '${PORT}', '${NOT_SET}']\n",
            "models.m.command.2",
            3,
            "environment variable ${NOT_SET} is not set (use ${NOT_SET:-default} for a default)",
        ),
        ("server:\n  host: ${HOST_ADDR}\n", "server.host", 2, "${HOST_ADDR} is not set"),
        ("server:\n  port: ${LISTEN}\n", "server.port", 2, "${LISTEN} is not set"),
    ],
)
def test_each_error_names_its_key_and_line(text: str, path: str, line: int, message: str) -> None:
    found_path, found_line, found_message = one_issue(text)
    assert (found_path, found_line) == (path, line), found_message
    assert message in found_message


def test_all_errors_are_reported_sorted_by_line() -> None:
    text = """\
server:
  port: -1
  prot: 2
models:
  m:
    comand: x
    idle_timeout: never
  n:
    command: [x, "${PORT}", "${MISSING}"]
  bad name:
    command: [x]
  o:
    command: [x, "${PORT}"]
    health_path: nope
defaults:
  idle_timeout: -5
"""
    found = issues(text)
    lines = [line for _, line, _ in found]
    assert lines == sorted(line or 0 for line in lines)
    assert [(path, line) for path, line, _ in found] == [
        ("server.port", 2),
        ("server.prot", 3),
        ("models.m.comand", 6),
        ("models.m.idle_timeout", 7),
        ("models.n.command.2", 9),
        ("models.bad name", 10),  # the bad name
        ("models.bad name", 10),  # and what is wrong inside it
        ("models.o.health_path", 14),
        ("defaults.idle_timeout", 16),
    ]


@pytest.mark.parametrize(
    ("text", "path", "line", "allowed"),
    [
        ("resources:\n  gpus: 3\n", "resources.gpus", 2, "'auto'"),
        (
            "models:\n  m:\n    command: [srv, '${PORT}']\n    gpus: some\n",
            "models.m.gpus",
            4,
            "'all'",
        ),
    ],
)
def test_a_value_fitting_no_union_member_names_the_key(
    text: str, path: str, line: int, allowed: str
) -> None:
    found = issues(text)
    assert {(p, n) for p, n, _ in found} == {(path, line)}
    assert any(allowed in message for _, _, message in found)
    assert any("valid list" in message for _, _, message in found)


def test_every_alias_collision_is_reported() -> None:
    text = """\
models:
  a: {command: [x, "${PORT}"], aliases: [shared, b]}
  b:
    command: [y, "${PORT}"]
    aliases: [shared, own, a]
"""
    assert issues(text) == [
        ("models.a.aliases.1", 2, "alias 'b' of 'a' is already used by 'b'"),
        ("models.b.aliases.0", 5, "alias 'shared' of 'b' is already used by 'a'"),
        ("models.b.aliases.2", 5, "alias 'a' of 'b' is already used by 'a'"),
    ]


def test_alias_collisions_are_reported_with_other_errors() -> None:
    text = """\
models:
  a:
    command: [x]
  b: {command: [y, "${PORT}"], aliases: [a]}
"""
    assert [(path, line) for path, line, _ in issues(text)] == [
        ("models.a", 2),
        ("models.b.aliases.0", 4),
    ]


def test_alias_collisions_from_python() -> None:
    with pytest.raises(ValidationError) as caught:
        Config.model_validate(
            {
                "models": {
                    "a": {"command": ["x", "${PORT}"], "aliases": ["b"]},
                    "b": {"command": ["y", "${PORT}"]},
                }
            }
        )
    ((error),) = caught.value.errors()
    assert error["loc"] == ("models", "a", "aliases", 0)
    assert error["msg"] == "alias 'b' of 'a' is already used by 'b'"


def test_an_unset_variable_is_reported_once() -> None:
    # The empty value it leaves is not a second error (port: "" is not an integer).
    assert issues("server:\n  port: ${P}\n") == [
        ("server.port", 2, "environment variable ${P} is not set (use ${P:-default} for a default)")
    ]


def test_error_text_names_source_line_path_and_message() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("server:\n  prot: 1\nmodels:\n  m: {command: []}\n", "my.yaml", env={})
    text = str(caught.value)
    assert text.splitlines() == [
        "my.yaml: 2 error(s)",
        "  my.yaml:line 2: server.prot: unknown key 'prot'",
        "  my.yaml:line 4: models.m.command: must not be empty",
    ]
    assert caught.value.render() == text
    assert str(ConfigIssue("", None, "cannot read")) == "<root>: cannot read"


def test_an_impossible_yaml_value_is_a_config_error() -> None:
    ((path, _, message),) = issues("server:\n  host: 2020-13-45\n")
    assert path == ""
    assert "invalid YAML value" in message


def test_deeply_nested_yaml_is_a_config_error() -> None:
    depth = 5000
    ((_, _, message),) = issues("server: " + "[" * depth + "]" * depth + "\n")
    assert "invalid YAML" in message


def test_non_printable_characters_are_a_config_error() -> None:
    ((_, line, message),) = issues("server:\n  host: a\x00b\n")
    assert line == 2
    assert "invalid YAML" in message


# --- success paths ------------------------------------------------------------------------


def test_good_config_resolves_defaults_templates_and_env() -> None:
    config = parse_config(GOOD, env={"MODELS": "/srv/models"})
    assert config.server.port == 9000
    assert config.server.host == "127.0.0.1"
    specs = config.specs()
    a, b = specs["a"], specs["b"]
    assert a.command == ("llama-server", "-m", "/models/my model.gguf", "--port", "${PORT}")
    assert a.argv(1234) == ["llama-server", "-m", "/models/my model.gguf", "--port", "1234"]
    assert a.env == {"THREADS": "4", "FLAG": "true"}
    assert a.idle_timeout == 0.25  # the model's own value wins
    assert b.idle_timeout == 300.0  # 5m from defaults
    assert a.start_timeout == b.start_timeout == 30.0
    assert a.aliases == ("gpt-4o-mini",)
    assert b.model_path == "/srv/models/b.gguf"
    assert b.argv(5) == [
        "llama-server",
        "--host",
        "127.0.0.1",
        "--port",
        "5",
        "-m",
        "/srv/models/b.gguf",
    ]
    assert b.health_path == "/health"
    assert a.health_path == "/health"  # no template: /health


def test_an_empty_file_is_a_config_without_models() -> None:
    for text in ("", "# nothing yet\n"):
        config = parse_config(text, env={})
        assert config.models == {}
        assert config.server.port == 8080


def test_command_string_is_split_like_a_shell_but_never_run_by_one() -> None:
    spec = model(
        "    command: >-\n"
        '      srv --name \'two words\' --msg "a \\"quoted\\" b" --path a\\ b\n'
        "      --port ${PORT} ; rm -rf / && echo $(id) | cat > out '*'\n"
    )
    assert spec.argv(80) == [
        "srv",
        "--name",
        "two words",
        "--msg",
        'a "quoted" b',
        "--path",
        "a b",
        "--port",
        "80",
        ";",
        "rm",
        "-rf",
        "/",
        "&&",
        "echo",
        "$(id)",
        "|",
        "cat",
        ">",
        "out",
        "*",
    ]


def test_command_list_items_are_taken_verbatim() -> None:
    spec = model('    command: [srv, "two words", "${PORT}", "a;b", "*"]\n')
    assert spec.argv(1) == ["srv", "two words", "1", "a;b", "*"]


def test_numbers_in_command_and_env_become_strings_as_written() -> None:
    spec = model(
        "    command: [srv, --port, '${PORT}', -t, 4, --temp, 0.7, --seed, 010, --v, 1.10,\n"
        "              --hex, 0x1F, --time, 1:30, --flag, true]\n"
        "    env: {THREADS: 8, SCALE: 1.50, ON: yes, OFF: false, MODE: 0o17, EMPTY: ''}\n"
    )
    assert spec.argv(9)[3:] == [
        "-t",
        "4",
        "--temp",
        "0.7",
        "--seed",
        "010",
        "--v",
        "1.10",
        "--hex",
        "0x1F",
        "--time",
        "1:30",
        "--flag",
        "true",
    ]
    assert spec.environment(9) == {
        "THREADS": "8",
        "SCALE": "1.50",
        "ON": "yes",
        "OFF": "false",
        "MODE": "0o17",
        "EMPTY": "",
    }


def test_numbers_become_strings_from_python_too() -> None:
    config = Config.model_validate(
        {
            "models": {
                "m": {
                    "command": ["srv", "--port", "${PORT}", "-t", 4, "--temp", 0.5],
                    "env": {"N": 3, "F": 1.5, "B": True, "S": "s"},
                }
            }
        }
    )
    spec = config.specs()["m"]
    assert spec.command == ("srv", "--port", "${PORT}", "-t", "4", "--temp", "0.5")
    assert spec.env == {"N": "3", "F": "1.5", "B": "true", "S": "s"}


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("'10'", 10.0),
        ("' 2 s '", 2.0),
        ("45", 45.0),
        ("2.5", 2.5),
        ("0", 0.0),
    ],
)
def test_durations(written: str, seconds: float) -> None:
    config = parse_config(
        f"defaults:\n  idle_timeout: {written}\n  stop_timeout: {written}\n", env={}
    )
    assert config.defaults.idle_timeout == seconds
    assert config.defaults.stop_timeout == seconds


def test_builtin_defaults() -> None:
    spec = model("    command: [x, '${PORT}']\n")
    assert (
        spec.idle_timeout,
        spec.start_timeout,
        spec.stop_timeout,
        spec.drain_timeout,
        spec.max_queue,
    ) == (300.0, 120.0, 10.0, 30.0, 64)
    assert spec.runtime == "process"
    assert spec.docker is None
    assert spec.fixed_port is None
    assert not spec.preload
    assert not spec.pinned
    assert spec.priority == 0


def test_upstream_timeouts_default_apply_and_per_model_values_win() -> None:
    text = """\
defaults:
  first_byte_timeout: 5m
  max_timeouts: 2
models:
  plain: {command: [x, "${PORT}"]}
  own: {command: [x, "${PORT}"], first_byte_timeout: 0, stream_stall_timeout: 2s,
        max_timeouts: 5}
"""
    specs = parse_config(text, env={}).specs()
    plain, own = specs["plain"], specs["own"]
    assert (plain.first_byte_timeout, plain.stream_stall_timeout, plain.max_timeouts) == (
        300.0,
        120.0,
        2,
    )
    assert (own.first_byte_timeout, own.stream_stall_timeout, own.max_timeouts) == (0.0, 2.0, 5)
    builtin = model("    command: [x, '${PORT}']\n")
    assert (builtin.first_byte_timeout, builtin.stream_stall_timeout, builtin.max_timeouts) == (
        600.0,
        120.0,
        3,
    )


def test_an_admin_key_is_an_inference_key_too() -> None:
    server = parse_config("server:\n  api_keys: [u]\n  admin_keys: [a]\n", env={}).server
    assert server.inference_keys == ["u", "a"]
    assert parse_config("server:\n  admin_keys: [a]\n", env={}).server.inference_keys == []


def test_defaults_apply_and_per_model_values_win() -> None:
    text = """\
defaults:
  idle_timeout: 1m
  start_timeout: 2m
  stop_timeout: 3s
  drain_timeout: 4s
  max_queue: 5
models:
  plain: {command: [x, "${PORT}"]}
  own:
    command: [x, "${PORT}"]
    idle_timeout: 0
    start_timeout: 1h
    stop_timeout: 500ms
    drain_timeout: 0
    max_queue: 0
"""
    specs = parse_config(text, env={}).specs()
    plain, own = specs["plain"], specs["own"]
    assert (
        plain.idle_timeout,
        plain.start_timeout,
        plain.stop_timeout,
        plain.drain_timeout,
        plain.max_queue,
    ) == (60.0, 120.0, 3.0, 4.0, 5)
    # 0 is a value, not "unset": it wins over the default too
    assert (
        own.idle_timeout,
        own.start_timeout,
        own.stop_timeout,
        own.drain_timeout,
        own.max_queue,
    ) == (0.0, 3600.0, 0.5, 0.0, 0)


PROCESS_ARGV = {
    "llama-cpp": ["llama-server", "--host", "127.0.0.1", "--port", "7", "-m", "/m/x"],
    "vllm": ["vllm", "serve", "/m/x", "--host", "127.0.0.1", "--port", "7"],
    "tgi": [
        "text-generation-launcher",
        "--model-id",
        "/m/x",
        "--hostname",
        "127.0.0.1",
        "--port",
        "7",
    ],
    "sglang": [
        "python3",
        "-m",
        "sglang.launch_server",
        "--model-path",
        "/m/x",
        "--host",
        "127.0.0.1",
        "--port",
        "7",
    ],
    "openai": ["my-server", "--listen", "127.0.0.1:7"],
}


def test_the_argv_table_covers_every_template() -> None:
    assert set(PROCESS_ARGV) == set(TEMPLATES)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_resolves_for_a_process(name: str) -> None:
    own_command = "    command: [my-server, --listen, '${HOST}:${PORT}']\n"
    extra = "" if TEMPLATES[name].command else own_command
    spec = model(f"    template: {name}\n    model_path: /m/x\n{extra}")
    assert spec.argv(7) == PROCESS_ARGV[name]
    assert spec.health_path == TEMPLATES[name].health_path
    assert spec.health_path == ("/v1/models" if name == "openai" else "/health")
    assert spec.model_path == "/m/x"
    assert spec.docker is None


@pytest.mark.parametrize("name", sorted(n for n, t in TEMPLATES.items() if t.image))
def test_every_template_resolves_for_docker(name: str) -> None:
    template = TEMPLATES[name]
    host = model(f"    runtime: docker\n    template: {name}\n    model_path: /m/x\n")
    assert host.docker is not None
    assert host.docker.image == template.image
    assert host.docker.network == "host"
    assert host.listen_host == "127.0.0.1"
    assert host.argv(7) == [
        part.replace("${HOST}", "127.0.0.1")
        .replace("${PORT}", "7")
        .replace("${MODEL_PATH}", "/m/x")
        for part in template.docker_command
    ]
    assert "7" in host.argv(7)
    assert "/m/x" in host.argv(7)

    gpu = model(f"    runtime: docker\n    template: {name}\n    model_path: /m/x\n    gpus: all\n")
    assert gpu.docker is not None
    assert gpu.docker.image == template.gpu_image

    bridged = model(
        f"    runtime: docker\n    template: {name}\n    model_path: /m/x\n    network: bridge\n"
    )
    assert bridged.docker is not None
    assert bridged.docker.container_port == template.container_port
    assert bridged.listen_host == "0.0.0.0"
    assert "0.0.0.0" in bridged.argv(template.container_port or 0)


def test_a_template_fills_only_what_the_model_leaves_out() -> None:
    spec = model(
        "    template: llama-cpp\n    command: [my-llama, -p, '${PORT}']\n    health_path: /ready\n"
    )
    assert spec.argv(3) == ["my-llama", "-p", "3"]
    assert spec.health_path == "/ready"
    docker = model(
        "    runtime: docker\n    template: vllm\n    image: my/vllm:1\n"
        "    command: [--model, m, --port, '${PORT}']\n    gpus: [0, 1]\n"
        "    network: bridge\n    container_port: 9000\n"
    )
    assert docker.docker is not None
    assert (docker.docker.image, docker.docker.container_port) == ("my/vllm:1", 9000)
    assert docker.gpus == (0, 1)


def test_openai_template_with_an_image_needs_no_command() -> None:
    spec = model(
        "    runtime: docker\n    template: openai\n    image: my/server\n"
        "    env: {PORT: '${PORT}'}\n"
    )
    assert spec.command == ()
    assert spec.health_path == "/v1/models"
    assert spec.environment(5) == {"PORT": "5"}


def test_port_may_be_learned_from_env_or_be_fixed() -> None:
    via_env = model("    command: [srv]\n    env: {LISTEN_PORT: '${PORT}'}\n")
    assert via_env.environment(81) == {"LISTEN_PORT": "81"}
    fixed = model("    command: [srv, --port, 9100]\n    port: 9100\n")
    assert fixed.fixed_port == 9100
    assert fixed.argv(9100) == ["srv", "--port", "9100"]


def test_per_start_placeholders_are_kept_then_filled() -> None:
    spec = model(
        "    model_path: /models/q.gguf\n"
        "    command: [srv, '--port=${PORT}', '--host=${HOST}', -m, '${MODEL_PATH}',\n"
        "              --alias, '${MODEL_NAME}', '$$HOME', '$${PORT}', 'cost=5$$']\n"
        "    env: {P: '${PORT}', WHO: '${MODEL_NAME}@${HOST}', FILE: '${MODEL_PATH}', D: '$$x'}\n",
        env={"PORT": "1", "MODEL_NAME": "from-env", "HOME": "/root"},
    )
    # kept for each start, never taken from the environment
    assert spec.command[1] == "--port=${PORT}"
    assert spec.command[4] == "${MODEL_PATH}"
    assert spec.argv(42) == [
        "srv",
        "--port=42",
        "--host=127.0.0.1",
        "-m",
        "/models/q.gguf",
        "--alias",
        "m",
        "$HOME",
        "${PORT}",
        "cost=5$",
    ]
    assert spec.argv(43)[1] == "--port=43"
    assert spec.environment(42) == {
        "P": "42",
        "WHO": "m@127.0.0.1",
        "FILE": "/models/q.gguf",
        "D": "$x",
    }


def test_gpus_set_cuda_visible_devices_for_a_process() -> None:
    spec = model("    command: [x, '${PORT}']\n    gpus: [1, 3]\n")
    # PCI bus order: CUDA then numbers the GPUs as NVML (and so the scheduler) does.
    assert spec.environment(1) == {"CUDA_VISIBLE_DEVICES": "1,3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    own = model("    command: [x, '${PORT}']\n    gpus: [1]\n    env: {CUDA_VISIBLE_DEVICES: 0}\n")
    assert own.environment(1) == {"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_env_vars_expand_from_the_given_mapping() -> None:
    env = {"HOME": "/home/me", "BIN": "/opt/bin", "KEY": "k1", "N": "9001"}
    text = """\
server:
  port: ${N}
  api_keys: ["${KEY}", "${OTHER:-k2}", "${EMPTY:-}"]
models:
  m:
    command: ${BIN}/srv --port ${PORT} --home "${HOME}/x y" ${FLAGS:---verbose}
    model_path: ${HOME}/models/m.gguf
    cwd: ${HOME}
"""
    config = parse_config(text, env=env)
    assert config.server.port == 9001  # a number field from a variable
    assert config.server.api_keys == ["k1", "k2", ""]
    spec = config.specs()["m"]
    assert spec.argv(5) == ["/opt/bin/srv", "--port", "5", "--home", "/home/me/x y", "--verbose"]
    assert spec.model_path == "/home/me/models/m.gguf"
    assert spec.cwd == "/home/me"


def test_env_values_with_dollars_stay_literal() -> None:
    env = {"SECRET": "pa$$w${PORT}rd$"}
    text = (
        "server:\n  api_keys: ['${SECRET}', 'a$$b']\nmodels:\n  m:\n"
        "    command: [srv, '${PORT}', '${SECRET}']\n    model_path: '${SECRET}'\n"
        "    env: {S: '${SECRET}'}\n"
    )
    config = parse_config(text, env=env)
    assert config.server.api_keys == ["pa$$w${PORT}rd$", "a$b"]
    spec = config.specs()["m"]
    assert spec.argv(1) == ["srv", "1", "pa$$w${PORT}rd$"]
    assert spec.model_path == "pa$$w${PORT}rd$"
    assert spec.environment(1) == {"S": "pa$$w${PORT}rd$"}


def test_the_process_environment_is_used_only_without_a_mapping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MB_TEST_HOST", "10.1.2.3")
    assert parse_config("server:\n  host: ${MB_TEST_HOST}\n").server.host == "10.1.2.3"
    assert one_issue("server:\n  host: ${MB_TEST_HOST}\n", env={"UNRELATED": "1"})[2].startswith(
        "environment variable ${MB_TEST_HOST} is not set"
    )


def test_yaml_anchors_and_merge_keys() -> None:
    text = """\
models:
  small: &base
    command: [srv, --port, "${PORT}", -m, "${MODEL_PATH}"]
    model_path: /m/small
    idle_timeout: 1m
    env: &env {THREADS: 4}
  large:
    <<: *base
    model_path: /m/large
    env: {<<: *env, BATCH: 8}
  both:
    <<: [{idle_timeout: 5, stop_timeout: 6}, *base]
"""
    specs = parse_config(text, env={}).specs()
    assert specs["large"].argv(3) == ["srv", "--port", "3", "-m", "/m/large"]
    assert specs["large"].idle_timeout == 60.0
    assert specs["large"].env == {"THREADS": "4", "BATCH": "8"}
    assert specs["both"].idle_timeout == 5.0  # the first mapping merged wins
    assert specs["both"].stop_timeout == 6.0
    assert specs["both"].model_path == "/m/small"


def test_errors_in_merged_keys_name_the_merging_model() -> None:
    text = """\
models:
  a: &base {command: [x, "${PORT}"]}
  b:
    <<: *base
    comand: y
"""
    assert one_issue(text) == ("models.b.comand", 5, "unknown key 'comand'")


def test_keys_are_read_as_written() -> None:
    config = parse_config(
        f"models:\n  1: {{command: {PORT_CMD}}}\n  7b: {{command: {PORT_CMD}}}\n", env={}
    )
    assert list(config.models) == ["1", "7b"]


def test_config_hash_follows_what_changes_the_upstream() -> None:
    def spec(extra: str) -> ModelSpec:
        return model(f'    command: [s, "${{PORT}}"]\n{extra}')

    base = spec("").config_hash()
    assert spec("").config_hash() == base  # stable
    for same in (
        "    idle_timeout: 9\n",
        "    start_timeout: 1\n",
        "    aliases: [x]\n",
        "    max_queue: 1\n",
        "    preload: true\n",
        "    priority: 3\n",
        "    pinned: true\n",
    ):
        assert spec(same).config_hash() == base, same
    changed = {
        spec(extra).config_hash()
        for extra in (
            "    env: {A: b}\n",
            "    model_path: /m\n",
            "    health_path: /ready\n",
            "    cwd: /tmp\n",
            "    port: 9\n",
            "    gpus: [0]\n",
        )
    }
    assert base not in changed
    assert len(changed) == 6
    assert model('    command: [s, "${PORT}", -v]\n').config_hash() != base
    assert model("    command: s ${PORT}\n").config_hash() == base  # same argv, same hash


# --- loading files ------------------------------------------------------------------------


def test_load_config_reads_the_given_path(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(f"models:\n  m: {{command: {PORT_CMD}}}\n")
    assert list(load_config(file).models) == ["m"]
    assert list(load_config(str(file)).models) == ["m"]


def test_load_config_uses_env_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELBERTH_CONFIG", raising=False)
    (tmp_path / "modelberth.yaml").write_text(f"models:\n  here: {{command: {PORT_CMD}}}\n")
    assert config_path() == Path("modelberth.yaml")
    assert list(load_config().models) == ["here"]
    other = tmp_path / "other.yaml"
    other.write_text(f"models:\n  there: {{command: {PORT_CMD}}}\n")
    monkeypatch.setenv("MODELBERTH_CONFIG", str(other))
    assert list(load_config().models) == ["there"]
    assert list(load_config(tmp_path / "modelberth.yaml").models) == ["here"]  # -c wins


def test_load_config_reports_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert caught.value.source == str(missing)
    ((issue),) = caught.value.issues
    assert issue.message == "cannot read: No such file or directory"
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a directory


def test_load_config_reports_bad_encoding_with_its_line(tmp_path: Path) -> None:
    file = tmp_path / "latin1.yaml"
    file.write_bytes("server:\n  host: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    ((issue),) = caught.value.issues
    assert issue.line == 2
    assert issue.message.startswith("not UTF-8")


def test_load_config_names_the_file_in_errors(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("server:\n  prot: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert f"{file}:line 2: server.prot: unknown key 'prot'" in str(caught.value)


# --- the JSON Schema ----------------------------------------------------------------------


def test_json_schema_accepts_what_the_loader_accepts_and_rejects_unknown_keys() -> None:
    schema = json_schema()
    assert jsonschema_rs.meta.is_valid(schema)
    validator = jsonschema_rs.validator_for(schema)
    good = yaml.safe_load(GOOD.replace("${MODELS}", "/srv"))
    parse_config(GOOD, env={"MODELS": "/srv"})
    assert validator.is_valid(good), list(validator.iter_errors(good))
    for bad in (
        {"bogus": 1},
        {"server": {"prot": 1}},
        {"models": {"m": {"comand": "x"}}},
        {"models": {"bad name": {"command": "x ${PORT}"}}},
        {"defaults": {"idle_timeout": "soon"}},
        {"defaults": {"idle_timeout": -1}},
        {"models": {"m": {"template": "nope"}}},
    ):
        assert not validator.is_valid(bad), bad


# The config shape DESIGN.md section 2 fixes as the contract, copied verbatim.
DESIGN_EXAMPLE = """\
server:
  host: 127.0.0.1          # default loopback
  port: 8080
  api_keys: []             # Bearer keys for /v1/*; empty = no auth
  admin_keys: []           # Bearer keys for /api/*; empty = same as api_keys
defaults:                  # apply to every model unless it overrides
  idle_timeout: 300        # seconds idle before stopping; 0 = never
  start_timeout: 120       # seconds to become healthy before start counts as failed
  stop_timeout: 10         # seconds between SIGTERM/stop and kill
  max_queue: 64            # requests waiting for one model before 429
resources:
  memory_budget_mb: null   # cap on RAM used by models; null = what the host has
  gpus: auto               # NVML discovery; or a list of {index, vram_budget_mb}
models:
  tiny:                    # the model id clients send in "model"
    runtime: process       # process | docker
    command: [llama-server, -m, /models/tiny.gguf, --port, "${PORT}"]
    health_path: /health
    aliases: [gpt-4o-mini]
    idle_timeout: 60
    memory_mb: 300         # estimate used for scheduling (see §5); optional
  qwen:
    runtime: docker
    template: llama-cpp    # built-in service type: fills image, command, health, port
    image: ghcr.io/ggml-org/llama.cpp:server-cuda
    model_path: /models/qwen2.5-7b-q4_k_m.gguf
    volumes: ["/models:/models:ro"]
    gpus: [0]              # or "all"; NVIDIA device requests
    vram_mb: 6000
    env: {LLAMA_ARG_CTX_SIZE: "8192"}
    pinned: false          # true = never evicted
    preload: false         # true = start at boot
"""


def test_design_example_is_valid() -> None:
    config = parse_config(DESIGN_EXAMPLE, env={})
    assert {"tiny", "qwen"} <= set(config.models)
    data = yaml.safe_load(DESIGN_EXAMPLE)
    assert jsonschema_rs.validator_for(json_schema()).is_valid(data)


# --- CLI ----------------------------------------------------------------------------------


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelberth", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def test_check_accepts_a_good_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    ok = run_cli("check", "-c", str(good), env={"MODELS": "/srv"})
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{good}: OK, 2 model(s): a, b"
    by_env = run_cli("check", env={"MODELS": "/srv", "MODELBERTH_CONFIG": str(good)})
    assert by_env.returncode == 0, by_env.stderr
    assert "OK" in by_env.stdout


def test_check_reports_every_error_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "server:\n  port: x\nmodels:\n  m:\n    comand: y\n"
        "  n:\n    command: [z, '${PORT}']\n    aliases: [m]\n"
        "  o:\n    template: vllm\n"
    )
    failed = run_cli("check", "-c", str(bad))
    assert failed.returncode == 2
    assert failed.stdout == ""
    assert failed.stderr.splitlines() == [
        f"{bad}: 4 error(s)",
        f"  {bad}:line 2: server.port: Input should be a valid integer, unable to parse string "
        "as an integer",
        f"  {bad}:line 5: models.m.comand: unknown key 'comand'",
        f"  {bad}:line 8: models.n.aliases.0: alias 'm' of 'n' is already used by 'm'",
        f"  {bad}:line 9: models.o: template 'vllm' needs `model_path`",
    ]


def test_check_reports_bad_yaml_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: [1,\n")
    failed = run_cli("check", "-c", str(bad))
    assert failed.returncode == 2
    assert f"{bad}:line 3: <root>: invalid YAML" in failed.stderr


def test_check_reports_a_missing_file(tmp_path: Path) -> None:
    missing = run_cli("check", "-c", str(tmp_path / "nope.yaml"))
    assert missing.returncode != 0
    assert (
        f"{tmp_path / 'nope.yaml'}:<root>: cannot read: No such file or directory" in missing.stderr
    )
    assert "Traceback" not in missing.stderr
    default = run_cli("check", cwd=tmp_path, env={"MODELBERTH_CONFIG": ""})
    assert default.returncode != 0
    assert "modelberth.yaml:<root>: cannot read" in default.stderr


def test_schema_command_prints_a_json_schema() -> None:
    result = run_cli("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema == json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert {"server", "defaults", "resources", "docker", "models"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
    assert jsonschema_rs.meta.is_valid(schema)
