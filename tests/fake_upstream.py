"""A small, real OpenAI-style upstream on loopback whose timing and failures tests control.

    python fake_upstream.py --port P [--start-delay S] [--exit-code N] [--chunks N]
        [--chunk-delay S] [--die-after-chunks N] [--events FILE] [--ignore-sigterm]
        [--print-load-lines llama|llama-old|vllm] [--print-every S] [--silent] [--loading-503]
        [--fail-status N] [--tls-cert FILE --tls-key FILE]

Started by a test itself (not by modelberth), it plays a remote endpoint (runtime: remote):
--fail-status makes every POST /v1/* answer that status, --tls-* serve HTTPS.

Every start, request, finished stream and cancelled stream is appended to --events as a line,
so tests can count what really happened.

POST /wedge wedges it for good: /health still answers 200, but every completion (chat or
not) is counted as a request and then never answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from load_lines import LOAD_LINES


def record(args: argparse.Namespace, what: str) -> None:
    if args.events:
        with Path(args.events).open("a") as fh:
            fh.write(f"{what} {os.getpid()} {time.time():.3f}\n")


class Wedge:
    """POST /wedge: from then on /health still answers, but no completion ever does."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._on = False

    async def set(self, _: web.Request) -> web.Response:
        self._on = True
        record(self._args, "wedged")
        return web.json_response({"wedged": True})

    async def request(self, request: web.Request) -> Any:
        """A completion request's JSON, recorded; once wedged, like a stuck GPU, it is
        taken and never answered."""
        data = await request.json()
        record(self._args, "request")
        if self._on:
            await asyncio.Event().wait()
        return data


def chunk(index: int, model: str) -> bytes:
    body = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": {"content": f"tok{index} "}}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


async def tool_call(
    request: web.Request, data: dict[str, object], model: str
) -> web.StreamResponse:
    """Asked with tools: call the first one with {"city": "Oslo"} (streamed in two argument
    fragments when a stream was asked for)."""
    tools = data["tools"]
    assert isinstance(tools, list)
    name = tools[0]["function"]["name"]
    usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    if not data.get("stream"):
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": name, "arguments": '{"city": "Oslo"}'},
        }
        return web.json_response(
            {
                "id": "c2",
                "object": "chat.completion",
                "model": model,
                "usage": usage,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "tool_calls",
                        "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                    }
                ],
            }
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    deltas = [
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": name, "arguments": '{"city": '},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]},
    ]
    for delta in deltas:
        body = {
            "id": "c2",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": delta}],
        }
        await resp.write(f"data: {json.dumps(body)}\n\n".encode())
    end = {
        "id": "c2",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
    }
    await resp.write(f"data: {json.dumps(end)}\n\n".encode())
    final = {
        "id": "c2",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [],
        "usage": usage,
    }
    await resp.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
    return resp


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def failing(args: argparse.Namespace, handler: Handler) -> Handler:
    """--fail-status: the route answers that status, in OpenAI's error shape, as a server in
    trouble does (each such request is recorded as a request)."""
    if not args.fail_status:
        return handler

    async def fail(_: web.Request) -> web.StreamResponse:
        record(args, "request")
        return web.json_response(
            {
                "error": {
                    "message": f"simulated failure {args.fail_status}",
                    "type": "server_error",
                    "code": args.fail_status,
                }
            },
            status=args.fail_status,
        )

    return fail


