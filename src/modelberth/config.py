"""Config: Pydantic models, YAML loading with line numbers, ${ENV} expansion, templates."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from modelberth.forwarding import Forwarding
from modelberth.templates import TEMPLATES

DEFAULT_PATH = Path("modelberth.yaml")
CONFIG_ENV = "MODELBERTH_CONFIG"
# Placeholders filled per model at start time, never from the environment.
RESERVED_VARS = frozenset({"PORT", "HOST", "MODEL_PATH", "MODEL_NAME"})
_VAR = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$")
_VOLUME = re.compile(r"^[^:]+:/[^:]*(:(ro|rw|z|Z|ro,z|ro,Z))?$")
_DOCKER_ONLY = ("image", "entrypoint", "volumes", "shm_size", "network", "container_port",
                "pull")
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# Lists and maps whose scalars become strings: they keep the text written (`010`, `1.10`, `1:30`).
_TEXT_LISTS = ("command", "entrypoint", "env")
DURATION_PATTERN = _DURATION.pattern

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


def _seconds(value: Any) -> Any:
    """Accept 30, 30.5, "30s", "5m", "1h", "250ms"."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError("expected seconds as a number or a duration like '30s', '5m', '1h'")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


def _command(value: Any) -> Any:
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list):
        return [str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                for v in value]
    return value


def _env_values(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: (str(v).lower() if isinstance(v, bool) else str(v))
                if isinstance(v, int | float | bool) else v for k, v in value.items()}
    return value


def _model_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"model name '{name}' may hold only letters, digits and ._:@+-")
    return name


def _duration_schema(bound: str) -> WithJsonSchema:
    # The JSON Schema must accept what the validators accept: 30, 2.5, "250ms", "5m"...
    return WithJsonSchema({"anyOf": [{"type": "number", bound: 0},
                                     {"type": "string", "pattern": DURATION_PATTERN}]})


Seconds = Annotated[float, BeforeValidator(_seconds), Field(ge=0), _duration_schema("minimum")]
PositiveSeconds = Annotated[float, BeforeValidator(_seconds), Field(gt=0),
                            _duration_schema("exclusiveMinimum")]
