"""Built-in service types: default values a model's config may override.

Placeholders are filled at each start: `${PORT}` the port modelberth assigned, `${HOST}` the
address to listen on (127.0.0.1, or 0.0.0.0 inside a bridge-networked container),
`${MODEL_PATH}` the model's `model_path`; with GPUs, `${GPUS}` the device indexes given
(`0,2`), `${GPU_COUNT}` how many, `${TENSOR_SPLIT}` an even split over them (`1,1`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    description: str
    command: tuple[str, ...]  # argv for runtime: process
    health_path: str
    image: str | None = None  # for runtime: docker
    gpu_image: str | None = None  # used instead of `image` when the model has `gpus`
    docker_command: tuple[str, ...] = ()  # arguments after the image's entrypoint
    container_port: int | None = None  # where the image listens when network: bridge
    speaks_anthropic: bool = False  # serves POST /v1/messages itself
    multi_gpu: tuple[str, ...] = ()  # added to the default command when given 2+ GPUs
    sleep_args: tuple[str, ...] = ()  # added to the default command with `sleep`
    sleep_env: tuple[tuple[str, str], ...] = ()  # added to env with `sleep`


_LISTEN = ("--host", "${HOST}", "--port", "${PORT}")

TEMPLATES: dict[str, Template] = {
    "llama-cpp": Template(
        name="llama-cpp",
        description="llama.cpp llama-server",
        command=("llama-server", *_LISTEN, "-m", "${MODEL_PATH}"),
        health_path="/health",
        image="ghcr.io/ggml-org/llama.cpp:server",
        gpu_image="ghcr.io/ggml-org/llama.cpp:server-cuda",
        docker_command=(*_LISTEN, "-m", "${MODEL_PATH}"),
        container_port=8080,
        speaks_anthropic=True,
        multi_gpu=("--split-mode", "layer", "--tensor-split", "${TENSOR_SPLIT}"),
    ),
    "vllm": Template(
        name="vllm",
        description="vLLM OpenAI-compatible server",
        command=("vllm", "serve", "${MODEL_PATH}", *_LISTEN),
        health_path="/health",
        image="vllm/vllm-openai:latest",
        gpu_image="vllm/vllm-openai:latest",
        docker_command=("--model", "${MODEL_PATH}", *_LISTEN),
        container_port=8000,
        multi_gpu=("--tensor-parallel-size", "${GPU_COUNT}"),
        sleep_args=("--enable-sleep-mode",),
        # vLLM serves /sleep, /wake_up and /is_sleeping only in its development mode.
        sleep_env=(("VLLM_SERVER_DEV_MODE", "1"),),
    ),
    "tgi": Template(
        name="tgi",
        description="Hugging Face text-generation-inference",
        command=(
            "text-generation-launcher",
            "--model-id",
            "${MODEL_PATH}",
            "--hostname",
            "${HOST}",
            "--port",
            "${PORT}",
        ),
        health_path="/health",
        image="ghcr.io/huggingface/text-generation-inference:latest",
        gpu_image="ghcr.io/huggingface/text-generation-inference:latest",
        docker_command=(
            "--model-id",
            "${MODEL_PATH}",
            "--hostname",
            "${HOST}",
            "--port",
            "${PORT}",
        ),
        container_port=80,
        multi_gpu=("--num-shard", "${GPU_COUNT}"),
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
            *_LISTEN,
        ),
        health_path="/health",
        image="lmsysorg/sglang:latest",
        gpu_image="lmsysorg/sglang:latest",
        docker_command=(
            "python3",
            "-m",
            "sglang.launch_server",
            "--model-path",
            "${MODEL_PATH}",
            *_LISTEN,
        ),
        container_port=30000,
        multi_gpu=("--tp-size", "${GPU_COUNT}"),
    ),
    "openai": Template(
        name="openai",
        description="any OpenAI-compatible server (give `command`, or `image`)",
        command=(),
        health_path="/v1/models",
    ),
}
