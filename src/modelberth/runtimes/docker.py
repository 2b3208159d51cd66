"""Upstreams as Docker containers through the Docker SDK.

Every SDK call blocks, so none runs on the event loop: short calls go to a small thread pool,
and the two long ones per container (waiting for exit, following output) get a thread each.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import DeviceRequest
from loguru import logger

from modelberth.config import ModelSpec
from modelberth.logbuffer import LogBuffer
from modelberth.runtimes.base import ExitStatus, RuntimeStartError, Upstream

T = TypeVar("T")
LABEL_MANAGED = "modelberth.managed"
LABEL_MODEL = "modelberth.model"
LABEL_CONFIG = "modelberth.config"
LABEL_PORT = "modelberth.port"
_STATS_INTERVAL = 5.0


class DaemonUnavailable(RuntimeStartError):
    pass


def container_name(model: str) -> str:
    return f"modelberth-{model}"


def _in_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run a long blocking call in its own daemon thread; await its result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class DockerUpstream:
    def __init__(self, runtime: DockerRuntime, container: Container, model: str,
                 logs: LogBuffer) -> None:
        self._runtime = runtime
        self._container = container
        self._model = model
        self._logs = logs
        self._exit: ExitStatus | None = None
        self.memory_bytes: int | None = None  # sampled in the background by the runtime
        loop = asyncio.get_running_loop()
        self._log_threads = [
            threading.Thread(target=self._follow_logs, args=(loop, stream),
                             name=f"{stream}-{model}", daemon=True)
            for stream in ("stdout", "stderr")
        ]
        for thread in self._log_threads:
            thread.start()
        self._waiter = asyncio.ensure_future(self._reap())

    @property
    def runtime_id(self) -> str:
        return str(self._container.id)[:12]

    @property
    def container(self) -> Container:
        return self._container

    @property
    def pids(self) -> list[int]:
        try:
            state = self._container.attrs.get("State", {})
            pid = int(state.get("Pid") or 0)
        except (TypeError, ValueError):
            return []
        return [pid] if pid else []

    def exited(self) -> ExitStatus | None:
        return self._exit

    def sample_memory(self) -> int | None:
        """Blocking (about a second): the container's memory use from `docker stats`."""
        stats = cast(dict[str, Any], self._container.stats(stream=False))
        usage = int(stats.get("memory_stats", {}).get("usage", 0))
        return usage or None

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._waiter)

    async def stop(self, timeout: float) -> ExitStatus:
        if self._exit is None:
            await self._runtime.call(lambda: self._container.stop(timeout=max(1, int(timeout))))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._waiter), timeout + 5)
        await self._runtime.remove(self._container)
        return self._exit or ExitStatus(None)

    async def _reap(self) -> ExitStatus:
        try:
            result = await _in_thread(self._container.wait, f"wait-{self._model}")
            code = int(result.get("StatusCode", -1))
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            self._logs.append("modelberth", f"lost track of the container: {exc}")
            code = -1
        # Let the last output land in the buffer first: errors quote the log tail.
        await _in_thread(self._join_log_threads, "join-logs")
        self._exit = ExitStatus(code) if code < 128 or code == 255 else ExitStatus(
            None, code - 128)
        return self._exit

    def _join_log_threads(self) -> None:
        for thread in self._log_threads:
            thread.join(2.0)

    def _follow_logs(self, loop: asyncio.AbstractEventLoop, stream: str) -> None:
        log = logger.bind(model=self._model, upstream=True, stream=stream)
        pending = b""

        def emit(raw: bytes) -> None:
            text = raw.decode("utf-8", "replace").rstrip("\r")
            loop.call_soon_threadsafe(self._logs.append, stream, text)
            log.info("{}", text)

        try:
            for chunk in self._runtime.follow_logs(self._container, stream):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    emit(line)
            if pending:
                emit(pending)
        except (docker.errors.DockerException, requests.exceptions.RequestException,
                RuntimeError):
            pass  # the container is gone, or the loop is closed