Command = Annotated[list[str], BeforeValidator(_command), WithJsonSchema(
    {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": ["string", "number"]}}]})]
EnvMap = Annotated[dict[str, str], BeforeValidator(_env_values), WithJsonSchema(
    {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}})]
ModelName = Annotated[str, AfterValidator(_model_name)]
TemplateName = Literal["llama-cpp", "vllm", "tgi", "sglang", "openai"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = Field("127.0.0.1", description="Address to listen on (loopback by default).")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on; 0 picks a free one.")
    api_keys: list[str] = Field(default_factory=list, description="Bearer keys for /v1/*.")
    admin_keys: list[str] = Field(
        default_factory=list, description="Bearer keys for /api/*; empty = same as api_keys."
    )
    max_body_mb: float = Field(32, gt=0, description="Largest request body accepted (413 above).")
    stream_keepalive: Seconds = Field(
        0,
        description="While a model loads, send a waiting streaming request its SSE headers "
        "and a ': loading <model> 3.2s' comment every this many seconds; 0 = off.",
    )
    protect_health: bool = Field(
        False, description="Require a key (api or admin) for /health and /metrics too."
    )
    header_timeout: PositiveSeconds = Field(
        10, description="A request head not complete within this many seconds closes the "
        "connection (slowloris)."
    )
    body_timeout: PositiveSeconds = Field(
        30, description="A request body that sends nothing for this many seconds closes the "
        "connection."
    )
    keepalive_timeout: PositiveSeconds = Field(
        5, description="An idle keep-alive client connection is closed after this long."
    )
    max_connections: int | None = Field(
        None, gt=0, description="Open client connections before new requests get 503; "
        "default: the file descriptor limit less a reserve for upstreams and logs."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) of proxies in front of modelberth whose "
        "X-Forwarded-For / X-Forwarded-Proto / X-Forwarded-Host are believed; from anyone "
        "else they are replaced by what modelberth sees.",
    )
    instance_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        description="Names this modelberth's containers and processes, so that several "
        "instances share one Docker engine without touching each other's; default: derived "
        "from the host name and port.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        Forwarding(value)  # raises ValueError naming the bad entry
        return value

    @functools.cached_property
    def inference_keys(self) -> list[str]:
        """Keys accepted on /v1/*: the api keys and the admin keys (an operator's key may do
        what a user's may); empty when api_keys is, as then /v1/* is open."""
        return [*self.api_keys, *self.admin_keys] if self.api_keys else []


class Defaults(_Strict):
    idle_timeout: Seconds = Field(300, description="Seconds idle before stopping; 0 = never.")
    start_timeout: PositiveSeconds = Field(120, description="Seconds to become healthy.")
    stop_timeout: Seconds = Field(10, description="Seconds between SIGTERM and SIGKILL.")
    drain_timeout: Seconds = Field(
        30, description="On stop, seconds to let in-flight requests finish before terminating."
    )
    max_queue: int = Field(64, ge=0, description="Requests waiting for one model before 429.")
    first_byte_timeout: Seconds = Field(
        600, description="Seconds to wait for the head of an upstream's answer (a long prompt "
        "is processed before the first byte); 504 after it; 0 = no limit."
    )
    stream_stall_timeout: Seconds = Field(
        120, description="Seconds an answer under way may send nothing before it is cut off "
        "(504, or an SSE error event); 0 = no limit."
    )
    max_timeouts: int = Field(
        3, ge=1, description="Upstream timeouts in a row after which the model is marked "
        "failed and restarted (it is hung)."
    )


class GpuBudget(_Strict):
    index: int = Field(ge=0, description="NVML device index.")
    vram_budget_mb: int = Field(gt=0, description="VRAM models may use on this GPU.")


class ResourcesConfig(_Strict):
    memory_budget_mb: int | None = Field(
        None, gt=0, description="Cap on RAM used by models; null = the host's total RAM."
    )
    gpus: Literal["auto"] | list[GpuBudget] = Field(
        "auto",
        description="'auto': every GPU NVML finds, budget = its memory minus vram_margin_mb; "
        "or a list of {index, vram_budget_mb}.",
    )
    vram_margin_mb: int = Field(
        512, ge=0, description="With gpus: auto, VRAM left free on each GPU."
    )
    estimate_overhead_mb: int = Field(
        256, ge=0, description="Added to a GGUF estimate (compute buffers, runtime)."
    )
    sample_interval: PositiveSeconds = Field(
        2.0, description="How often RAM, VRAM and per-model usage are sampled."
    )


class DockerConfig(_Strict):
    url: str | None = Field(
        None, description="Docker engine address; default: $DOCKER_HOST or the local socket."
    )


class ModelConfig(_Strict):
    runtime: Literal["process", "docker"] = Field(
        "process", description="How the upstream runs: a local process or a Docker container."
    )
    template: TemplateName | None = Field(
        None, description="Built-in service type that fills command and health_path."
    )
    command: Command | None = Field(
        None,
        description="Argv (list, or string split like a shell would, never run by a shell). "
        "${PORT} is the port modelberth assigned; ${MODEL_PATH} is model_path.",
    )
    model_path: str | None = Field(None, description="Model file or id for templates.")
    port: int | None = Field(
        None, ge=1, le=65535, description="Fixed upstream port instead of a free one."
    )
    env: EnvMap = Field(default_factory=dict, description="Extra environment for the upstream.")
    cwd: str | None = Field(None, description="Working directory of the upstream process.")
    health_path: str | None = Field(None, description="GET path that answers 200 when ready.")
    aliases: list[str] = Field(default_factory=list, description="Other names clients may use.")
    idle_timeout: Seconds | None = Field(None, description="Overrides `defaults.idle_timeout`.")
    start_timeout: PositiveSeconds | None = Field(
        None, description="Overrides `defaults.start_timeout`."
    )
    stop_timeout: Seconds | None = Field(None, description="Overrides `defaults.stop_timeout`.")
    drain_timeout: Seconds | None = Field(
        None, description="Overrides `defaults.drain_timeout`."
    )
    max_queue: int | None = Field(None, ge=0, description="Overrides `defaults.max_queue`.")
    first_byte_timeout: Seconds | None = Field(
        None, description="Overrides `defaults.first_byte_timeout`."
    )
    stream_stall_timeout: Seconds | None = Field(
        None, description="Overrides `defaults.stream_stall_timeout`."
    )
    max_timeouts: int | None = Field(
        None, ge=1, description="Overrides `defaults.max_timeouts`."
    )
    preload: bool = Field(False, description="Start at boot instead of on first request.")
    pinned: bool = Field(False, description="Never evicted to make room for another model.")
    memory_mb: int | None = Field(
        None, gt=0, description="RAM the model needs, for scheduling (else measured/estimated)."
    )
    vram_mb: int | None = Field(
        None, gt=0, description="VRAM the model needs over all its `gpus`, for scheduling."
    )
    gpus: Literal["all"] | list[int] | None = Field(
        None,
        description="GPUs the model uses: 'all' or device indices. Docker: device requests, "
        "like --gpus; process: CUDA_VISIBLE_DEVICES. VRAM is budgeted on these.",
    )
    max_concurrency: int | None = Field(
        None, gt=0, description="Requests forwarded at once; more wait in the queue."
    )
    priority: int = Field(
        0, description="Higher starts first when starts wait for room, and is evicted last."
    )
    # runtime: docker
    image: str | None = Field(None, description="Container image (docker).")
    entrypoint: Command | None = Field(None, description="Override the image's entrypoint.")
    volumes: list[str] = Field(
        default_factory=list, description="Bind mounts 'host:container[:ro]' (docker)."
    )
    shm_size: str | None = Field(None, description="Shared memory size, e.g. '8g' (docker).")
    network: Literal["host", "bridge"] = Field(
        "host",
        description="host: the container shares the host network and listens on ${PORT}; "
        "bridge: container_port is published on 127.0.0.1:${PORT}.",
    )
    container_port: int | None = Field(
        None, ge=1, le=65535, description="Port inside the container (network: bridge)."
    )
    pull: Literal["never", "missing", "always"] = Field(
        "missing", description="When to pull the image."
    )

    @field_validator("health_path")
    @classmethod
    def _health_path_absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("volumes")
    @classmethod
    def _volume_shape(cls, volumes: list[str]) -> list[str]:
        for volume in volumes:
            if not _VOLUME.match(volume):
                raise ValueError(f"'{volume}' is not 'host:/container[:ro|rw]'")
        return volumes

    @model_validator(mode="after")
    def _has_command(self) -> ModelConfig:
        template = TEMPLATES[self.template] if self.template else None
        if self.runtime == "docker":
            return self._check_docker()
        misplaced = [key for key in _DOCKER_ONLY if key in self.model_fields_set]
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)}: only for runtime: docker")
        if self.command is None:
            if template is None or not template.command:
                raise ValueError("no command: give `command`, or a `template` that has one")
            if self.model_path is None:
                raise ValueError(f"template '{self.template}' needs `model_path`")
        argv = self.command or list(template.command if template else ())
        self._check_port(argv)
        return self

    def _check_docker(self) -> ModelConfig:
        template = TEMPLATES[self.template] if self.template else None
        if self.cwd is not None:
            raise ValueError("cwd: only for runtime: process")
        if self.image is None and (template is None or template.image is None):
            raise ValueError("runtime: docker needs `image` (or a `template` that has one)")
        if self.command is None and template is not None and template.docker_command \
                and self.model_path is None:
            raise ValueError(f"template '{self.template}' needs `model_path`")
        if self.network == "bridge":
            if self.container_port is None and (template is None or
                                                template.container_port is None):
                raise ValueError("network: bridge needs `container_port`")
            return self
        argv = self.command or list(template.docker_command if template else ())
        self._check_port(argv)
        return self

    def _check_port(self, argv: list[str]) -> None:
        uses_port = any("${PORT}" in part for part in [*argv, *self.env.values()])
        if not uses_port and self.port is None:
            raise ValueError(
                "the upstream cannot learn its port: put ${PORT} in `command` or `env`, "
                "or set a fixed `port`"
            )


