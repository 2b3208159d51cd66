"""The config's schema: a model's settings and the whole file, as Pydantic models with
their validators. The server's section is in server.py, the other sections in sections.py,
the field types (durations, commands...) in types.py; what a model resolves to at start is
in spec.py; reading YAML with line numbers and ${ENV} expansion is in loader.py."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from modelberth.config.constraints import parse as parse_constraint
from modelberth.config.references import alias_errors, fallback_errors, fallback_order
from modelberth.config.remote import check_api_key, check_base_url
from modelberth.config.sections import (
    ActivityConfig,
    Defaults,
    DockerConfig,
    GpuCount,
    ProbeConfig,
    ResourcesConfig,
    Strict,
    SwarmConfig,
)
from modelberth.config.server import ServerConfig
from modelberth.config.spec import ModelSpec
from modelberth.config.templates import TEMPLATES
from modelberth.config.types import (
    MODEL_NAME_PATTERN,
    Command,
    EnvMap,
    ModelName,
    PositiveSeconds,
    Seconds,
    TemplateName,
)

_VOLUME = re.compile(r"^[^:]+:/[^:]*(:(ro|rw|z|Z|ro,z|ro,Z))?$")
_DOCKER_ONLY = (
    "image",
    "entrypoint",
    "volumes",
    "shm_size",
    "network",
    "container_port",
    "pull",
    "constraints",
)
_REMOTE_ONLY = ("base_url", "api_key", "upstream_model")
# What a remote endpoint has no use for: it runs nowhere here, so nothing starts, stops,
# sleeps, is probed, placed or budgeted.
_NOT_REMOTE = (
    "template",
    "command",
    "model_path",
    "port",
    "env",
    "cwd",
    "health_path",
    "idle_timeout",
    "start_timeout",
    "stall_timeout",
    "stop_timeout",
    "loading_status",
    "max_timeouts",
    "preload",
    "pinned",
    "memory_mb",
    "vram_mb",
    "gpus",
    "sleep",
    "probe",
    "priority",
    *_DOCKER_ONLY,
)


class ModelConfig(Strict):
    runtime: Literal["process", "docker", "swarm", "remote"] = Field(
        "process",
        description="How the upstream runs: a local process, a Docker container "
        "(on one engine, or on one of docker.hosts), a Docker Swarm service on a node the "
        "scheduler picks, or `remote`: an endpoint that runs elsewhere (another modelberth, "
        "a vLLM cluster, a hosted API), always ready, never started, stopped or budgeted by "
        "modelberth.",
    )
    constraints: list[str] = Field(
        default_factory=list,
        description="swarm, or docker with docker.hosts: the nodes it "
        "may run on, as Swarm placement constraints (`node.labels.zone==a`, "
        "`node.hostname!=gpu-3`, `node.role==worker`); all must hold.",
    )
    base_url: str | None = Field(
        None,
        description="runtime: remote: the endpoint's base URL as the OpenAI SDKs take "
        "it (`http://host:8000/v1`, `https://api.example.com/v1`): modelberth's path after "
        "/v1 is appended to it (POST /v1/chat/completions goes to "
        "{base_url}/chat/completions); a base URL without a path gets the path as "
        "modelberth received it. http or https (the system's CA certificates, or "
        "$SSL_CERT_FILE).",
    )
    api_key: str | None = Field(
        None,
        description="runtime: remote: sent as `Authorization: Bearer KEY` (the client's "
        "key is never forwarded); write `${ENV_VAR}` rather than the key itself. Hidden in "
        "GET /api/config.",
    )
    upstream_model: str | None = Field(
        None,
        min_length=1,
        description="runtime: remote: the `model` sent to the remote, if "
        "it serves the model under another name; default: this model's name (an alias the "
        "client used is never sent on). Answers still carry the name the client sent.",
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Models (or aliases) tried in order when this one "
        "fails before any byte of the answer reached the client: a connection error, a "
        "timeout before the answer, a 5xx answer, a failed start. Each gets the request "
        "again, as the client sent it; a fallback's own fallbacks are tried after it, no "
        "model twice; loops are refused. Never after the answer has begun.",
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
    stall_timeout: Seconds | None = Field(None, description="Overrides `defaults.stall_timeout`.")
    stop_timeout: Seconds | None = Field(None, description="Overrides `defaults.stop_timeout`.")
    drain_timeout: Seconds | None = Field(None, description="Overrides `defaults.drain_timeout`.")
    max_queue: int | None = Field(None, ge=0, description="Overrides `defaults.max_queue`.")
    first_byte_timeout: Seconds | None = Field(
        None, description="Overrides `defaults.first_byte_timeout`."
    )
    stream_stall_timeout: Seconds | None = Field(
        None, description="Overrides `defaults.stream_stall_timeout`."
    )
    loading_status: Literal["comment", "reasoning"] | None = Field(
        None, description="Overrides `defaults.loading_status`."
    )
    max_timeouts: int | None = Field(None, ge=1, description="Overrides `defaults.max_timeouts`.")
    preload: bool = Field(False, description="Start at boot instead of on first request.")
    pinned: bool = Field(False, description="Never evicted to make room for another model.")
    use_upstream_model_name: bool = Field(
        False,
        description="Answers carry the upstream's `model` instead of the name the "
        "client sent (an alias stays the alias by default).",
    )
    anthropic: Literal["native", "translate"] | None = Field(
        None,
        description="How POST /v1/messages reaches the model: `native` passes it "
        "through (the upstream speaks Anthropic's Messages API, as llama-server does), "
        "`translate` turns it into chat completions and the answer back; default: the "
        "template's (native for llama-cpp), else translate.",
    )
    memory_mb: int | None = Field(
        None, gt=0, description="RAM the model needs, for scheduling (else measured/estimated)."
    )
    vram_mb: int | None = Field(
        None, gt=0, description="VRAM the model needs over all its `gpus`, for scheduling."
    )
    gpus: Literal["all", "auto"] | list[int] | GpuCount | None = Field(
        None,
        description="GPUs the model uses: `auto` (the scheduler picks one with room at each "
        "start), `{count: N}` (it picks N), `all`, or device indices. Docker: device "
        "requests, like --gpus; process: CUDA_VISIBLE_DEVICES. VRAM is budgeted on these.",
    )
    sleep: Literal[1, 2] | None = Field(
        None,
        description="vLLM sleep mode: when idle or evicted, put the model to sleep "
        "(`POST /sleep?level=N`) instead of stopping it, and wake it for the next request. "
        "Level 1 keeps the weights in host RAM (counted against the RAM budget), level 2 "
        "drops them. The server must run with --enable-sleep-mode and "
        "VLLM_SERVER_DEV_MODE=1 (the vllm template adds both).",
    )
    probe: ProbeConfig | None = Field(
        None,
        description="Send a small generation now and then; restart the model after "
        "`failures` failed probes in a row (health can answer while it no longer "
        "generates).",
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

    @field_validator("gpus")
    @classmethod
    def _gpu_indices(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty list of GPUs: leave `gpus` out for none")
            if any(i < 0 for i in value) or len(set(value)) != len(value):
                raise ValueError("GPU indices must be distinct and not negative")
        return value

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, value: list[str]) -> list[str]:
        for expression in value:
            parse_constraint(expression)  # a ValueError says what is wrong
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return None if value is None else check_base_url(value)

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: str | None) -> str | None:
        return None if value is None else check_api_key(value)

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
        if self.runtime == "remote":
            return self._check_remote()
        misplaced = [key for key in _REMOTE_ONLY if key in self.model_fields_set]
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)}: only for runtime: remote")
        if self.runtime in ("docker", "swarm"):
            return self._check_docker()
        misplaced = [key for key in _DOCKER_ONLY if key in self.model_fields_set]
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)}: only for runtime: docker or swarm")
        if self.command is None:
            if template is None or not template.command:
                raise ValueError("no command: give `command`, or a `template` that has one")
            if self.model_path is None:
                raise ValueError(f"template '{self.template}' needs `model_path`")
        argv = self.command or list(template.command if template else ())
        self._check_port(argv)
        return self

    def _check_remote(self) -> ModelConfig:
        misplaced = [key for key in _NOT_REMOTE if key in self.model_fields_set]
        if misplaced:
            raise ValueError(
                f"{', '.join(misplaced)}: not for runtime: remote (it runs "
                "elsewhere: nothing to start, stop or budget)"
            )
        if self.base_url is None:
            raise ValueError("runtime: remote needs `base_url` (e.g. http://host:8000/v1)")
        return self

    def _check_docker(self) -> ModelConfig:
        template = TEMPLATES[self.template] if self.template else None
        if self.cwd is not None:
            raise ValueError("cwd: only for runtime: process")
        if self.image is None and (template is None or template.image is None):
            raise ValueError(
                f"runtime: {self.runtime} needs `image` (or a `template` that has one)"
            )
        if (
            self.command is None
            and template is not None
            and template.docker_command
            and self.model_path is None
        ):
            raise ValueError(f"template '{self.template}' needs `model_path`")
        if self.network == "bridge":
            if self.container_port is None and (
                template is None or template.container_port is None
            ):
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


class Config(Strict):
    """The whole modelberth.yaml."""

    server: ServerConfig = Field(
        default_factory=ServerConfig, description="The HTTP endpoint modelberth serves."
    )
    defaults: Defaults = Field(
        default_factory=Defaults, description="Settings every model has unless it sets its own."
    )
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig, description="RAM and GPU budgets for scheduling."
    )
    docker: DockerConfig = Field(
        default_factory=DockerConfig, description="The Docker engine(s) for runtime: docker."
    )
    swarm: SwarmConfig = Field(
        default_factory=SwarmConfig, description="The Swarm manager for runtime: swarm."
    )
    activity: ActivityConfig = Field(
        default_factory=ActivityConfig,
        description="The recent requests the API and the dashboard show.",
    )
    models: dict[ModelName, ModelConfig] = Field(
        default_factory=dict,
        description="The models, by the name clients send in `model`.",
        json_schema_extra={"propertyNames": {"pattern": MODEL_NAME_PATTERN}},
    )

    @field_validator("models", mode="wrap")
    @classmethod
    def _references(
        cls, value: Any, handler: ValidatorFunctionWrapHandler
    ) -> dict[str, ModelConfig]:
        """No alias may repeat a model's name or alias, every fallback must name a model and
        none may loop (references.py); checked even when a model is invalid."""
        taken = (
            [*alias_errors(value), *fallback_errors(value)] if isinstance(value, Mapping) else []
        )
        try:
            models: dict[str, ModelConfig] = handler(value)
        except ValidationError as exc:
            if not taken:
                raise
            # Each error keeps its type, message and location, with these errors added.
            taken = [
                InitErrorDetails(
                    type=PydanticCustomError(error["type"], error["msg"]),
                    loc=error["loc"],
                    input=error["input"],
                )
                for error in exc.errors(include_url=False)
            ] + taken
        if taken:
            raise ValidationError.from_exception_data(cls.__name__, taken)
        return models

    def specs(self) -> dict[str, ModelSpec]:
        fallbacks = fallback_order(self.models)
        return {
            name: ModelSpec.build(name, m, self.defaults, fallbacks[name])
            for name, m in self.models.items()
        }
