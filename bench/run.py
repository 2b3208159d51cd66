"""modelberth benchmark: one command, everything on loopback, one table.

    .venv/bin/python bench/run.py [--duration 5] [--litellm] [--out bench/RESULTS.md]

Compares, in the same run and against the same upstream: direct access, modelberth, nginx
proxy_pass, the barest uvicorn proxies (bench/ceiling.py: the stack's ceiling) and
(with --litellm) LiteLLM's proxy. The fast upstream is nginx answering a fixed
chat completion (started and managed by modelberth itself, as a model); streams come from
tests/fake_upstream.py; cold starts and swaps use a real llama-server with the tiny model.
Load comes from wrk (non-streaming) and an aiohttp client (streams). Processes are pinned:
the proxy under test on core 0, upstream and load generator on core 1.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "fake_upstream.py"
PY = sys.executable
CHAT = "/v1/chat/completions"
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
ANSWER = json.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hello"},
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_tools() -> None:
    missing = [
        name
        for name, tool in (("wrk", "wrk"), ("nginx-light", "nginx"))
        if shutil.which(tool) is None
    ]
    if missing:
        print(f"installing {' '.join(missing)} (Debian)", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )


def on_load_core(argv: list[str]) -> list[str]:
    """An upstream's command, pinned to core 1 with the load generator (modelberth starts it,
    and would otherwise pass on its own pinning to core 0)."""
    return ["taskset", "-c", "1", *argv] if shutil.which("taskset") else argv


def wait_http(url: str, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except Exception:
            time.sleep(0.02)
    raise RuntimeError(f"{url} did not answer")


def nginx_conf(work: Path, port: int, body: str | None = None, upstream: int | None = None) -> Path:
    """An nginx that answers a fixed completion (body) or proxies to `upstream`."""
    if upstream is not None:
        location = (
            f"proxy_pass http://127.0.0.1:{upstream}; proxy_http_version 1.1; "
            'proxy_set_header Connection ""; proxy_buffering off;'
        )
        extra = f"upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}"
        location = location.replace(f"http://127.0.0.1:{upstream}", "http://up")
    else:
        extra = ""
        location = f"default_type application/json; return 200 '{body}';"
    conf = work / f"nginx-{port}.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {work}/nginx-{port}.pid; error_log stderr error;
events {{ worker_connections 4096; }}
http {{
  access_log off; client_body_temp_path {work}; proxy_temp_path {work};
  fastcgi_temp_path {work}; uwsgi_temp_path {work}; scgi_temp_path {work};
  keepalive_requests 1000000; {extra}
  server {{ listen 127.0.0.1:{port}; location /health {{ return 200 'ok'; }}
           location / {{ {location} }} }}
}}""")
    return conf