class Config(_Strict):
    """The whole modelberth.yaml."""

    server: ServerConfig = Field(default_factory=ServerConfig,
                                 description="The HTTP endpoint modelberth serves.")
    defaults: Defaults = Field(default_factory=Defaults,
                               description="Settings every model has unless it sets its own.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig,
                                       description="RAM and GPU budgets for scheduling.")
    docker: DockerConfig = Field(default_factory=DockerConfig,
                                 description="The Docker engine for runtime: docker.")
    models: dict[ModelName, ModelConfig] = Field(
        default_factory=dict, description="The models, by the name clients send in `model`.",
        json_schema_extra={"propertyNames": {"pattern": _NAME.pattern}},
    )

    @field_validator("models", mode="wrap")
    @classmethod
    def _aliases(cls, value: Any, handler: ValidatorFunctionWrapHandler
                 ) -> dict[str, ModelConfig]:
        """No alias may repeat a model's name or alias; checked even when a model is invalid."""
        taken = _alias_errors(value) if isinstance(value, Mapping) else []
        try:
            models: dict[str, ModelConfig] = handler(value)
        except ValidationError as exc:
            if not taken:
                raise
            # Each error keeps its type, message and location, with the alias errors added.
            taken = [InitErrorDetails(type=PydanticCustomError(error["type"], error["msg"]),
                                      loc=error["loc"], input=error["input"])
                     for error in exc.errors(include_url=False)] + taken
        if taken:
            raise ValidationError.from_exception_data(cls.__name__, taken)
        return models

    def specs(self) -> dict[str, ModelSpec]:
        return {name: ModelSpec.build(name, m, self.defaults) for name, m in self.models.items()}


