"""Reading a config: YAML with the line of every key, ${ENV} expansion, and every problem
reported as a ConfigError naming its key path and line."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from modelberth.config.schema import Config

DEFAULT_PATH = Path("modelberth.yaml")
CONFIG_ENV = "MODELBERTH_CONFIG"
# Placeholders filled per model at start time, never from the environment.
RESERVED_VARS = frozenset({"PORT", "HOST", "MODEL_PATH", "MODEL_NAME"})
_VAR = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})")
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# Lists and maps whose scalars become strings: they keep the text written (`010`, `1.10`, `1:30`).
_TEXT_LISTS = ("command", "entrypoint", "env")

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '<root>'}: {self.message}"


class ConfigError(Exception):
    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.source}: {len(self.issues)} error(s)"]
        lines += [f"  {self.source}:{issue}" for issue in self.issues]
        return "\n".join(lines)


# --- loading -------------------------------------------------------------------------------


class _Reader:
    """Turns a YAML node tree into plain data, remembering each path's line and expanding env."""

    def __init__(self, loader: yaml.SafeLoader, env: Mapping[str, str]) -> None:
        self.loader = loader
        self.env = env
        self.lines: dict[Path_, int] = {}
        self.issues: list[ConfigIssue] = []
        self.unset: set[str] = set()  # paths of values an unset ${VAR} left incomplete
        self._open: set[int] = set()  # ids of the collections being read: catches `&a [*a]`

    def read(self, node: yaml.Node, path: Path_) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.CollectionNode):
            if id(node) in self._open:
                raise yaml.constructor.ConstructorError(
                    None, None, "an anchor is used inside itself", node.start_mark
                )
            self._open.add(id(node))
            try:
                if isinstance(node, yaml.MappingNode):
                    return self._mapping(node, path)
                return [self.read(item, (*path, i)) for i, item in enumerate(node.value)]
            finally:
                self._open.discard(id(node))
        value = self.loader.construct_object(node, deep=True)
        if isinstance(value, str) and node.tag == _STR_TAG:
            return self._expand(value, path, node.start_mark.line + 1)
        if (
            isinstance(value, int | float)
            and len(path) == 4
            and path[0] == "models"
            and path[2] in _TEXT_LISTS
        ):
            return node.value  # as written: YAML 1.1 would turn `010` into 8, `1:30` into 90
        return value

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key_node, value_node, own in self._pairs(node, set()):
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.issues.append(ConfigIssue(_dotted(path), line, "keys must be strings"))
                continue
            key = key_node.value  # as written: `on:` is the key "on", not True
            if key in out:
                if own:  # a key merged in with `<<` is overridden by the mapping's own
                    self.issues.append(ConfigIssue(_dotted((*path, key)), line, "duplicate key"))
                continue
            self.lines[(*path, key)] = line
            out[key] = self.read(value_node, (*path, key))
        return out

    def _pairs(
        self, node: yaml.MappingNode, merging: set[int]
    ) -> list[tuple[yaml.Node, yaml.Node, bool]]:
        """(key, value, own) of a mapping: its own pairs, then those merged with `<<`."""
        pairs = [(k, v, True) for k, v in node.value if k.tag != _MERGE_TAG]
        merging = merging | {id(node)}
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                continue
            sources = (
                value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            )
            for source in sources:
                if not isinstance(source, yaml.MappingNode) or id(source) in merging:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        "`<<` merges a mapping or a list of mappings (not itself)",
                        key_node.start_mark,
                    )
                pairs += [(k, v, False) for k, v, _ in self._pairs(source, merging)]
        return pairs

    def _expand(self, text: str, path: Path_, line: int) -> str:
        """Fill ${VAR} and ${VAR:-default} from the environment; an unset variable without
        a default is an issue reported with its key and line, not an empty value taken
        silently. `$$` is a literal `$`. The per-start placeholders (${PORT}...) are left for
        ModelSpec.fill; in a model's command and env, which it fills later, `$$` (a
        variable's `$` included) stays escaped, so that it does not read a `$` in a value
        as a placeholder of its own.

        >>> reader = _Reader(yaml.SafeLoader(""), {"USER": "ann", "PRICE": "$5"})
        >>> reader._expand("${USER}@${DOMAIN:-example.org}", ("server", "host"), 3)
        'ann@example.org'
        >>> reader._expand("$${USER} costs ${PRICE}", ("server", "host"), 3)
        '${USER} costs $5'
        >>> reader._expand("srv --port ${PORT} --price ${PRICE}", ("models", "m", "command"), 7)
        'srv --port ${PORT} --price $$5'
        >>> reader._expand("${TOKEN}", ("server", "host"), 4)
        ''
        >>> reader.issues[0].line, reader.issues[0].message
        (4, 'environment variable ${TOKEN} is not set (use ${TOKEN:-default} for a default)')
        >>> reader.unset
        {'server.host'}
        """

        def repl(match: re.Match[str]) -> str:
            if match.group(1) == "$":
                return "$$"  # kept for ModelSpec.fill, which turns $$ into $
            name, default = match.group(2), match.group(3)
            if name in RESERVED_VARS:
                return match.group(0)
            if name in self.env:
                return self.env[name].replace("$", "$$")
            if default is not None:
                return default
            self.unset.add(_dotted(path))
            self.issues.append(
                ConfigIssue(
                    _dotted(path),
                    line,
                    f"environment variable ${{{name}}} is not set "
                    f"(use ${{{name}:-default}} for a default)",
                )
            )
            return ""

        expanded = _VAR.sub(repl, text)
        # Outside commands and env there is no later fill: resolve the $$ escape now.
        if path[:1] != ("models",) or (len(path) > 2 and path[2] not in ("command", "env")):
            expanded = expanded.replace("$$", "$")
        return expanded


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path)