class DockerRuntime:
    name = "docker"

    def __init__(self, url: str | None = None) -> None:
        self._url = url
        self._client: docker.DockerClient | None = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="docker")
        self.error: str | None = None  # why the daemon is unreachable, if it is
        self._sampled: dict[str, DockerUpstream] = {}
        self._sampler: asyncio.Task[None] | None = None

    # --- plumbing ----------------------------------------------------------------------

    def _connect(self) -> docker.DockerClient:
        if self._client is None:
            kwargs: dict[str, Any] = {"timeout": 30}
            client = (docker.DockerClient(base_url=self._url, **kwargs) if self._url
                      else docker.from_env(**kwargs))
            client.ping()
            self._client = client
        return self._client

    async def call(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn)
        except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
            if _is_unreachable(exc):
                self._client = None
                self.error = f"Docker daemon unreachable ({self._url or 'DOCKER_HOST'}): {exc}"
                raise DaemonUnavailable(self.error) from None
            raise

    async def client(self) -> docker.DockerClient:
        client = await self.call(self._connect)
        self.error = None
        return client

    async def healthy(self) -> bool:
        try:
            client = await self.client()
            await self.call(client.ping)
            return True
        except RuntimeStartError:
            return False

    def follow_logs(self, container: Container, stream: str) -> Iterator[bytes]:
        """Blocking: the container's output on one stream, from its start until it exits."""
        assert self._client is not None
        chunks: Iterator[bytes] = self._client.api.logs(
            str(container.id), stdout=stream == "stdout", stderr=stream == "stderr",
            stream=True, follow=True)
        return chunks

    async def remove(self, container: Container) -> None:
        with contextlib.suppress(docker.errors.NotFound, RuntimeStartError):
            await self.call(lambda: container.remove(force=True, v=True))

    # --- Runtime protocol ----------------------------------------------------------------

    async def start(self, spec: ModelSpec, port: int, logs: LogBuffer) -> DockerUpstream:
        client = await self.client()
        image = await self._ensure_image(client, spec, logs)
        kwargs = self._create_args(spec, port, image)
        await self._remove_named(client, kwargs["name"])
        try:
            container = await self.call(lambda: client.containers.create(**kwargs))
        except docker.errors.APIError as exc:
            raise RuntimeStartError(f"cannot create container: {_explain(exc)}") from None
        try:
            await self.call(container.start)
            await self.call(container.reload)
        except docker.errors.APIError as exc:
            await self.remove(container)
            raise RuntimeStartError(f"container did not start: {_explain(exc)}") from None
        logs.append("modelberth", f"started container {container.short_id} ({image})")
        upstream = DockerUpstream(self, container, spec.name, logs)
        self._track(upstream)
        return upstream

    async def recover(self, specs: Mapping[str, ModelSpec]) -> dict[str, tuple[Upstream, int]]:
        """Labelled containers from an earlier run: keep those that match the config and
        are running (returned by model name, with their port); remove every other one."""
        try:
            client = await self.client()
        except RuntimeStartError as exc:
            logger.warning("docker: {}", exc)
            return {}
        found = await self.call(lambda: client.containers.list(
            all=True, filters={"label": f"{LABEL_MANAGED}=true"}))
        kept: dict[str, tuple[Upstream, int]] = {}
        for container in found:
            labels = container.labels
            spec = specs.get(labels.get(LABEL_MODEL, ""))
            port = labels.get(LABEL_PORT, "")
            if (spec is not None and spec.runtime == "docker" and spec.name not in kept
                    and labels.get(LABEL_CONFIG) == spec.config_hash()
                    and container.status == "running" and port.isdigit()):
                logs = LogBuffer()
                kept[spec.name] = (DockerUpstream(self, container, spec.name, logs), int(port))
                continue
            logger.warning("docker: removing stale container {} ({}, {})", container.name,
                           labels.get(LABEL_MODEL), container.status)
            await self.remove(container)
        for upstream, _ in kept.values():
            assert isinstance(upstream, DockerUpstream)
            self._track(upstream)
        return kept

    # --- helpers -----------------------------------------------------------------------

    def _create_args(self, spec: ModelSpec, port: int, image: str) -> dict[str, Any]:
        docker_spec = spec.docker
        assert docker_spec is not None
        inner_port = port
        if docker_spec.network == "bridge" and docker_spec.container_port is not None:
            inner_port = docker_spec.container_port
        args: dict[str, Any] = {
            "image": image,
            "command": spec.argv(inner_port) or None,
            "name": container_name(spec.name),
            "labels": {LABEL_MANAGED: "true", LABEL_MODEL: spec.name,
                       LABEL_CONFIG: spec.config_hash(), LABEL_PORT: str(port)},
            "environment": spec.environment(inner_port),
            "volumes": list(docker_spec.volumes),
            "init": True,
            "detach": True,
            "stdin_open": False,
            "tty": False,
        }
        if docker_spec.entrypoint is not None:
            args["entrypoint"] = list(docker_spec.entrypoint)
        if docker_spec.network == "host":
            args["network_mode"] = "host"
        else:
            args["network_mode"] = "bridge"
            args["ports"] = {f"{inner_port}/tcp": ("127.0.0.1", port)}
        if docker_spec.shm_size:
            args["shm_size"] = docker_spec.shm_size
        requests_ = device_requests(spec.gpus)
        if requests_:
            args["device_requests"] = requests_
        return args

    async def _ensure_image(self, client: docker.DockerClient, spec: ModelSpec,
                            logs: LogBuffer) -> str:
        docker_spec = spec.docker
        assert docker_spec is not None
        image, policy = docker_spec.image, docker_spec.pull
        present = await self._has_image(client, image)
        if policy == "never" and not present:
            raise RuntimeStartError(f"image '{image}' is not present locally (pull: never)")
        if policy == "always" or not present:
            logs.append("modelberth", f"pulling image {image}")
            began = time.monotonic()
            try:
                await self.call(lambda: client.images.pull(image))
            except docker.errors.APIError as exc:
                if present:
                    logs.append("modelberth", f"pull failed, using the local image: {exc}")
                    return image
                raise RuntimeStartError(
                    f"image '{image}' is missing and could not be pulled: {_explain(exc)}"
                ) from None
            logs.append("modelberth", f"pulled {image} in {time.monotonic() - began:.1f}s")
        return image

    async def _has_image(self, client: docker.DockerClient, image: str) -> bool:
        try:
            await self.call(lambda: client.images.get(image))
            return True
        except docker.errors.ImageNotFound:
            return False

    async def _remove_named(self, client: docker.DockerClient, name: str) -> None:
        try:
            old = await self.call(lambda: client.containers.get(name))
        except docker.errors.NotFound:
            return
        logger.warning("docker: removing leftover container {} ({})", name, old.status)
        await self.remove(old)

    # --- memory sampling (never on a request path) ----------------------------------------

    def _track(self, upstream: DockerUpstream) -> None:
        self._sampled[upstream.runtime_id] = upstream
        if self._sampler is None or self._sampler.done():
            self._sampler = asyncio.create_task(self._sample_forever())

    async def _sample_forever(self) -> None:
        while self._sampled:
            for key, upstream in list(self._sampled.items()):
                if upstream.exited() is not None:
                    self._sampled.pop(key, None)
                    continue
                with contextlib.suppress(Exception):
                    upstream.memory_bytes = await self.call(upstream.sample_memory)
            await asyncio.sleep(_STATS_INTERVAL)

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


def device_requests(gpus: str | tuple[int, ...] | None) -> list[DeviceRequest]:
    """`gpus: all` or a list of indices, as `docker run --gpus` turns them into requests."""
    if gpus is None or gpus == ():
        return []
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=[str(i) for i in gpus], capabilities=[["gpu"]])]


def _is_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, requests.exceptions.ConnectionError):
        return True
    text = str(exc)
    return isinstance(exc, docker.errors.DockerException) and (
        "Error while fetching server API version" in text or "Connection refused" in text
        or "No such file or directory" in text)


def _explain(exc: docker.errors.APIError) -> str:
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    return str(explanation or exc)