def _alias_errors(models: Mapping[Any, Any]) -> list[InitErrorDetails]:
    """An error at each alias that is a model's name or an earlier alias, at its own place."""
    seen: dict[str, str] = {name: name for name in models if isinstance(name, str)}
    errors: list[InitErrorDetails] = []
    for name, model in models.items():
        aliases = model.aliases if isinstance(model, ModelConfig) else \
            model.get("aliases") if isinstance(model, Mapping) else None
        if not isinstance(name, str) or not isinstance(aliases, list):
            continue
        for index, alias in enumerate(aliases):
            if not isinstance(alias, str):
                continue
            if alias in seen:
                errors.append(InitErrorDetails(
                    type=PydanticCustomError(
                        "alias_taken", "alias '{alias}' of '{name}' is already used by "
                        "'{other}'", {"alias": alias, "name": name, "other": seen[alias]}),
                    loc=(name, "aliases", index), input=alias))
            else:
                seen[alias] = name
    return errors


def _gpus(gpus: str | list[int] | None) -> str | tuple[int, ...] | None:
    return tuple(gpus) if isinstance(gpus, list) else gpus


@dataclass(frozen=True, slots=True)
class DockerSpec:
    image: str
    entrypoint: tuple[str, ...] | None
    volumes: tuple[str, ...]
    shm_size: str | None
    network: str
    container_port: int | None
    pull: str

    @classmethod
    def build(cls, model: ModelConfig) -> DockerSpec:
        template = TEMPLATES[model.template] if model.template else None
        image = model.image
        if image is None and template is not None:
            image = template.gpu_image if model.gpus and template.gpu_image else template.image
        assert image is not None  # checked by ModelConfig
        port = model.container_port or (template.container_port if template else None)
        return cls(
            image=image,
            entrypoint=tuple(model.entrypoint) if model.entrypoint is not None else None,
            volumes=tuple(model.volumes),
            shm_size=model.shm_size,
            network=model.network,
            container_port=port,
            pull=model.pull,
        )


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model's settings after templates and defaults are applied."""

    name: str
    runtime: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None
    health_path: str
    aliases: tuple[str, ...]
    fixed_port: int | None
    model_path: str | None
    idle_timeout: float
    start_timeout: float
    stop_timeout: float
    drain_timeout: float
    max_queue: int
    preload: bool
    docker: DockerSpec | None = None
    pinned: bool = False
    memory_mb: int | None = None
    vram_mb: int | None = None
    gpus: str | tuple[int, ...] | None = None
    max_concurrency: int | None = None
    priority: int = 0
    first_byte_timeout: float = 600.0
    stream_stall_timeout: float = 120.0
    max_timeouts: int = 3

    @classmethod
    def build(cls, name: str, model: ModelConfig, defaults: Defaults) -> ModelSpec:
        template = TEMPLATES[model.template] if model.template else None
        docker = DockerSpec.build(model) if model.runtime == "docker" else None
        default_command = (template.docker_command if docker else template.command) \
            if template else ()
        command = model.command or list(default_command)
        health = model.health_path or (template.health_path if template else "/health")

        def pick(value: float | None, default: float) -> float:
            return default if value is None else value

        return cls(
            name=name,
            runtime=model.runtime,
            command=tuple(command),
            env=dict(model.env),
            cwd=model.cwd,
            health_path=health,
            aliases=tuple(model.aliases),
            fixed_port=model.port,
            model_path=model.model_path,
            idle_timeout=pick(model.idle_timeout, defaults.idle_timeout),
            start_timeout=pick(model.start_timeout, defaults.start_timeout),
            stop_timeout=pick(model.stop_timeout, defaults.stop_timeout),
            drain_timeout=pick(model.drain_timeout, defaults.drain_timeout),
            max_queue=model.max_queue if model.max_queue is not None else defaults.max_queue,
            preload=model.preload,
            docker=docker,
            pinned=model.pinned,
            memory_mb=model.memory_mb,
            vram_mb=model.vram_mb,
            gpus=_gpus(model.gpus),
            max_concurrency=model.max_concurrency,
            priority=model.priority,
            first_byte_timeout=pick(model.first_byte_timeout, defaults.first_byte_timeout),
            stream_stall_timeout=pick(model.stream_stall_timeout,
                                      defaults.stream_stall_timeout),
            max_timeouts=model.max_timeouts if model.max_timeouts is not None
            else defaults.max_timeouts,
        )

    @property
    def listen_host(self) -> str:
        bridged = self.docker is not None and self.docker.network == "bridge"
        return "0.0.0.0" if bridged else "127.0.0.1"  # 0.0.0.0 only inside its own netns

    def fill(self, text: str, port: int) -> str:
        """Fill the per-start placeholders ${PORT}, ${HOST}, ${MODEL_PATH}, ${MODEL_NAME}."""
        values = {"PORT": str(port), "HOST": self.listen_host,
                  "MODEL_PATH": self.model_path or "", "MODEL_NAME": self.name}
        return _VAR.sub(lambda m: "$" if m.group(1) == "$" else values.get(m.group(2), m.group(0)),
                        text)

    def argv(self, port: int) -> list[str]:
        return [self.fill(part, port) for part in self.command]

    def environment(self, port: int) -> dict[str, str]:
        env = {key: self.fill(value, port) for key, value in self.env.items()}
        if isinstance(self.gpus, tuple) and self.docker is None:
            env.setdefault("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in self.gpus))
        return env

    def config_hash(self) -> str:
        blob = json.dumps(
            [self.runtime, self.command, dict(self.env), self.cwd, self.health_path,
             self.fixed_port, self.model_path, self.gpus,
             dataclasses.asdict(self.docker) if self.docker else None],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
                    None, None, "an anchor is used inside itself", node.start_mark)
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
        if isinstance(value, int | float) and len(path) == 4 and path[0] == "models" \
                and path[2] in _TEXT_LISTS:
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

    def _pairs(self, node: yaml.MappingNode, merging: set[int]
               ) -> list[tuple[yaml.Node, yaml.Node, bool]]:
        """(key, value, own) of a mapping: its own pairs, then those merged with `<<`."""
        pairs = [(k, v, True) for k, v in node.value if k.tag != _MERGE_TAG]
        merging = merging | {id(node)}
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) \
                else [value_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode) or id(source) in merging:
                    raise yaml.constructor.ConstructorError(
                        None, None, "`<<` merges a mapping or a list of mappings (not itself)",
                        key_node.start_mark)
                pairs += [(k, v, False) for k, v, _ in self._pairs(source, merging)]
        return pairs

    def _expand(self, text: str, path: Path_, line: int) -> str:
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
            self.issues.append(ConfigIssue(
                _dotted(path), line, f"environment variable ${{{name}}} is not set "
                f"(use ${{{name}:-default}} for a default)"))
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
        in_data = (isinstance(node, dict) and isinstance(part, str) and part in node) or \
            (isinstance(node, list) and type(part) is int and 0 <= part < len(node))
        if in_data:
            node = node[part]
        elif not (i == len(loc) - 1 and isinstance(node, dict) and isinstance(part, str)
                  and "[" not in part and not part.startswith("function-")):
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


