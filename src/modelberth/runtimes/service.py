"""One upstream as a Docker Swarm service with one replica: its task watched until it ends,
its output followed through the manager's service logs, and its stop.

Swarm gives no blocking "wait" for a service, so a watcher reads the service's tasks about
once a second (in the runtime's thread pool, never on the event loop). The upstream has
exited when its task reached a final state (its exit code and Swarm's error go to the log),
when the service is gone, or when the node it runs on is down: Swarm would only say so once
its own heartbeat gives up, and modelberth's node listing sees it at the same time.

Stopping scales the service to 0 first, so Swarm stops the container with the service's
stop grace period and the task's final state gives the exit code; then the service is
removed. Nothing of the service is left after stop(), even when its node is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import docker.errors
import requests.exceptions
from docker.models.services import Service
from loguru import logger

from modelberth.runtimes import container_logs
from modelberth.runtimes.base import ExitStatus, Node, RuntimeStartError
from modelberth.runtimes.logbuffer import LogBuffer
from modelberth.runtimes.ownership import LABEL_GPUS

if TYPE_CHECKING:
    from modelberth.runtimes.docker import DockerRuntime

# A task in one of these states will not run (again): Swarm's own final states.
FINAL = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})
_POLL = 1.0


def latest_task(tasks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The service's current task: the one created last (a replica has one at a time)."""
    return max(tasks, key=lambda task: str(task.get("CreatedAt", "")), default=None)


def task_exit(task: dict[str, Any]) -> ExitStatus:
    status = task.get("Status", {})
    container = status.get("ContainerStatus") or {}
    code = container.get("ExitCode")
    if not container.get("ContainerID") or not isinstance(code, int):
        # It never ran (rejected: no such image, no room...): Swarm's word is all there is.
        return ExitStatus(None, reason=describe_task(task))
    return ExitStatus(code) if code < 128 or code == 255 else ExitStatus(None, code - 128)


def describe_task(task: dict[str, Any]) -> str:
    status = task.get("Status", {})
    text = f"task {str(task.get('ID', ''))[:12]} {status.get('State', '?')}"
    for key in ("Err", "Message"):
        if status.get(key):
            text += f": {status[key]}"
            break
    return text


