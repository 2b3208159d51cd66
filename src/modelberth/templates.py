"""Built-in service types: default values a model's config may override."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    description: str
    command: tuple[str, ...]
    health_path: str
    image: str | None = None


# `${MODEL_PATH}` is the model's `model_path`; `${PORT}` the port modelberth assigned.
TEMPLATES: dict[str, Template] = {
    "llama-cpp": Template(
        name="llama-cpp",
        description="llama.cpp llama-server",
        command=("llama-server", "--host", "127.0.0.1", "--port", "${PORT}", "-m", "${MODEL_PATH}"),
        health_path="/health",
        image="ghcr.io/ggml-org/llama.cpp:server",
    ),
    "vllm": Template(
        name="vllm",
        description="vLLM OpenAI-compatible server",
        command=("vllm", "serve", "${MODEL_PATH}", "--host", "127.0.0.1", "--port", "${PORT}"),
        health_path="/health",
        image="vllm/vllm-openai:latest",
    ),
    "tgi": Template(
        name="tgi",
        description="Hugging Face text-generation-inference",
        command=(
            "text-generation-launcher",
            "--model-id",
            "${MODEL_PATH}",
            "--hostname",
            "127.0.0.1",
            "--port",
            "${PORT}",
        ),
        health_path="/health",
        image="ghcr.io/huggingface/text-generation-inference:latest",
    ),
    "sglang": Template(
        name="sglang",
        description="SGLang server",
        command=(
            "python3",
            "-m",
            "sglang.launch_server",
            "--model-path",
            "${MODEL_PATH}",
            "--host",
            "127.0.0.1",
            "--port",
            "${PORT}",
        ),
        health_path="/health",
        image="lmsysorg/sglang:latest",
    ),
    "openai": Template(
        name="openai",
        description="any OpenAI-compatible server (give `command`)",
        command=(),
        health_path="/v1/models",
    ),
}
