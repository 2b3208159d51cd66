"""What a model's settings resolve to once templates and defaults are applied: the
ModelSpec every runtime and the lifecycle work from."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelberth.config.templates import TEMPLATES

if TYPE_CHECKING:
    from modelberth.config.schema import Defaults, ModelConfig

_VAR = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})")


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
    loading_status: str = "comment"  # or "reasoning": how a waiting stream sees the load
    anthropic: str = "translate"  # how /v1/messages reaches it: "native" or "translate"
    use_upstream_model_name: bool = False

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
            use_upstream_model_name=model.use_upstream_model_name,
            anthropic=model.anthropic or (
                "native" if template and template.speaks_anthropic else "translate"),
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
            loading_status=model.loading_status or defaults.loading_status,
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
