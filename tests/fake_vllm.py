"""A stand-in for vLLM's OpenAI server in sleep mode (--enable-sleep-mode with
VLLM_SERVER_DEV_MODE=1), real HTTP on loopback: vLLM itself needs a GPU, which the tests do
not have, so this implements the endpoints vLLM documents for sleep mode as they behave.

    python fake_vllm.py --port P [--events FILE] [--start-delay S] [--sleep-delay S]
        [--wake-delay S] [--weights-mb N] [--fail-wake] [--fail-sleep] [--served-name N]

- GET /health: 200, also while asleep (vLLM's does too: it is up, only its memory is gone).
- GET /v1/models; POST /v1/chat/completions and /v1/completions, plain or streamed.
  Asleep, or at level 2 before the weights are reloaded, they cannot generate: 503 and an
  `asleep-request` event, so a test proves that modelberth held its requests for the wake.
- POST /sleep?level=1|2: answers once asleep (after --sleep-delay). Level 1 moves the
  weights to host RAM: this holds --weights-mb of memory while asleep, so its RSS grows.
- POST /wake_up: 200 at once; GET /is_sleeping says true for --wake-delay seconds more, so
  modelberth's polling is what finds it awake. --fail-wake: a 500 instead.
- POST /collective_rpc {"method": "reload_weights"}, POST /reset_prefix_cache: level 2's
  wake.

Its VRAM goes through the fake NVML (fake_nvml.py): awake it writes the MB of FAKE_VRAM_MB
(its environment's) to the file FAKE_VRAM_FILE names, asleep 0. Every start, request, sleep,
wake and RPC is appended to --events as `KIND PID TIME [DETAIL]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from aiohttp import web

MB = 1024 * 1024


class Engine:
    """What the fake vLLM is: asleep or not, at which level, its weights where."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.level = 0  # 0: awake
        self.awake_at = 0.0  # monotonic: when is_sleeping turns false after a wake_up
        self.weights_loaded = True
        self.host_weights: bytearray | None = None  # level 1's copy in host RAM
        self.vram(awake=True)

    def record(self, what: str, detail: str = "") -> None:
        if self.args.events:
            with Path(self.args.events).open("a") as fh:
                fh.write(f"{what} {os.getpid()} {time.time():.3f} {detail}".rstrip() + "\n")

    def vram(self, awake: bool) -> None:
        path = os.environ.get("FAKE_VRAM_FILE")
        if path:  # replaced whole, so the fake NVML never reads half a number
            temporary = Path(f"{path}.{os.getpid()}")
            temporary.write_text(os.environ.get("FAKE_VRAM_MB", "0") if awake else "0")
            temporary.replace(path)

    @property
    def sleeping(self) -> bool:
        return self.level > 0 or time.monotonic() < self.awake_at

    @property
    def can_generate(self) -> bool:
        return not self.sleeping and self.weights_loaded


def chunk(index: int, model: str, chat: bool) -> bytes:
    choice = (
        {"index": 0, "delta": {"content": f"tok{index} "}}
        if chat
        else {"index": 0, "text": f"tok{index} "}
    )
    body = {
        "id": "c1",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "model": model,
        "choices": [choice],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


async def answer(engine: Engine, request: web.Request) -> web.StreamResponse:
    """A completion (chat or not, streamed or not), if it can generate now."""
    args = engine.args
    data = await request.json()
    chat = request.path.endswith("/chat/completions")
    if not engine.can_generate:
        engine.record("asleep-request")
        return web.json_response(
            {
                "object": "error",
                "message": "the engine is sleeping",
                "type": "ServiceUnavailable",
                "code": 503,
            },
            status=503,
        )
    engine.record("request")
    model = data.get("model", args.served_name)
    if not data.get("stream"):
        choice = (
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hello"},
            }
            if chat
            else {"index": 0, "finish_reason": "stop", "text": "hello"}
        )
        return web.json_response(
            {
                "id": "c1",
                "object": "chat.completion" if chat else "text_completion",
                "model": model,
                "choices": [choice],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(int(data.get("chunks", 3))):
        await resp.write(chunk(i, model, chat))
    await resp.write(b"data: [DONE]\n\n")
    return resp


def make_app(engine: Engine) -> web.Application:
    args = engine.args

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": args.served_name, "object": "model", "owned_by": "vllm"}],
            }
        )

    async def generate(request: web.Request) -> web.StreamResponse:
        return await answer(engine, request)

    async def sleep(request: web.Request) -> web.Response:
        level = int(request.query.get("level", "1"))
        engine.record("sleep", f"level={level}")
        if args.fail_sleep:
            return web.json_response({"error": "simulated sleep failure"}, status=500)
        engine.level = level  # from the first moment: nothing generates while it lets go
        await asyncio.sleep(args.sleep_delay)
        if level == 1:  # every page written, so it is resident
            weights = engine.host_weights = bytearray(args.weights_mb * MB)
            weights[::4096] = b"\x01" * len(range(0, len(weights), 4096))
        else:  # level 2: gone; a wake must reload them
            engine.weights_loaded = False
        engine.vram(awake=False)
        return web.Response(status=200)

    async def wake_up(_: web.Request) -> web.Response:
        engine.record("wake_up")
        if args.fail_wake:
            return web.json_response(
                {"error": "simulated wake failure: CUDA out of memory"}, status=500
            )
        engine.host_weights = None  # back on the GPU (level 2: still to be reloaded)
        engine.level = 0
        engine.awake_at = time.monotonic() + args.wake_delay
        engine.vram(awake=True)
        return web.Response(status=200)

    async def is_sleeping(_: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": engine.sleeping})

    async def collective_rpc(request: web.Request) -> web.Response:
        method = (await request.json()).get("method")
        engine.record("rpc", str(method))
        if method == "reload_weights":
            engine.weights_loaded = True
        return web.json_response({"results": [None]})

    async def reset_prefix_cache(_: web.Request) -> web.Response:
        engine.record("reset_prefix_cache")
        return web.Response(status=200)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", generate)
    app.router.add_post("/v1/completions", generate)
    app.router.add_post("/sleep", sleep)
    app.router.add_post("/wake_up", wake_up)
    app.router.add_get("/is_sleeping", is_sleeping)
    app.router.add_post("/collective_rpc", collective_rpc)
    app.router.add_post("/reset_prefix_cache", reset_prefix_cache)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", default=None)
    parser.add_argument("--served-name", default="fake-vllm")
    parser.add_argument("--start-delay", type=float, default=0.0)
    parser.add_argument("--sleep-delay", type=float, default=0.0)
    parser.add_argument("--wake-delay", type=float, default=0.0)
    parser.add_argument("--weights-mb", type=int, default=0)
    parser.add_argument("--fail-wake", action="store_true")
    parser.add_argument("--fail-sleep", action="store_true")
    args = parser.parse_args()
    time.sleep(args.start_delay)  # loading the model
    engine = Engine(args)
    engine.record("start")
    print(f"fake vLLM starting on port {args.port}", flush=True)
    web.run_app(make_app(engine), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
