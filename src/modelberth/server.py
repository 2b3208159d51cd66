"""Runs the app under uvicorn, on the guarded HTTP protocol (protocol.py): listening (on
server.port, and server.ollama_port too when set), graceful shutdown, file descriptor
limits, a line once it is ready."""

from __future__ import annotations

import asyncio
import functools
import gc
import ipaddress
import resource
import socket
from collections.abc import Callable
from pathlib import Path
from typing import cast

import uvicorn
from loguru import logger

from modelberth.app import create_app
from modelberth.config import Config, ServerConfig
from modelberth.protocol import HttpProtocol, Limits

_GC_THRESHOLD = 10_000  # net allocations between young-generation collections
# Descriptors kept back from client connections: upstream connections, log files, pipes.
_FD_RESERVE_SHARE = 0.25
_FD_RESERVE_MIN = 64


class _Server(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        on_ready: Callable[[str], None] | None,
        on_shutdown: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self._on_ready = on_ready
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()  # before uvicorn waits for the connections' tasks to finish
        await super().shutdown(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # Everything loaded so far lives as long as the process. Frozen, the collector stops
        # walking it: a full collection stalls every request.
        gc.collect()
        gc.freeze()
        # A request's objects are freed by reference counting; at the default threshold the
        # collector runs hundreds of times a second under load for no garbage.
        gc.set_threshold(_GC_THRESHOLD, *gc.get_threshold()[1:])
        if self.started and self.servers:
            urls = []
            for server in self.servers:  # the main port's first, then server.ollama_port's
                host, port = server.sockets[0].getsockname()[:2]
                urls.append(f"http://{host}:{port}")
            logger.info("modelberth listening on {}", " and ".join(urls))
            if self._on_ready:
                self._on_ready(urls[0])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the limit in force. Running
    out of descriptors makes accept() fail for everyone, so the connection cap stays below
    it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open file limit from {}: {}", soft, exc)
    return soft


def connection_cap(server: ServerConfig, fd_limit: int) -> int:
    reserve = max(_FD_RESERVE_MIN, int(fd_limit * _FD_RESERVE_SHARE))
    ceiling = max(1, fd_limit - reserve)
    if server.max_connections is None:
        return ceiling
    if server.max_connections > ceiling:
        logger.warning(
            "server.max_connections {} is above what the open file limit ({}) allows; using {}",
            server.max_connections,
            fd_limit,
            ceiling,
        )
        return ceiling
    return server.max_connections


def serve(
    config: Config,
    *,
    config_path: Path | None = None,
    watch: bool = False,
    access_log: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    server_cfg = config.server
    if not _is_loopback(server_cfg.host) and not server_cfg.api_keys:
        logger.warning(
            "listening on {} with no api_keys: anyone who can reach this address "
            "can use and manage every model",
            server_cfg.host,
        )
    app = create_app(config, config_path, watch)
    limits = Limits(
        header_timeout=server_cfg.header_timeout,
        body_timeout=server_cfg.body_timeout,
        max_connections=connection_cap(server_cfg, raise_fd_limit()),
        rejected=app.metrics.rejected,
    )
    uv_config = uvicorn.Config(
        app,
        host=server_cfg.host,
        port=server_cfg.port,
        log_config=None,
        access_log=access_log,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=max(1, int(config.defaults.drain_timeout)),
        timeout_keep_alive=max(1, round(server_cfg.keepalive_timeout)),
        backlog=4096,
        proxy_headers=False,
        ws="none",
        # uvicorn calls `http` like a protocol class; the partial hands it the limits.
        http=cast(type[asyncio.Protocol], functools.partial(HttpProtocol, limits=limits)),
    )
    server = _Server(uv_config, on_ready, app.end_streams)
    if server_cfg.ollama_port is None or server_cfg.ollama_port == server_cfg.port:
        server.run()
    else:
        server.run(sockets=_bind(uv_config, [server_cfg.port, server_cfg.ollama_port]))


def _bind(config: uvicorn.Config, ports: list[int]) -> list[socket.socket]:
    """One listening socket per port (server.ollama_port serves the same app), each bound
    as uvicorn binds its own (address family, SO_REUSEADDR); uvicorn serves them all with
    the same protocol, limits and backlog."""
    main, sockets = config.port, []
    try:
        for port in ports:
            config.port = port
            sockets.append(config.bind_socket())
    finally:
        config.port = main
    return sockets