@contextmanager
def process(
    argv: list[str],
    cpu: int | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    if cpu is not None and shutil.which("taskset"):
        argv = ["taskset", "-c", str(cpu), *argv]
    out = log.open("ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with_group(proc, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with_group(proc, signal.SIGKILL)
            proc.wait()


def with_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


@contextmanager
def modelberth(
    work: Path,
    models: dict[str, Any],
    env: dict[str, str] | None = None,
    resources: dict[str, Any] | None = None,
) -> Iterator[tuple[str, int]]:
    port = free_port()
    config = {
        "server": {"port": port},
        "models": models,
        **({"resources": resources} if resources else {}),
    }
    path = work / f"modelberth-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    with process(
        [
            PY,
            "-m",
            "modelberth",
            "serve",
            "-c",
            str(path),
            "--log-level",
            "WARNING",
            "--log-format",
            "plain",
        ],
        cpu=0,
        env=env,
        log=work / "modelberth.log",
    ) as mb:
        wait_http(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}", mb.pid


# --- measurements --------------------------------------------------------------------------

_WRK_LUA = f"""wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
"""


def wrk(work: Path, url: str, connections: int, duration: float) -> dict[str, float]:
    script = work / "post.lua"
    script.write_text(_WRK_LUA)
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "-s",
        str(script),
        url + CHAT,
    ]
    if shutil.which("taskset"):
        argv = ["taskset", "-c", "1", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), "
        r"timeout (\d+)",
        out,
    )
    latency = {
        p: _ms(m.group(2))
        for m in re.finditer(r"\s+(50|99)(?:\.000)?%\s+([\d.]+\w+)", out)
        for p in [m.group(1)]
    }
    return {
        "rps": rps,
        "requests": total,
        "p50_ms": latency.get("50", float("nan")),
        "p99_ms": latency.get("99", float("nan")),
        "errors": float(errors.group(1) if errors else 0)
        + (sum(int(g) for g in socket_errors.groups()) if socket_errors else 0),
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


async def _streams(
    url: str, concurrency: int, rounds: int, chunks: int, delay: float
) -> dict[str, Any]:
    body = {"model": "m", "stream": True, "chunks": chunks, "chunk_delay": delay}
    ttfts: list[float] = []
    gaps: list[float] = []
    pieces: list[int] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            nonlocal errors
            began = time.perf_counter()
            arrivals = []
            try:
                async with session.post(url + CHAT, json=body) as resp:
                    async for _ in resp.content.iter_any():
                        arrivals.append(time.perf_counter())
            except aiohttp.ClientError:
                errors += 1
                return
            ttfts.append((arrivals[0] - began) * 1000)
            gaps.extend((b - a) * 1000 for a, b in itertools.pairwise(arrivals))
            pieces.append(len(arrivals))

        for _ in range(rounds):
            await asyncio.gather(*(one() for _ in range(concurrency)))
    return {
        "ttft_p50": _pct(ttfts, 50),
        "ttft_p99": _pct(ttfts, 99),
        "errors": errors,
        "pieces": statistics.median(pieces) if pieces else 0,
        "gap_p50": _pct(gaps, 50),
    }


def _pct(values: list[float], p: int) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def streams(
    url: str, concurrency: int, rounds: int = 5, chunks: int = 8, delay: float = 0.02
) -> dict[str, Any]:
    return asyncio.run(_streams(url, concurrency, rounds, chunks, delay))


async def _hold_streams(url: str, n: int, pid: int) -> tuple[int, float]:
    body = {"model": "m", "stream": True, "chunks": 3, "chunk_delay": 1.0}
    peak = 0.0
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> bool:
            try:
                async with session.post(url + CHAT, json=body) as resp:
                    await resp.read()
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        task = asyncio.gather(*(one() for _ in range(n)))
        while not task.done():
            peak = max(peak, psutil.Process(pid).memory_info().rss / 2**20)
            await asyncio.sleep(0.1)
        ok = sum(await task)
    return n - ok, peak


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss / 2**20)


# --- scenarios -----------------------------------------------------------------------------


BARE = "bare ASGI on modelberth's guarded uvicorn protocol + client (ceiling)"
BARE_UVICORN = "bare ASGI on uvicorn's httptools protocol + modelberth's client"
BARE_AIOHTTP = "bare ASGI on uvicorn's protocol + aiohttp (first stack)"
BARE_GRANIAN = "bare ASGI on granian + modelberth's client"
BARE_RSGI = "bare RSGI on granian + modelberth's client"
GRANIAN = "granian==2.8.7"  # measured against, not a dependency


def ensure_granian() -> None:
    try:
        import granian  # noqa: F401
    except ImportError:
        print(f"installing {GRANIAN} into the venv (benchmark only)", flush=True)
        subprocess.run([PY, "-m", "pip", "install", "--quiet", GRANIAN], check=True)


def serving_pid(pid: int) -> int:
    """The process that serves: granian's worker (its only child), else the process."""
    children = psutil.Process(pid).children()
    return children[0].pid if len(children) == 1 else pid


