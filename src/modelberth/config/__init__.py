"""The config: its schema (schema.py), what a model resolves to (spec.py), reading it from
YAML (loader.py) and the built-in service types (templates.py)."""

from modelberth.config.loader import (
    CONFIG_ENV,
    DEFAULT_PATH,
    ConfigError,
    ConfigIssue,
    config_path,
    json_schema,
    load_config,
    parse_config,
)
from modelberth.config.schema import Config, ModelConfig
from modelberth.config.sections import Defaults, DockerConfig, ResourcesConfig
from modelberth.config.server import ServerConfig
from modelberth.config.spec import DockerSpec, ModelSpec

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_PATH",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Defaults",
    "DockerConfig",
    "DockerSpec",
    "ModelConfig",
    "ModelSpec",
    "ResourcesConfig",
    "ServerConfig",
    "config_path",
    "json_schema",
    "load_config",
    "parse_config",
]
