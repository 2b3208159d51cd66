"""One upstream in a Docker container: its exit, awaited in a thread of its own, and its
output, followed in a thread per stream into the model's log buffer and the log.

Every SDK call blocks, so none runs on the event loop: short ones go to the runtime's thread
pool (`DockerRuntime.call`), and these long ones get a daemon thread each (`_in_thread`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

import docker.errors
import requests.exceptions
from docker.models.containers import Container
from loguru import logger

from modelberth.runtimes import container_logs, engine
from modelberth.runtimes.base import ExitStatus, Node
from modelberth.runtimes.logbuffer import LogBuffer
from modelberth.runtimes.ownership import LABEL_GPUS

if TYPE_CHECKING:
    # Only for annotations: the runtime builds these upstreams, so it imports this module.
    from modelberth.runtimes.docker import DockerRuntime

T = TypeVar("T")


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
    def __init__(
        self,
        runtime: DockerRuntime,
        container: Container,
        model: str,
        logs: LogBuffer,
        after: Mapping[str, int] | None = None,
    ) -> None:
        """Output goes to `logs` from the container's start, or for an adopted container
        only what came after `after` (per stream, the last timestamp already in `logs`)."""
        self._runtime = runtime
        self._container = container
        self._model = model
        self._logs = logs
        self._exit: ExitStatus | None = None
        self.memory_bytes: int | None = None  # sampled in the background by the runtime
        loop = asyncio.get_running_loop()
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
        self._waiter = asyncio.ensure_future(self._reap())

    @property
    def runtime_id(self) -> str:
        return str(self._container.id)[:12]

    @property
    def container(self) -> Container:
        return self._container

    @property
    def gpus(self) -> tuple[int, ...] | None:
        label = str((self._container.labels or {}).get(LABEL_GPUS, ""))
        return tuple(int(i) for i in label.split(",")) if label else None

    @property
    def node(self) -> Node | None:
        return self._runtime.node

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
        """Blocking: the container's memory use from `docker stats`."""
        assert self._container.client is not None
        return engine.memory_in_use(self._container.client, str(self._container.id))

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
        self._exit = ExitStatus(code) if code < 128 or code == 255 else ExitStatus(None, code - 128)
        return self._exit

    def _join_log_threads(self) -> None:
        for thread in self._log_threads:
            thread.join(2.0)

    def _follow_logs(self, loop: asyncio.AbstractEventLoop, stream: str, after: int | None) -> None:
        log = logger.bind(model=self._model, upstream=True, stream=stream)
        try:
            frames = self._runtime.follow_logs(self._container, stream, after)
            for _, text in container_logs.lines(frames, after):
                loop.call_soon_threadsafe(self._logs.append, stream, text)
                log.info("{}", text)
        except (docker.errors.DockerException, requests.exceptions.RequestException, RuntimeError):
            pass  # the container is gone, or the loop is closed