class SwarmUpstream:
    def __init__(
        self,
        engine: DockerRuntime,
        service: Service,
        node: Node,
        model: str,
        logs: LogBuffer,
        node_ready: Callable[[str], bool],
        after: Mapping[str, int] | None = None,
    ) -> None:
        """`node_ready(node id)`: whether the runtime's last listing has the node ready.
        Output goes to `logs` from the service's start, or only what came after `after`."""
        self._engine = engine
        self._service = service
        self._node = node
        self._model = model
        self._logs = logs
        self._node_ready = node_ready
        self._exit: ExitStatus | None = None
        self._seen: str | None = None  # the last task state written to the log
        self.memory_bytes: int | None = None  # sampled by the runtime, through the node
        self.container_id: str | None = None  # the running task's, on its node's engine
        loop = asyncio.get_running_loop()
        self._stopping = threading.Event()
        self._log_threads = [
            threading.Thread(
                target=self._follow_logs,
                args=(loop, stream, (after or {}).get(stream)),
                name=f"{stream}-{model}",
                daemon=True,
            )
            for stream in ("stdout", "stderr")
        ]
        for thread in self._log_threads:
            thread.start()
        self._waiter = asyncio.ensure_future(self._watch())

    @property
    def runtime_id(self) -> str:
        return str(self._service.id)[:12]

    @property
    def service(self) -> Service:
        return self._service

    @property
    def node(self) -> Node:
        return self._node

    @property
    def pids(self) -> list[int]:
        return []  # not on this machine

    @property
    def gpus(self) -> tuple[int, ...] | None:
        label = str((self._service.attrs.get("Spec", {}).get("Labels") or {}).get(LABEL_GPUS, ""))
        return tuple(int(i) for i in label.split(",")) if label else None

    def exited(self) -> ExitStatus | None:
        return self._exit

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._waiter)

    async def tasks(self) -> list[dict[str, Any]]:
        client = await self._engine.client()
        found: list[dict[str, Any]] = await self._engine.call(
            lambda: client.api.tasks(  # type: ignore[no-untyped-call]
                filters={"service": self._service.id}
            )
        )
        return found

    async def _watch(self) -> ExitStatus:
        while True:
            try:
                status = await self._check()
            except (
                docker.errors.DockerException,
                requests.exceptions.RequestException,
                RuntimeStartError,
            ) as exc:
                logger.bind(model=self._model).warning(
                    "swarm: cannot read the tasks of {}: {}", self._service.name, exc
                )
                status = None
            if status is not None:
                self._exit = status
                self._stopping.set()
                return status
            await asyncio.sleep(_POLL)

    async def _check(self) -> ExitStatus | None:
        """The exit, once the service's task has ended, the service is gone or its node is
        down; None while it runs (or is still being scheduled)."""
        if not self._node_ready(self._node.id):
            lost = f"node {self._node.name} ({self._node.address}) is down or unavailable"
            self._logs.append("modelberth", f"{lost}: its upstream is lost")
            return ExitStatus(None, reason=lost)
        try:
            task = latest_task(await self.tasks())
        except docker.errors.NotFound:
            task = None
        if task is None:
            if await self._gone():
                gone = f"service {self._service.name} is gone"
                self._logs.append("modelberth", gone)
                return ExitStatus(None, reason=gone)
            return None
        state = str(task.get("Status", {}).get("State", ""))
        if state == "running":
            container = task["Status"].get("ContainerStatus") or {}
            self.container_id = container.get("ContainerID") or self.container_id
        if state != self._seen:
            self._seen = state
            if state not in (
                "new",
                "allocated",
                "pending",
                "assigned",
                "accepted",
                "preparing",
                "ready",
                "starting",
                "running",
            ):
                self._logs.append("modelberth", describe_task(task))
        if state in FINAL:
            # Let the last output land first: errors quote the log tail.
            await asyncio.to_thread(self._join_log_threads)
            return task_exit(task)
        return None

    async def _gone(self) -> bool:
        client = await self._engine.client()
        try:
            await self._engine.call(
                lambda: client.api.inspect_service(  # type: ignore[no-untyped-call]
                    self._service.id
                )
            )
            return False
        except docker.errors.NotFound:
            return True

    async def stop(self, timeout: float) -> ExitStatus:
        log = logger.bind(model=self._model)
        if self._exit is None:
            try:
                await self._engine.call(lambda: self._service.scale(0))
            except (docker.errors.DockerException, RuntimeStartError) as exc:
                log.warning("swarm: cannot scale {} to 0: {}", self._service.name, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._waiter), timeout + 5)
        self._waiter.cancel()
        with contextlib.suppress(docker.errors.NotFound, RuntimeStartError):
            await self._engine.call(self._service.remove)
        self._stopping.set()
        return self._exit or ExitStatus(None)

    def on_exit(self, callback: Callable[[], None]) -> None:
        self._waiter.add_done_callback(lambda _: callback())

    async def close(self) -> None:
        """Stop watching (modelberth is closing; the service itself is stop()'s)."""
        self._waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._waiter
        self._stopping.set()

    def _join_log_threads(self) -> None:
        for thread in self._log_threads:
            thread.join(1.0)

    def _follow_logs(self, loop: asyncio.AbstractEventLoop, stream: str, after: int | None) -> None:
        """Blocking: the service's output on one stream, until it is removed."""
        log = logger.bind(model=self._model, upstream=True, stream=stream)
        try:
            client = self._engine.connected()
            since = 0 if after is None else max(int(after / 1e9) - 1, 1)
            frames = client.api.service_logs(
                self._service.id,
                stdout=stream == "stdout",
                stderr=stream == "stderr",
                follow=True,
                timestamps=True,
                since=since,
            )
            for _, text in container_logs.lines(frames, after):
                loop.call_soon_threadsafe(self._logs.append, stream, text)
                log.info("{}", text)
                if self._stopping.is_set() and self._exit is not None:
                    break
        except (docker.errors.DockerException, requests.exceptions.RequestException, RuntimeError):
            pass  # the service is gone, or the loop is closed