def _pydantic_issues(error: ValidationError, data: Any, lines: Mapping[Path_, int]
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
        raise ConfigError(source, [ConfigIssue("", None, f"invalid YAML value: {exc}")]
                          ) from None
    except RecursionError:
        raise ConfigError(source, [ConfigIssue("", None, "invalid YAML: nested too deeply")]
                          ) from None
    finally:
        loader.dispose()


def parse_config(text: str, source: str = "<config>", env: Mapping[str, str] | None = None
                 ) -> Config:
    """Parse YAML text into a validated Config, or raise ConfigError listing every problem."""
    data, reader = _read_yaml(text, source, os.environ if env is None else env)
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigIssue("", 1, "the config must be a mapping of keys")])
    issues = list(reader.issues)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        # A value an unset ${VAR} left incomplete is already reported: don't report it twice.
        issues += [issue for issue in _pydantic_issues(exc, data, reader.lines)
                   if issue.path not in reader.unset]
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
        raise ConfigError(str(file), [ConfigIssue("", None, f"cannot read: {exc.strerror}")]
                          ) from None
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise ConfigError(str(file), [ConfigIssue("", line, f"not UTF-8: {exc.reason} at byte "
                                                  f"{exc.start}")]) from None
    return parse_config(text, str(file))


def json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "modelberth configuration"
    return schema