def bench_fast_upstream(
    work: Path, duration: float, litellm: bool, reps: int
) -> list[dict[str, Any]]:
    rows = []
    up_port = free_port()
    up_conf = nginx_conf(work, up_port, body=ANSWER)
    models = {
        "m": {
            "command": on_load_core(["nginx", "-c", str(up_conf)]),
            "port": up_port,
            "health_path": "/health",
            "idle_timeout": 0,
            "preload": True,
        }
    }
    ensure_granian()
    with modelberth(work, models) as (mb_url, mb_pid), ExitStack() as stack:
        wait_http(f"http://127.0.0.1:{up_port}/health")
        direct = f"http://127.0.0.1:{up_port}"
        ng_port = free_port()
        stack.enter_context(
            process(["nginx", "-c", str(nginx_conf(work, ng_port, upstream=up_port))], cpu=0)
        )
        targets = [
            ("direct", direct),
            ("modelberth", mb_url),
            ("nginx proxy_pass", f"http://127.0.0.1:{ng_port}"),
        ]
        pids = {"modelberth": mb_pid}
        ceiling = [PY, str(ROOT / "bench" / "ceiling.py"), "--upstream-port", str(up_port)]
        for name, extra in (
            (BARE, ["--server", "modelberth"]),
            (BARE_UVICORN, []),
            (BARE_AIOHTTP, ["--client", "aiohttp"]),
            (BARE_GRANIAN, ["--server", "granian"]),
            (BARE_RSGI, ["--server", "granian-rsgi"]),
        ):
            port = free_port()
            proc = stack.enter_context(process([*ceiling, "--port", str(port), *extra], cpu=0))
            targets.append((name, f"http://127.0.0.1:{port}"))
            pids[name] = proc.pid
        for _, url in targets[2:]:
            wait_http(url + "/health")
        for name in (BARE_GRANIAN, BARE_RSGI):
            pids[name] = serving_pid(pids[name])
        with litellm_proxy(work, up_port, litellm) as lite:
            if lite:
                targets.append(("LiteLLM proxy", lite))
            idle_rss = rss_mb(mb_pid)
            for _, url in targets:
                wrk(work, url, 8, 1)  # warm-up
            one = interleaved(work, targets, 1, duration, reps)
            many = interleaved(work, targets, 64, duration, reps, pids)
            for name, _ in targets:
                rows.append(
                    {
                        "target": name,
                        "p50_ms_c1": one[name]["p50_ms"],
                        "p99_ms_c1": one[name]["p99_ms"],
                        "rps_c64": many[name]["rps"],
                        "x_direct_c64": many[name]["rps"] / many["direct"]["rps"],
                        "cpu_us_per_req_c64": many[name].get("cpu_us_per_req", ""),
                        "errors": one[name]["errors"] + many[name]["errors"],
                    }
                )
            rows.append(
                {
                    "target": "modelberth RSS MB (idle / after load)",
                    "value": f"{idle_rss:.0f} / {rss_mb(mb_pid):.0f}",
                }
            )
    return rows


@contextmanager
def litellm_proxy(work: Path, up_port: int, enabled: bool) -> Iterator[str | None]:
    if not enabled:
        yield None
        return
    # A LiteLLM release was compromised in 2026 (1.107.0): the version compared against
    # is pinned with hashes (bench/litellm.in, locked by `make lock`), and a venv made from
    # another lock is made again.
    venv = ROOT / "bench" / ".venv-litellm"
    lock = ROOT / "bench" / "litellm.lock"
    stamp = venv / "installed.lock"
    if (
        not (venv / "bin" / "litellm").exists()
        or not stamp.exists()
        or (stamp.read_bytes() != lock.read_bytes())
    ):
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([PY, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "--require-hashes", "-r", str(lock)],
            check=True,
        )
        shutil.copyfile(lock, stamp)
    port = free_port()
    config = work / "litellm.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": "m",
                        "litellm_params": {
                            "model": "openai/m",
                            "api_base": f"http://127.0.0.1:{up_port}/v1",
                            "api_key": "x",
                        },
                    }
                ]
            }
        )
    )
    env = {
        "LITELLM_MASTER_KEY": "sk-bench",  # every target gets this Bearer key from wrk
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }  # no fetch of the price list at start
    with process(
        [
            str(venv / "bin" / "litellm"),
            "--config",
            str(config),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        cpu=0,
        env=env,
        log=work / "litellm.log",
    ):
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=120)
        yield f"http://127.0.0.1:{port}"


