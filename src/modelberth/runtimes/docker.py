"""Upstreams as Docker containers through the Docker SDK: the runtime, which creates, adopts
and removes them. One started container, its exit and its output, is in container.py.

Every SDK call blocks, so none runs on the event loop: short calls go to a small thread pool,
and the two long ones per container (waiting for exit, following output) get a thread each.

Several modelberth instances may share one engine. Each owns only the containers labelled
with its instance id (`modelberth.instance`), named `modelberth-<instance>-<model>`: it
adopts or removes those and never touches another instance's. See `instance_id` for how the
id is chosen.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import DeviceRequest
from loguru import logger

from modelberth.config import ModelSpec, ServerConfig
from modelberth.runtimes import container_logs, engine
from modelberth.runtimes.base import Node, RuntimeStartError, Upstream
from modelberth.runtimes.container import DockerUpstream
from modelberth.runtimes.engine import explain
from modelberth.runtimes.logbuffer import LogBuffer
from modelberth.runtimes.ownership import (
    LABEL_CONFIG,
    LABEL_GPUS,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_MODEL,
    LABEL_PORT,
    container_name,
    instance_id,
)

T = TypeVar("T")
_STATS_INTERVAL = 5.0


class DaemonUnavailable(RuntimeStartError):
    pass


class DockerRuntime:
    name = "docker"

    def __init__(
        self, url: str | None = None, *, instance: str, node: Node | None = None, tls: bool = False
    ) -> None:
        """`instance` (see `instance_id`) names and labels the containers this runtime
        owns; it never adopts, removes or replaces a container of another instance. `node`:
        the host it is, as one of several engines (docker.hosts); None: this machine."""
        self._url = url
        self._tls = tls
        self.node = node
        self.instance = instance
        self._client: docker.DockerClient | None = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="docker")
        self.error: str | None = None  # why the daemon is unreachable, if it is
        self._sampled: dict[str, DockerUpstream] = {}
        self._sampler: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @staticmethod
    def instance_for(server: ServerConfig) -> str:
        """The instance id of the modelberth with these server settings: `instance_id`."""
        return instance_id(server)

    # --- plumbing ----------------------------------------------------------------------

    def _connect(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = engine.connect(self._url, tls=self._tls)
            except engine.EngineSetupError as exc:
                self.error = str(exc)
                raise DaemonUnavailable(self.error) from None
        return self._client

    def connected(self) -> docker.DockerClient:
        """Blocking: the client, connecting first if needed (for a thread of its own)."""
        return self._connect()

    async def call(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn)
        except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
            if engine.is_unreachable(exc):
                self._client = None
                self.error = f"Docker daemon unreachable ({self._url or 'DOCKER_HOST'}): {exc}"
                raise DaemonUnavailable(self.error) from None
            raise

    async def client(self) -> docker.DockerClient:
        try:
            client = await self.call(self._connect)
        except docker.errors.DockerException as exc:  # it cannot even be set up
            self.error = f"Docker engine {self._url or 'DOCKER_HOST'}: {exc}"
            raise DaemonUnavailable(self.error) from None
        if self.error is not None and (self._sweeper is None or self._sweeper.done()):
            # Back after being unreachable: stops made meanwhile could not remove their
            # containers.
            self._sweeper = asyncio.create_task(self._sweep(client))
        self.error = None
        return client

    async def _sweep(self, client: docker.DockerClient) -> None:
        """Remove this instance's exited containers that no upstream of this run holds."""
        own: dict[str, str | list[str] | bool] = {
            "label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={self.instance}"],
            "status": ["exited", "dead"],
        }
        with contextlib.suppress(docker.errors.DockerException, RuntimeStartError):
            held = {u.container.id for u in self._sampled.values() if u.exited() is None}
            for container in await self.call(lambda: client.containers.list(all=True, filters=own)):
                if container.id not in held:
                    logger.warning(
                        "docker: removing container {} ({}), left while the engine was unreachable",
                        container.name,
                        container.status,
                    )
                    await self.remove(container)

    async def nodes(self) -> list[Node] | None:
        return None

    async def healthy(self) -> bool:
        try:
            client = await self.client()
            await self.call(client.ping)
            return True
        except RuntimeStartError:
            return False

    def follow_logs(
        self, container: Container, stream: str, after: int | None = None
    ) -> Iterator[bytes]:
        """Blocking: the container's output on one stream in timestamped frames, from its
        start (or from a little before `after`, in ns since the epoch) until it exits."""
        assert self._client is not None
        # A second early (frames at or before `after` are dropped by the reader), so that
        # a since rounded in transit loses nothing.
        since = None if after is None else max(after / 1e9 - 1.0, 1.0)
        frames: Iterator[bytes] = self._client.api.logs(
            str(container.id),
            stdout=stream == "stdout",
            stderr=stream == "stderr",
            stream=True,
            follow=True,
            timestamps=True,
            since=since,
        )
        return frames

    def recent_output(
        self, container: Container, lines: int
    ) -> tuple[list[tuple[str, str]], dict[str, int]]:
        """Blocking: the container's last `lines` output lines as (stream, text) in order,
        and per stream the timestamp of the last one (where following should resume)."""
        assert self._client is not None
        merged: list[tuple[int, str, str]] = []
        last: dict[str, int] = {}
        for stream in ("stdout", "stderr"):
            frames: Iterator[bytes] = self._client.api.logs(
                str(container.id),
                stdout=stream == "stdout",
                stderr=stream == "stderr",
                stream=True,
                follow=False,
                timestamps=True,
                tail=lines,
            )
            for frame in frames:  # the resume point counts every frame, even a partial line
                when, _ = container_logs.split_timestamp(frame)
                if when is not None:
                    last[stream] = max(when, last.get(stream, 0))
                merged.extend(
                    (when or 0, stream, text) for _, text in container_logs.lines([frame])
                )
        merged.sort(key=lambda entry: entry[0])  # stable: a stream's own order is kept
        return [(stream, text) for _, stream, text in merged[-lines:]], last

    async def remove(self, container: Container) -> None:
        with contextlib.suppress(docker.errors.NotFound, RuntimeStartError):
            await self.call(lambda: container.remove(force=True, v=True))

    # --- Runtime protocol ----------------------------------------------------------------

    async def start(self, spec: ModelSpec, port: int, logs: LogBuffer) -> DockerUpstream:
        client = await self.client()
        image = await self._ensure_image(client, spec, logs)
        kwargs = self._create_args(spec, port, image)
        await self._remove_own_named(client, kwargs["name"])
        try:
            container = await self.call(lambda: client.containers.create(**kwargs))
        except docker.errors.APIError as exc:
            raise RuntimeStartError(f"cannot create container: {explain(exc)}") from None
        try:
            await self.call(container.start)
            await self.call(container.reload)
        except docker.errors.APIError as exc:
            await self.remove(container)
            raise RuntimeStartError(f"container did not start: {explain(exc)}") from None
        logs.append("modelberth", f"started container {container.short_id} ({image})")
        upstream = DockerUpstream(self, container, spec.name, logs)
        self._track(upstream)
        return upstream

    async def recover(
        self, specs: Mapping[str, ModelSpec], logs: Mapping[str, LogBuffer]
    ) -> dict[str, tuple[Upstream, int]]:
        """This instance's containers from an earlier run: keep those that match the config
        and are running (returned by model name, with their port), their recent output
        copied into the model's buffer in `logs`, which their output goes on into; remove
        every other one. Other instances' containers are not touched."""
        try:
            client = await self.client()
        except RuntimeStartError as exc:
            logger.warning("docker: {}", exc)
            return {}
        own: dict[str, str | list[str] | bool] = {
            "label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={self.instance}"]
        }
        found = await self.call(lambda: client.containers.list(all=True, filters=own))
        await self._warn_unowned(client)
        kept: dict[str, tuple[Upstream, int]] = {}
        for container in found:
            labels = container.labels
            spec = specs.get(labels.get(LABEL_MODEL, ""))
            port = labels.get(LABEL_PORT, "")
            if (
                spec is not None
                and spec.runtime == "docker"
                and spec.name not in kept
                and labels.get(LABEL_CONFIG) == spec.config_hash()
                and container.status == "running"
                and port.isdigit()
            ):
                buffer = logs.get(spec.name)
                if buffer is None:
                    buffer = LogBuffer()
                after = await self._backfill(container, buffer)
                adopted = DockerUpstream(self, container, spec.name, buffer, after)
                kept[spec.name] = (adopted, int(port))
                continue
            logger.warning(
                "docker: removing stale container {} ({}, {})",
                container.name,
                labels.get(LABEL_MODEL),
                container.status,
            )
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
            "name": container_name(self.instance, spec.name),
            "labels": {
                LABEL_MANAGED: "true",
                LABEL_INSTANCE: self.instance,
                LABEL_MODEL: spec.name,
                LABEL_CONFIG: spec.config_hash(),
                LABEL_PORT: str(port),
                **(
                    {LABEL_GPUS: ",".join(map(str, spec.devices))}
                    if spec.devices is not None
                    else {}
                ),
            },
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
            args["ports"] = {f"{inner_port}/tcp": (spec.address or "127.0.0.1", port)}
        if docker_spec.shm_size:
            args["shm_size"] = docker_spec.shm_size
        requests_ = device_requests(spec.devices if spec.devices is not None else spec.gpus)
        if requests_:
            args["device_requests"] = requests_
        return args

    async def _ensure_image(
        self, client: docker.DockerClient, spec: ModelSpec, logs: LogBuffer
    ) -> str:
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
                    f"image '{image}' is missing and could not be pulled: {explain(exc)}"
                ) from None
            logs.append("modelberth", f"pulled {image} in {time.monotonic() - began:.1f}s")
        return image

    async def _has_image(self, client: docker.DockerClient, image: str) -> bool:
        try:
            await self.call(lambda: client.images.get(image))
            return True
        except docker.errors.ImageNotFound:
            return False

    async def _remove_own_named(self, client: docker.DockerClient, name: str) -> None:
        """Clear the way for a new container named `name`: a leftover of this instance is
        removed; any other container with that name is an error, never removed."""
        try:
            old = await self.call(lambda: client.containers.get(name))
        except docker.errors.NotFound:
            return
        labels = old.labels or {}
        if labels.get(LABEL_MANAGED) != "true" or labels.get(LABEL_INSTANCE) != self.instance:
            owner = (
                f"modelberth instance '{labels[LABEL_INSTANCE]}'"
                if labels.get(LABEL_MANAGED) == "true" and labels.get(LABEL_INSTANCE)
                else "something else"
            )
            raise RuntimeStartError(
                f"container name '{name}' is taken by a container of {owner} "
                f"({old.short_id}, {old.status}); this is instance '{self.instance}': "
                "set server.instance_id to a unique value or remove that container"
            )
        logger.warning("docker: removing leftover container {} ({})", name, old.status)
        await self.remove(old)

    async def _backfill(self, container: Container, logs: LogBuffer) -> dict[str, int] | None:
        """Copy an adopted container's recent output into `logs`; return where following
        its output should resume (None: from its start, when that output is unavailable)."""
        try:
            lines, after = await self.call(
                lambda: self.recent_output(container, container_logs.BACKFILL_LINES)
            )
        except (
            docker.errors.DockerException,
            requests.exceptions.RequestException,
            RuntimeStartError,
        ) as exc:
            logger.warning("docker: cannot read the output of {}: {}", container.name, exc)
            return None
        for stream, text in lines:
            logs.append(stream, text)
        earlier = f": its last {len(lines)} output lines are above" if lines else ""
        logs.append("modelberth", f"container {container.short_id} was running already{earlier}")
        return after

    async def _warn_unowned(self, client: docker.DockerClient) -> None:
        """Containers of a modelberth from before instance ids are no one's: say so."""
        with contextlib.suppress(docker.errors.DockerException, RuntimeStartError):
            managed = await self.call(
                lambda: client.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=true"})
            )
            unowned = [str(c.name) for c in managed if LABEL_INSTANCE not in (c.labels or {})]
            if unowned:
                logger.warning(
                    "docker: containers without a {} label are left alone (an "
                    "older modelberth's?); remove them by hand: {}",
                    LABEL_INSTANCE,
                    ", ".join(unowned),
                )

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
        for task in (self._sampler, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._pool.shutdown(wait=False, cancel_futures=True)


def device_requests(gpus: str | tuple[int, ...] | None) -> list[DeviceRequest]:
    """`gpus: all` or a list of indices, as `docker run --gpus` turns them into requests."""
    if gpus is None or gpus == ():
        return []
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=[str(i) for i in gpus], capabilities=[["gpu"]])]