def _key_path(loc: tuple[Any, ...], data: Any) -> tuple[Path_, int | None]:
    """The keys of a Pydantic error location that are places in the file.

    Drops what Pydantic adds: union members (`list[int]`, `literal['all']`), `[key]` for a
    bad mapping key, validator names. The last part may be a key missing from a mapping.
    Also returns how many keys precede the first part dropped (a union's place), if any.
    """
    path: list[str | int] = []
    dropped_at: int | None = None
    node = data
    for i, part in enumerate(loc):
        in_data = (isinstance(node, dict) and isinstance(part, str) and part in node) or (
            isinstance(node, list) and type(part) is int and 0 <= part < len(node)
        )
        if in_data:
            node = node[part]
        elif not (
            i == len(loc) - 1
            and isinstance(node, dict)
            and isinstance(part, str)
            and "[" not in part
            and not part.startswith("function-")
        ):
            dropped_at = len(path) if dropped_at is None else dropped_at
            continue
        path.append(part)
    return tuple(path), dropped_at


def _line_for(path: Path_, lines: Mapping[Path_, int]) -> int | None:
    """The line of the longest prefix of the path that exists in the YAML."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _pydantic_issues(
    error: ValidationError, data: Any, lines: Mapping[Path_, int]
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    items = [(item, *_key_path(item["loc"], data)) for item in error.errors(include_url=False)]
    # A value that fails every member of a union gets an error from each. When it has the
    # shape of one member (a list for `'auto' | list`), only that member's errors count.
    inner = {path[:at] for _, path, at in items if at is not None and len(path) > at}
    for item, path, at in items:
        if at is not None and len(path) == at and path in inner:
            continue
        line = _line_for(path, lines)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden" and path:
            message = f"unknown key '{path[-1]}'"
        elif item["type"] == "literal_error":
            message = f"{message} (got {item.get('input')!r})"
        issues.append(ConfigIssue(_dotted(path), line, message))
    return issues


def _yaml_issue(exc: yaml.YAMLError, text: str) -> ConfigIssue:
    line = None
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        line = exc.problem_mark.line + 1
    elif isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
    return ConfigIssue("", line, f"invalid YAML: {problem}")


def _read_yaml(text: str, source: str, env: Mapping[str, str]) -> tuple[Any, _Reader]:
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_yaml_issue(exc, text)]) from None
    try:
        root = loader.get_single_node()
        reader = _Reader(loader, env)
        return ({} if root is None else reader.read(root, ())), reader
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_yaml_issue(exc, text)]) from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. an impossible !!timestamp
        raise ConfigError(source, [ConfigIssue("", None, f"invalid YAML value: {exc}")]) from None
    except RecursionError:
        raise ConfigError(
            source, [ConfigIssue("", None, "invalid YAML: nested too deeply")]
        ) from None
    finally:
        loader.dispose()


def parse_config(
    text: str, source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Parse YAML text into a validated Config, or raise ConfigError listing every problem.
    `env` is what ${VAR} is filled from (default: os.environ).

    >>> parse_config("server: {host: '${IP:-127.0.0.1}'}", env={}).server.host
    '127.0.0.1'
    >>> parse_config("server: {host: '${IP}'}", env={})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    modelberth.config.loader.ConfigError: <config>: 1 error(s)
      <config>:line 1: server.host: environment variable ${IP} is not set (use ${IP:-default} ...
    """
    data, reader = _read_yaml(text, source, os.environ if env is None else env)
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigIssue("", 1, "the config must be a mapping of keys")])
    issues = list(reader.issues)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        # A value an unset ${VAR} left incomplete is already reported: don't report it twice.
        issues += [
            issue
            for issue in _pydantic_issues(exc, data, reader.lines)
            if issue.path not in reader.unset
        ]
    if issues:
        issues.sort(key=lambda issue: issue.line or 0)
        raise ConfigError(source, issues)
    return config


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_PATH)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    file = config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            str(file), [ConfigIssue("", None, f"cannot read: {exc.strerror}")]
        ) from None
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            str(file), [ConfigIssue("", line, f"not UTF-8: {exc.reason} at byte {exc.start}")]
        ) from None
    return parse_config(text, str(file))


def json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "modelberth configuration"
    return schema