def bench_streams(work: Path) -> list[dict[str, Any]]:
    rows = []
    up_port = free_port()
    models = {
        "m": {
            "command": on_load_core([PY, str(FAKE), "--port", "${PORT}"]),
            "port": up_port,
            "idle_timeout": 0,
            "preload": True,
        }
    }
    with modelberth(work, models) as (mb_url, mb_pid):
        wait_http(f"http://127.0.0.1:{up_port}/health")
        direct = f"http://127.0.0.1:{up_port}"
        streams(direct, 32, rounds=2)  # warm-up at the measured concurrency: pooled
        streams(mb_url, 32, rounds=2)  # upstream connections, as in steady use
        for concurrency, rounds in ((1, 50), (32, 20)):  # 50 and 640 streams per target
            d = streams(direct, concurrency, rounds)
            m = streams(mb_url, concurrency, rounds)
            rows.append(
                {
                    "streams": f"c={concurrency}",
                    "direct_ttft_p50": d["ttft_p50"],
                    "direct_ttft_p99": d["ttft_p99"],
                    "mb_ttft_p50": m["ttft_p50"],
                    "mb_ttft_p99": m["ttft_p99"],
                    "direct_pieces": d["pieces"],
                    "mb_pieces": m["pieces"],
                    "mb_gap_p50": m["gap_p50"],
                    "errors": d["errors"] + m["errors"],
                }
            )
        failed, peak = asyncio.run(_hold_streams(mb_url, 1000, mb_pid))
        rows.append({"streams": "1000 held open", "errors": failed, "mb_peak_rss_mb": peak})
    return rows


def bench_cold_start_and_swap(work: Path) -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT / "src"))
    from modelberth.demo import llama_server_path
    from modelberth.tinymodel import ensure_tiny_model

    model = ensure_tiny_model(work / "tiny.gguf")
    binary = str(llama_server_path())

    def argv(port: str) -> list[str]:
        return [
            binary,
            "-m",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "-t",
            "1",
            "-np",
            "1",
            "-c",
            "256",
            "--no-webui",
        ]

    body = json.dumps(
        {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    ).encode()

    def ttfb(url: str, name: str) -> float:
        import urllib.request

        request = urllib.request.Request(
            url + CHAT,
            data=body.replace(b'"a"', f'"{name}"'.encode()),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        began = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as resp:
            resp.read(1)
            first = time.perf_counter()
            resp.read()
        return (first - began) * 1000

    own, direct = [], []
    for _ in range(5):  # the upstream's own time to healthy, polled every 2 ms
        port = free_port()
        began = time.perf_counter()
        with process(argv(str(port)), cpu=1):
            wait_until_healthy(f"http://127.0.0.1:{port}/health")
            own.append((time.perf_counter() - began) * 1000)
            direct += [ttfb(f"http://127.0.0.1:{port}", "a") for _ in range(2)]
    models = {
        name: {"command": on_load_core(argv("${PORT}")), "memory_mb": 60} for name in ("a", "b")
    }
    cold, swaps = [], []
    with modelberth(work, models, resources={"memory_budget_mb": 100}) as (url, _):
        for _ in range(5):
            cold.append(ttfb(url, "a"))  # a cold (b was evicting it) ...
            swaps.append(ttfb(url, "b"))  # ... and b evicts a: a swap
        warm = statistics.median(ttfb(url, "b") for _ in range(10))
    own_ms = statistics.median(own)
    return [
        {"llama-server": "own time to healthy (ms)", "value": round(own_ms, 1)},
        {"llama-server": "warm request direct (ms)", "value": round(statistics.median(direct), 1)},
        {"llama-server": "warm request through modelberth (ms)", "value": round(warm, 1)},
        {
            "llama-server": "cold request via modelberth, first byte (ms)",
            "value": round(statistics.median(cold), 1),
        },
        {
            "llama-server": "cold-start overhead = cold - own - warm (ms)",
            "value": round(statistics.median(cold) - own_ms - warm, 1),
        },
        {
            "llama-server": "swap a -> b, first byte (ms)",
            "value": round(statistics.median(swaps), 1),
        },
    ]


def wait_until_healthy(url: str) -> None:
    import urllib.request

    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except Exception:
            time.sleep(0.002)


def otlp_sink_conf(work: Path, port: int) -> Path:
    """An nginx that answers every OTLP/HTTP export with an empty 200 (a valid empty
    ExportTraceServiceResponse) and logs each body's size: a collector that costs next to
    nothing on the upstream's core. The tests decode what modelberth exports with a real
    receiver (tests/otlp_receiver.py); here only its cost on modelberth is measured."""
    conf = work / f"nginx-otlp-{port}.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {work}/nginx-otlp-{port}.pid; error_log stderr error;
events {{ worker_connections 1024; }}
http {{
  client_body_temp_path {work}; client_max_body_size 64m; client_body_buffer_size 4m;
  log_format size '$uri $content_length';
  access_log {work}/otlp-{port}.log size;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200; }} }}
}}""")
    return conf


def exported_bytes(work: Path, port: int) -> int:
    """Bytes of span exports the sink received."""
    log = work / f"otlp-{port}.log"
    lines = log.read_text().split("\n") if log.exists() else []
    return sum(int(line.split()[1]) for line in lines if line.startswith("/v1/traces "))


def export_process(pid: int) -> int | None:
    """modelberth's span export process (a child), moved to the load generator's core: it is
    started under modelberth's own pinning to core 0."""
    for child in psutil.Process(pid).children():
        if any("span_export" in part for part in child.cmdline()):
            with suppress(OSError):
                child.cpu_affinity([1])
            return child.pid
    return None