async def embeddings(request: web.Request) -> web.Response:
    """One vector per input: [its length, 1.0, 0.5]; a token per word."""
    data = await request.json()
    given = data.get("input")
    inputs = [given] if isinstance(given, str) else list(given or [])
    words = sum(len(text.split()) for text in inputs)
    return web.json_response(
        {
            "object": "list",
            "model": data.get("model", "?"),
            "data": [
                {"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0, 0.5]}
                for i, t in enumerate(inputs)
            ],
            "usage": {"prompt_tokens": words, "total_tokens": words},
        }
    )


def make_app(args: argparse.Namespace) -> web.Application:
    wedge = Wedge(args)

    async def health(_: web.Request) -> web.Response:
        # --loading-503: what llama-server answers while it loads
        return (
            loading_answer()
            if time.monotonic() < args.loading_until
            else web.json_response({"status": "ok"})
        )

    async def chat(request: web.Request) -> web.StreamResponse:
        data = await wedge.request(request)
        model = args.served_name or data.get("model", "?")  # like an upstream's own name
        if data.get("die"):
            record(args, "dying")
            os._exit(4)
        if data.get("die_mid_body"):  # promise 1,000 bytes, send 100, exit
            half = web.StreamResponse(headers={"Content-Type": "application/json"})
            half.content_length = 1000
            await half.prepare(request)
            await half.write(b" " * 100)
            record(args, "dying")
            os._exit(5)
        if data.get("sleep"):
            await asyncio.sleep(float(data["sleep"]))
        messages = data.get("messages") or [{}]
        if data.get("tools") and messages[-1].get("role") != "tool":
            return await tool_call(request, data, model)
        if messages[-1].get("role") == "tool":  # the answer after a tool ran
            data = {**data, "reply": f"the tool said: {messages[-1].get('content')}"}
        if not data.get("stream"):
            return web.json_response(
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": data.get("reply", "hello")},
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                    "echo": {
                        "headers": dict(request.headers),
                        "query": request.query_string,
                        "body_bytes": len(await request.read()),
                        # Not under a "model" key: modelberth renames every one in answers.
                        "sent_model": data.get("model"),
                        "path": request.path,
                    },
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunks = int(data.get("chunks", args.chunks))
        try:
            for i in range(chunks):
                if args.die_after_chunks is not None and i == args.die_after_chunks:
                    record(args, "dying")
                    os._exit(3)
                await resp.write(chunk(i, model))
                await asyncio.sleep(float(data.get("chunk_delay", args.chunk_delay)))
            await resp.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            record(args, "cancelled")
            raise
        record(args, "finished")
        return resp

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "body_bytes": len(body),
                "headers": dict(request.headers),
            }
        )

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        resp = web.Response(status=code, headers={"ETag": '"v1"'})
        if code == 304:  # a 304 may state the length of what a 200 would carry
            resp.headers["Content-Length"] = "1234"
        return resp

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", failing(args, chat))
    app.add_routes(
        [
            web.post("/v1/completions", failing(args, chat)),
            web.post("/v1/embeddings", failing(args, embeddings)),
            web.post("/wedge", wedge.set),
        ]
    )
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_get("/status/{code:\\d+}", status)
    app.router.add_post("/v1/{tail:.*}", failing(args, echo))
    return app


def loading_answer() -> web.Response:
    return web.json_response(
        {"error": {"message": "Loading model", "code": 503, "type": "unavailable_error"}},
        status=503,
    )


def chatter(args: argparse.Namespace, began: float) -> None:
    """--print-load-lines spread over the start delay, and --print-every's lines."""
    lines = LOAD_LINES.get(args.print_load_lines or "", [])
    for i, line in enumerate(lines):
        time.sleep(max(0.0, began + args.start_delay * i / len(lines) - time.monotonic()))
        print(line, file=sys.stderr, flush=True)
    count = 0
    while args.print_every and time.monotonic() + args.print_every < began + args.start_delay:
        time.sleep(args.print_every)
        count += 1
        print(f"still loading ({count})", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    parser.add_argument("--start-delay", type=float, default=0.0)
    parser.add_argument("--exit-code", type=int, default=None)
    parser.add_argument(
        "--served-name", default=None, help="the model name answers carry (default: the request's)"
    )
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--die-after-chunks", type=int, default=None)
    parser.add_argument("--events", default=None)
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument(
        "--alloc-mb",
        type=int,
        default=0,
        help="hold this much resident memory, like a loaded model",
    )
    parser.add_argument(
        "--spawn-child",
        action="store_true",
        help="also start a long-lived child process in the same group",
    )
    parser.add_argument(
        "--print-load-lines",
        choices=sorted(LOAD_LINES),
        default=None,
        help="print a real server's load lines on stderr over the delay",
    )
    parser.add_argument(
        "--print-every",
        type=float,
        default=0.0,
        help="print a line on stderr this often during the start delay",
    )
    parser.add_argument("--silent", action="store_true", help="print nothing at start")
    parser.add_argument(
        "--loading-503",
        action="store_true",
        help="listen at once, answering /health 503 during the delay",
    )
    parser.add_argument(
        "--fail-status", type=int, default=0, help="answer every POST /v1/* with this status"
    )
    parser.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate")
    parser.add_argument("--tls-key", default=None, help="... and this key")
    args = parser.parse_args()
    args.loading_until = 0.0
    record(args, "start")
    if not args.silent:
        print(f"fake upstream starting on port {args.port}", flush=True)
    if args.print_load_lines or args.print_every:
        threading.Thread(target=chatter, args=(args, time.monotonic()), daemon=True).start()
    if args.loading_503:
        args.loading_until, args.start_delay = time.monotonic() + args.start_delay, 0.0
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.spawn_child:
        import subprocess

        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        record(args, f"child {child.pid}")
    time.sleep(args.start_delay)  # a crash at start-up, too, comes after loading for a while
    if args.exit_code is not None:
        print("fatal: cannot load model weights (simulated)", file=sys.stderr, flush=True)
        sys.exit(args.exit_code)
    weights = bytearray(args.alloc_mb * 1024 * 1024)
    weights[::4096] = b"\x01" * len(range(0, len(weights), 4096))  # make every page resident
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    web.run_app(
        make_app(args),
        host=args.host,
        port=args.port,
        print=None,
        handle_signals=not args.ignore_sigterm,
        ssl_context=tls,
    )


if __name__ == "__main__":
    main()
