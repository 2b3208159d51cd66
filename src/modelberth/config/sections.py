"""The config's small sections: `defaults` (what every model has unless it sets its own),
`resources` (budgets), `activity` (the recent requests kept), `docker` (the engine or
engines) and `swarm` (a Swarm manager), and
the strict base every config model shares (unknown keys are errors; a loaded config is
frozen)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelberth.config.types import PositiveSeconds, Seconds


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(Strict):
    idle_timeout: Seconds = Field(300, description="Seconds idle before stopping; 0 = never.")
    start_timeout: PositiveSeconds = Field(
        120, description="Hard cap on the seconds a start may take to become healthy."
    )
    stall_timeout: Seconds = Field(
        120,
        description="A start fails when nothing moves (no output line, no progress, no "
        "change in the health answer) for this many seconds; an upstream that keeps printing "
        "is never stalled; 0 = only start_timeout.",
    )
    stop_timeout: Seconds = Field(10, description="Seconds between SIGTERM and SIGKILL.")
    drain_timeout: Seconds = Field(
        30, description="On stop, seconds to let in-flight requests finish before terminating."
    )
    max_queue: int = Field(64, ge=0, description="Requests waiting for one model before 429.")
    first_byte_timeout: Seconds = Field(
        600,
        description="Seconds to wait for the head of an upstream's answer (a long prompt "
        "is processed before the first byte); 504 after it; 0 = no limit.",
    )
    stream_stall_timeout: Seconds = Field(
        120,
        description="Seconds an answer under way may send nothing before it is cut off "
        "(504, or an SSE error event); 0 = no limit.",
    )
    max_timeouts: int = Field(
        3,
        ge=1,
        description="Upstream timeouts in a row after which the model is marked "
        "failed and restarted (it is hung).",
    )
    loading_status: Literal["comment", "reasoning"] = Field(
        "comment",
        description="While a streamed chat waits for a cold model: `comment` "
        "sends SSE comment lines (`: loading NAME 3.0s`), `reasoning` sends the progress as "
        "`reasoning_content` deltas, which chat UIs show as thinking.",
    )


class GpuBudget(Strict):
    index: int = Field(ge=0, description="NVML device index.")
    vram_budget_mb: int = Field(gt=0, description="VRAM models may use on this GPU.")


class ResourcesConfig(Strict):
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
    placement: Literal["binpack", "spread"] = Field(
        "binpack",
        description="Where `gpus: auto` / `gpus: {count: N}` models go: `binpack` "
        "fills the GPU with the least room that fits (keeps big GPUs free for big models), "
        "`spread` the one with the most room.",
    )
    state_file: str | None = Field(
        None,
        description="Where the learned footprints (measured RAM/VRAM peaks and start "
        "times per model and config hash) are kept across restarts; default: "
        "footprints-<instance_id>.json in $MODELBERTH_STATE_DIR, else ~/.cache/modelberth.",
    )


class GpuCount(Strict):
    count: int = Field(ge=1, le=64, description="How many GPUs the scheduler picks.")


class ProbeConfig(Strict):
    """A request that proves the model still generates (health can answer while it is
    wedged)."""

    interval: PositiveSeconds = Field(
        60,
        description="Seconds between probes while the model is ready; skipped when a "
        "request was answered within the interval.",
    )
    timeout: PositiveSeconds = Field(30, description="A probe not answered in time failed.")
    failures: int = Field(3, ge=1, description="Failed probes in a row before a restart.")
    path: str = Field("/v1/completions", pattern=r"^/", description="POST path of the probe.")
    body: dict[str, object] = Field(
        default_factory=lambda: {"prompt": "ping", "max_tokens": 1},
        description="JSON body of the probe; `model` is set to the model's name if absent.",
    )


class ActivityConfig(Strict):
    size: int = Field(
        500,
        ge=1,
        le=100_000,
        description="Finished requests kept in memory for GET /api/requests and the dashboard.",
    )
    capture_bodies: bool = Field(
        False,
        description="Keep each request's and answer's body with its record (they are "
        "the users' data: off by default).",
    )
    capture_kb: int = Field(
        64,
        ge=1,
        le=10_240,
        description="Each captured body is cut at this size; at most size x 2 x capture_kb "
        "are held.",
    )


class DockerHost(Strict):
    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="The host's name: in logs, the API, metrics and "
        "constraints (`node.hostname==NAME`).",
    )
    url: str = Field(
        min_length=1,
        description="Its Docker engine: unix:///path, "
        "tcp://host:2376 (TLS with the `tls` settings), ssh://user@host.",
    )
    address: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Where upstreams started "
        "there are reached (and listen: ${HOST}); its LAN address.",
    )
    memory_mb: int | None = Field(
        None, gt=0, description="RAM models may use there; null: not budgeted."
    )
    gpus: list[GpuBudget] = Field(
        default_factory=list, description="Its GPUs and the VRAM models may use on each."
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Matched by constraints as node.labels.<key>."
    )
    tls: bool = Field(
        False,
        description="tcp:// only: verify the engine with TLS, from "
        "$DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem) as the docker CLI does.",
    )


class DockerConfig(Strict):
    url: str | None = Field(
        None, description="Docker engine address; default: $DOCKER_HOST or the local socket."
    )
    hosts: list[DockerHost] = Field(
        default_factory=list,
        description="Several Docker engines, for runtime: docker "
        "without Swarm: the scheduler places each start on one of them (with room, allowed "
        "by the model's constraints). Empty: the one engine at `url`.",
    )

    @field_validator("hosts")
    @classmethod
    def _distinct(cls, hosts: list[DockerHost]) -> list[DockerHost]:
        names = [host.name for host in hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"host names must be distinct: {names}")
        return hosts


class SwarmConfig(Strict):
    url: str | None = Field(
        None, description="A Swarm manager's engine address; default: docker.url."
    )
    refresh_seconds: PositiveSeconds = Field(
        5,
        description="How often the nodes' state and labels are read again (and before each start).",
    )