def bench_tracing(work: Path, duration: float, reps: int) -> list[dict[str, Any]]:
    sink_port = free_port()
    otlp = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }

    def sampled(ratio: str) -> dict[str, str]:
        return {
            **otlp,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": ratio,
        }

    variants: list[tuple[str, dict[str, str]]] = [
        ("telemetry off", {}),
        ("tracing on (OTLP/HTTP)", otlp),
        ("tracing 10% sampled", sampled("0.1")),
        ("tracing 1% sampled", sampled("0.01")),
    ]
    with ExitStack() as stack:  # all at once, so their runs can be interleaved
        start_otlp_sink(stack, work, sink_port)
        results = side_by_side(stack, work, variants, duration, reps)
        time.sleep(6)  # the last batches (OTEL_BSP_SCHEDULE_DELAY, 5 s) reach the sink
        received = exported_bytes(work, sink_port)
    off = results["telemetry off"]["rps"]
    rows: list[dict[str, Any]] = [
        {"telemetry": label, **results[label], "x_off": results[label]["rps"] / off}
        for label, _ in variants
    ]
    rows.append({"telemetry": "OTLP span exports received (MB)", "rps": received / 1e6})
    return rows


def start_otlp_sink(stack: ExitStack, work: Path, port: int) -> None:
    """The OTLP sink of `otlp_sink_conf` on core 1, until `stack` closes."""
    stack.enter_context(process(["nginx", "-c", str(otlp_sink_conf(work, port))], cpu=1))
    wait_http(f"http://127.0.0.1:{port}/health")


