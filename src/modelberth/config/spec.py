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

from modelberth.config.remote import RemoteSpec
from modelberth.config.sections import GpuCount, ProbeConfig
from modelberth.config.templates import TEMPLATES

if TYPE_CHECKING:
    from modelberth.config.schema import ModelConfig
    from modelberth.config.sections import Defaults

_VAR = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})")


def _gpus(gpus: str | list[int] | GpuCount | None) -> tuple[str | tuple[int, ...] | None, int]:
    """(fixed GPUs: "all", indexes or None; how many the scheduler picks, 0 if it does not)."""
    if isinstance(gpus, list):
        return tuple(gpus), 0
    if isinstance(gpus, GpuCount):
        return None, gpus.count
    if gpus == "auto":
        return None, 1
    return gpus, 0


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
    gpus: str | tuple[int, ...] | None = None  # fixed by the config: "all" or indexes
    gpu_count: int = 0  # GPUs the scheduler picks at each start (gpus: auto / {count: N})
    placed: tuple[int, ...] | None = None  # the GPUs given for this start (see placed_on)
    node: str | None = None  # the node given for this start, on a multi-node runtime
    address: str | None = None  # that node's address: where the upstream listens
    constraints: tuple[str, ...] = ()  # the nodes it may run on (Swarm's expressions)
    multi_gpu_args: tuple[str, ...] = ()  # appended to argv when placed on 2+ GPUs
    sleep_level: int | None = None  # vLLM sleep mode instead of stopping
    stall_timeout: float = 120.0
    probe: ProbeConfig | None = None
    max_concurrency: int | None = None
    priority: int = 0
    first_byte_timeout: float = 600.0
    stream_stall_timeout: float = 120.0
    max_timeouts: int = 3
    loading_status: str = "comment"  # or "reasoning": how a waiting stream sees the load
    anthropic: str = "translate"  # how /v1/messages reaches it: "native" or "translate"
    use_upstream_model_name: bool = False
    remote: RemoteSpec | None = None  # runtime: remote: where its requests go
    # The models tried, in this order, when this one fails before the answer began
    # (references.py); names, looked up when needed.
    fallbacks: tuple[str, ...] = ()

    @classmethod
    def build(
        cls, name: str, model: ModelConfig, defaults: Defaults, fallbacks: tuple[str, ...] = ()
    ) -> ModelSpec:
        template = TEMPLATES[model.template] if model.template else None
        remote = (
            RemoteSpec.build(name, model.base_url, model.api_key, model.upstream_model)
            if model.runtime == "remote" and model.base_url is not None
            else None
        )
        docker = DockerSpec.build(model) if model.runtime in ("docker", "swarm") else None
        default_command = (
            (template.docker_command if docker else template.command) if template else ()
        )
        command = model.command or list(default_command)
        env = dict(model.env)
        if model.command is None and template is not None and model.sleep is not None:
            command += template.sleep_args
            env = {**dict(template.sleep_env), **env}
        gpus, gpu_count = _gpus(model.gpus)
        health = model.health_path or (template.health_path if template else "/health")

        def pick(value: float | None, default: float) -> float:
            return default if value is None else value

        return cls(
            name=name,
            runtime=model.runtime,
            command=tuple(command),
            env=env,
            cwd=model.cwd,
            health_path=health,
            aliases=tuple(model.aliases),
            fixed_port=model.port,
            model_path=model.model_path,
            # A remote endpoint is never stopped: the idle timer never arms.
            idle_timeout=0.0 if remote else pick(model.idle_timeout, defaults.idle_timeout),
            start_timeout=pick(model.start_timeout, defaults.start_timeout),
            stop_timeout=pick(model.stop_timeout, defaults.stop_timeout),
            drain_timeout=pick(model.drain_timeout, defaults.drain_timeout),
            max_queue=model.max_queue if model.max_queue is not None else defaults.max_queue,
            preload=model.preload,
            docker=docker,
            pinned=model.pinned,
            use_upstream_model_name=model.use_upstream_model_name,
            anthropic=model.anthropic
            or ("native" if template and template.speaks_anthropic else "translate"),
            memory_mb=model.memory_mb,
            vram_mb=model.vram_mb,
            gpus=gpus,
            gpu_count=gpu_count,
            multi_gpu_args=template.multi_gpu if template and model.command is None else (),
            sleep_level=model.sleep,
            stall_timeout=pick(model.stall_timeout, defaults.stall_timeout),
            probe=model.probe,
            max_concurrency=model.max_concurrency,
            priority=model.priority,
            first_byte_timeout=pick(model.first_byte_timeout, defaults.first_byte_timeout),
            stream_stall_timeout=pick(model.stream_stall_timeout, defaults.stream_stall_timeout),
            max_timeouts=model.max_timeouts
            if model.max_timeouts is not None
            else defaults.max_timeouts,
            loading_status=model.loading_status or defaults.loading_status,
            remote=remote,
            fallbacks=fallbacks,
            constraints=tuple(model.constraints),
        )

    @property
    def uses_gpu(self) -> bool:
        return bool(self.gpus) or self.gpu_count > 0

    @property
    def devices(self) -> tuple[int, ...] | None:
        """The GPU indexes this start runs on: the placement, else the fixed list; None for
        no GPU or `all`."""
        if self.placed is not None:
            return self.placed
        return self.gpus if isinstance(self.gpus, tuple) else None

    def placed_on(
        self, gpus: tuple[int, ...] | None, node: str | None = None, address: str | None = None
    ) -> ModelSpec:
        """This spec for one start on `gpus` of `node` (None: this machine), reached at
        `address` (same config hash: the placement is not config)."""
        return dataclasses.replace(self, placed=gpus, node=node, address=address)

    @property
    def listen_host(self) -> str:
        bridged = self.docker is not None and self.docker.network == "bridge"
        if bridged:
            return "0.0.0.0"  # only inside its own network namespace
        # On a node's host network, its own address: reachable from modelberth, and no
        # wider than that.
        return self.address or "127.0.0.1"

    def fill(self, text: str, port: int) -> str:
        """Fill the per-start placeholders ${PORT}, ${HOST}, ${MODEL_PATH}, ${MODEL_NAME}."""
        devices = self.devices or ()
        values = {
            "PORT": str(port),
            "HOST": self.listen_host,
            "MODEL_PATH": self.model_path or "",
            "MODEL_NAME": self.name,
            "GPUS": ",".join(map(str, devices)),
            "GPU_COUNT": str(len(devices)),
            "TENSOR_SPLIT": ",".join("1" for _ in devices),
        }
        return _VAR.sub(
            lambda m: "$" if m.group(1) == "$" else values.get(m.group(2), m.group(0)), text
        )

    def argv(self, port: int) -> list[str]:
        command = self.command
        if self.devices is not None and len(self.devices) > 1:
            command += self.multi_gpu_args
        return [self.fill(part, port) for part in command]

    def environment(self, port: int) -> dict[str, str]:
        env = {key: self.fill(value, port) for key, value in self.env.items()}
        devices = self.devices
        if devices is not None and self.docker is None:
            # NVML's indexes are in PCI bus order; CUDA's default order is fastest first.
            # The same order makes CUDA_VISIBLE_DEVICES name the GPUs the scheduler chose.
            env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
            env.setdefault("CUDA_VISIBLE_DEVICES", ",".join(map(str, devices)))
        return env

    def config_hash(self) -> str:
        blob = json.dumps(
            [
                self.runtime,
                self.command,
                dict(self.env),
                self.cwd,
                self.health_path,
                self.fixed_port,
                self.model_path,
                self.gpus,
                dataclasses.asdict(self.docker) if self.docker else None,
                # Absent: earlier hashes hold.
                *([self.gpu_count] if self.gpu_count else []),
                *([self.remote.base_url] if self.remote else []),
                *([list(self.constraints)] if self.constraints else []),
            ],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def runs_like(self, other: ModelSpec) -> bool:
        """Whether `other` can be taken in place, without a restart: it runs the same way
        (same config hash), or both are remote (nothing runs here: a new base_url or key
        holds from the next request on)."""
        return self.config_hash() == other.config_hash() or (
            self.remote is not None and other.remote is not None
        )
