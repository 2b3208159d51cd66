"""The config's field types: durations, commands, environment maps and model names, each
with the parser that turns what YAML gives into it and the JSON Schema that accepts the same;
and `parse_network`, shared by the `server.trusted_proxies` validator and the proxy."""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$")
DURATION_PATTERN = _DURATION.pattern
MODEL_NAME_PATTERN = _NAME.pattern


def _seconds(value: Any) -> Any:
    """Accept 30, 30.5, "30s", "5m", "1h", "250ms". A number is left to pydantic, which
    checks its bound (>= 0 or > 0); a string is one unsigned number with an optional unit,
    so a negative or compound duration is refused here already.

    >>> _seconds("250ms"), _seconds("5m"), _seconds(" 1.5 h "), _seconds("90")
    (0.25, 300.0, 5400.0, 90.0)
    >>> _seconds(30)
    30
    >>> _seconds("1h30m")
    Traceback (most recent call last):
      ...
    ValueError: expected seconds as a number or a duration like '30s', '5m', '1h'
    >>> _seconds("-5s")
    Traceback (most recent call last):
      ...
    ValueError: expected seconds as a number or a duration like '30s', '5m', '1h'
    """
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError("expected seconds as a number or a duration like '30s', '5m', '1h'")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


def _command(value: Any) -> Any:
    """A command as a shell would split it, or a list whose numbers become strings (YAML
    reads `8000` as an int; argv holds text). ${PORT} and the like are filled later.

    >>> _command("llama-server -m 'my model.gguf' --port ${PORT}")
    ['llama-server', '-m', 'my model.gguf', '--port', '${PORT}']
    >>> _command(["vllm", "serve", 8000, 0.9])
    ['vllm', 'serve', '8000', '0.9']
    """
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list):
        return [
            str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in value
        ]
    return value


def _env_values(value: Any) -> Any:
    """Environment values as strings; a YAML boolean as the lower-case word a program
    expects (`true`, not Python's `True`).

    >>> _env_values({"THREADS": 8, "DEBUG": True, "RATIO": 0.5, "NAME": "x"})
    {'THREADS': '8', 'DEBUG': 'true', 'RATIO': '0.5', 'NAME': 'x'}
    """
    if isinstance(value, Mapping):
        return {
            k: (str(v).lower() if isinstance(v, bool) else str(v))
            if isinstance(v, int | float | bool)
            else v
            for k, v in value.items()
        }
    return value


def _model_name(name: str) -> str:
    """A model name: letters, digits and ._:@+-, starting with a letter or a digit, so that
    Ollama-style names such as `qwen2.5:7b` fit and no space or slash does.

    >>> _model_name("qwen2.5:7b@q4+ctx")
    'qwen2.5:7b@q4+ctx'
    >>> _model_name("my model")
    Traceback (most recent call last):
      ...
    ValueError: model name 'my model' may hold only letters, digits and ._:@+-
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"model name '{name}' may hold only letters, digits and ._:@+-")
    return name


def _duration_schema(bound: str) -> WithJsonSchema:
    # The JSON Schema must accept what the validators accept: 30, 2.5, "250ms", "5m"...
    return WithJsonSchema(
        {"anyOf": [{"type": "number", bound: 0}, {"type": "string", "pattern": DURATION_PATTERN}]}
    )


Seconds = Annotated[float, BeforeValidator(_seconds), Field(ge=0), _duration_schema("minimum")]
PositiveSeconds = Annotated[
    float, BeforeValidator(_seconds), Field(gt=0), _duration_schema("exclusiveMinimum")
]
Command = Annotated[
    list[str],
    BeforeValidator(_command),
    WithJsonSchema(
        {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": ["string", "number"]}}]}
    ),
]
EnvMap = Annotated[
    dict[str, str],
    BeforeValidator(_env_values),
    WithJsonSchema(
        {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
    ),
]
ModelName = Annotated[str, AfterValidator(_model_name)]
TemplateName = Literal["llama-cpp", "vllm", "tgi", "sglang", "openai"]


def parse_network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One `server.trusted_proxies` entry: an address or a CIDR network.

    >>> parse_network("10.0.0.0/8"), parse_network(" ::1 ")
    (IPv4Network('10.0.0.0/8'), IPv6Network('::1/128'))
    >>> parse_network("localhost")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    ValueError: trusted_proxies: 'localhost' is not an IP address or CIDR network (such as ...
    """
    if not isinstance(entry, str):
        raise ValueError(f"trusted_proxies: {entry!r} is not a string")
    try:
        return ipaddress.ip_network(entry.strip())
    except ValueError as exc:
        raise ValueError(
            f"trusted_proxies: {entry!r} is not an IP address or CIDR network "
            f"(such as 10.0.0.1, 10.0.0.0/8, ::1 or fd00::/8): {exc}"
        ) from None
