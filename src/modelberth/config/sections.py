"""The config's small sections: `resources` (budgets), `activity` (the recent requests
kept) and `docker` (the engine), and the strict base every config model shares (unknown
keys are errors; a loaded config is frozen)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from modelberth.config.types import PositiveSeconds


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class ActivityConfig(Strict):
    size: int = Field(
        500, ge=1, le=100_000,
        description="Finished requests kept in memory for GET /api/requests and the dashboard.")
    capture_bodies: bool = Field(
        False, description="Keep each request's and answer's body with its record (they are "
        "the users' data: off by default).")
    capture_kb: int = Field(
        64, ge=1, le=10_240,
        description="Each captured body is cut at this size; at most size x 2 x capture_kb "
        "are held.")


class DockerConfig(Strict):
    url: str | None = Field(
        None, description="Docker engine address; default: $DOCKER_HOST or the local socket."
    )