def side_by_side(
    stack: ExitStack,
    work: Path,
    variants: list[tuple[str, dict[str, str]]],
    duration: float,
    reps: int,
    connections: int = 64,
) -> dict[str, dict[str, float]]:
    """One modelberth per (label, environment) on core 0, each with a fast nginx upstream of
    its own on core 1, all running at once (until `stack` closes), measured with wrk (c=64
    unless told) in interleaved rounds; span export processes are moved to core 1 and their
    CPU reported."""
    targets, pids, helpers = [], {}, {}
    for label, env in variants:
        up_port = free_port()
        models = {
            "m": {
                "command": on_load_core(
                    ["nginx", "-c", str(nginx_conf(work, up_port, body=ANSWER))]
                ),
                "port": up_port,
                "health_path": "/health",
                "idle_timeout": 0,
                "preload": True,
            }
        }
        url, pid = stack.enter_context(modelberth(work, models, env=env))
        pids[label] = pid
        helper = export_process(pid)
        if helper is not None:
            helpers[label] = helper
        wait_http(f"http://127.0.0.1:{up_port}/health")
        wrk(work, url, 8, 1)  # warm up
        targets.append((label, url))
    return interleaved(work, targets, connections, duration, reps, pids, helpers)


def interleaved(
    work: Path,
    targets: list[tuple[str, str]],
    connections: int,
    duration: float,
    reps: int,
    pids: dict[str, int] | None = None,
    helpers: dict[str, int] | None = None,
) -> dict[str, dict[str, float]]:
    """wrk against each target in turn, `reps` rounds; the median of each figure (errors
    summed). Interleaving spreads this machine's slow drifts over all targets alike. For the
    targets in `pids`, also the CPU time that process spent per request: unlike throughput,
    that figure hardly moves with the machine's noise; likewise for their `helpers` (the span
    export process)."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in targets}
    measured = {"cpu_us_per_req": pids or {}, "export_cpu_us_per_req": helpers or {}}
    for _ in range(reps):
        for name, url in targets:
            before = {key: cpu_seconds(of[name]) for key, of in measured.items() if name in of}
            run = wrk(work, url, connections, duration)
            for key, started in before.items():
                spent = cpu_seconds(measured[key][name]) - started
                run[key] = spent * 1e6 / run["requests"]
            runs[name].append(run)
    keys = ("rps", "p50_ms", "p99_ms", "errors", "cpu_us_per_req", "export_cpu_us_per_req")
    return {
        name: {
            key: statistics.median(r[key] for r in got)
            if key != "errors"
            else sum(r[key] for r in got)
            for key in keys
            if key in got[0]
        }
        for name, got in runs.items()
    }


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of one process (not its children)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    for row in rows:
        cells = []
        for key in keys:
            value = row.get(key, "")
            cells.append(f"{value:.3g}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument(
        "--reps",
        type=int,
        default=3,
        help="interleaved wrk rounds per target; medians are reported",
    )
    parser.add_argument("--litellm", action="store_true", help="also measure LiteLLM's proxy")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    parser.add_argument(
        "--only",
        default="fast,streams,cold,telemetry",
        help="comma-separated sections: fast, streams, cold, telemetry",
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    ensure_tools()
    with suppress(OSError):  # this process is the load generator for streams
        os.sched_setaffinity(0, {1})
    titles = {
        "fast": "Non-streaming, fast upstream (wrk; c=1 latency, c=64 throughput)",
        "streams": "Streaming (time to first chunk in ms; pieces = separate reads per stream)",
        "cold": "Cold start and swap, real llama-server",
        "telemetry": "Telemetry overhead (c=64)",
    }
    if args.out:
        args.out.write_text("")
    with tempfile.TemporaryDirectory(prefix="modelberth-bench-") as tmp:
        work = Path(tmp)
        for section in (name for name in titles if name in only):
            if section == "fast":
                rows = bench_fast_upstream(work, args.duration, args.litellm, args.reps)
            elif section == "streams":
                rows = bench_streams(work)
            elif section == "cold":
                rows = bench_cold_start_and_swap(work)
            else:
                rows = bench_tracing(work, args.duration, args.reps)
            report = f"### {titles[section]}\n\n{table(rows)}\n"
            print(report, flush=True)  # each section as soon as it is measured
            if args.out:
                with args.out.open("a") as out:
                    out.write(report + "\n")


if __name__ == "__main__":
    main()
