"""Upstreams as local processes: own process group, death signal, output into a LogBuffer."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Callable, Mapping

import psutil
from loguru import logger

from modelberth.config import ModelSpec
from modelberth.runtimes.base import ExitStatus, Node, RuntimeStartError, Upstream
from modelberth.runtimes.logbuffer import LogBuffer, split_output

# Every upstream carries this variable; its value names the modelberth process that owns it,
# so a later run can find (and end) what a crashed or killed run left behind.
OWNER_ENV = "MODELBERTH_OWNER"
MODEL_ENV = "MODELBERTH_MODEL"
_PR_SET_PDEATHSIG = 1
_LINE_LIMIT = 1 << 20
_READ_SIZE = 1 << 16


def _owner_tag(pid: int) -> str:
    return f"{pid}:{psutil.Process(pid).create_time():.3f}"


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class ProcessUpstream:
    node: Node | None = None  # always this machine

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        model: str,
        logs: LogBuffer,
        gpus: tuple[int, ...] | None = None,
    ) -> None:
        self._proc = proc
        self.gpus = gpus
        self._model = model
        self._logs = logs
        self._exit: ExitStatus | None = None
        self._readers = [
            asyncio.create_task(self._pump(proc.stdout, "stdout")),
            asyncio.create_task(self._pump(proc.stderr, "stderr")),
        ]
        self._waiter = asyncio.create_task(self._reap())

    @property
    def runtime_id(self) -> str:
        return str(self._proc.pid)

    @property
    def pids(self) -> list[int]:
        try:
            leader = psutil.Process(self._proc.pid)
            return [leader.pid, *(child.pid for child in leader.children(recursive=True))]
        except psutil.Error:
            return []

    @property
    def memory_bytes(self) -> int | None:
        total = 0
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(pid).memory_info().rss
        return total or None

    def exited(self) -> ExitStatus | None:
        return self._exit

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._waiter)

    async def stop(self, timeout: float) -> ExitStatus:
        if self._exit is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._waiter), timeout)
            except TimeoutError:
                logger.warning(
                    "{}: no exit {}s after SIGTERM, sending SIGKILL", self._model, timeout
                )
        # Kill whatever the upstream itself spawned into its group, even after a clean exit.
        self._signal_group(signal.SIGKILL)
        status = await asyncio.shield(self._waiter)
        await self._drain_readers()
        return status

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def _reap(self) -> ExitStatus:
        code = await self._proc.wait()
        # Let the last output land in the buffer first: errors quote the log tail.
        await asyncio.wait(self._readers, timeout=1.0)
        self._exit = ExitStatus(None, -code) if code < 0 else ExitStatus(code)
        return self._exit

    async def _drain_readers(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._readers, return_exceptions=True), 1.0)
        for task in self._readers:
            task.cancel()

    async def _pump(self, stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        log = logger.bind(model=self._model, stream=name, upstream=True)
        pending = b""
        while True:
            data = await stream.read(_READ_SIZE)
            if not data:  # the end: what is left is a last line without its newline
                lines, pending = split_output(pending, b"\n" if pending else b"")
            else:
                lines, pending = split_output(pending, data)
                if len(pending) > _LINE_LIMIT:  # a line longer than the limit: in pieces
                    lines.append(pending.decode("utf-8", "replace"))
                    pending = b""
            for text in lines:
                self._logs.append(name, text)
                log.info("{}", text)
            if not data:
                return


class ProcessRuntime:
    name = "process"

    def __init__(self) -> None:
        self._owner = _owner_tag(os.getpid())
        self.error: str | None = None

    async def start(self, spec: ModelSpec, port: int, logs: LogBuffer) -> ProcessUpstream:
        argv = spec.argv(port)
        env = {**os.environ, **spec.environment(port), OWNER_ENV: self._owner, MODEL_ENV: spec.name}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=spec.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
                limit=_LINE_LIMIT,
            )
        except FileNotFoundError as exc:
            missing = argv[0] if exc.filename in (None, argv[0]) else exc.filename
            raise RuntimeStartError(f"executable or directory not found: {missing}") from None
        except PermissionError:
            raise RuntimeStartError(f"permission denied running {argv[0]}") from None
        except OSError as exc:
            raise RuntimeStartError(f"cannot run {argv[0]}: {exc.strerror}") from None
        logs.append("modelberth", f"started pid {proc.pid}: {' '.join(argv)}")
        return ProcessUpstream(proc, spec.name, logs, spec.devices)

    async def recover(
        self, specs: Mapping[str, ModelSpec], logs: Mapping[str, LogBuffer]
    ) -> dict[str, tuple[Upstream, int]]:
        """Processes are never adopted: whatever a dead modelberth left is ended."""
        await asyncio.to_thread(_kill_orphans, self._owner)
        return {}

    async def nodes(self) -> list[Node] | None:
        return None

    async def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def _orphans(own_tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            tag = proc.environ().get(OWNER_ENV)
        except (psutil.Error, OSError):
            continue
        if tag and tag != own_tag and _same_pid_namespace(proc.pid) and not _owner_alive(tag):
            found.append(proc)
    return found


def _same_pid_namespace(pid: int) -> bool:
    """A tag names its owner's pid as seen in the tagged process's own pid namespace: for a
    modelberth in a container, whose upstreams this machine sees too, that pid means nothing
    here, so only processes of our own namespace are judged (unknown: not judged)."""
    try:
        theirs, ours = os.stat(f"/proc/{pid}/ns/pid"), os.stat("/proc/self/ns/pid")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _owner_alive(tag: str) -> bool:
    pid, _, created = tag.partition(":")
    try:
        return _owner_tag(int(pid)).endswith(created)
    except (ValueError, psutil.Error):
        return False


def _kill_orphans(own_tag: str) -> list[str]:
    victims = _orphans(own_tag)
    removed = []
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            removed.append(f"pid {proc.pid} ({proc.environ().get(MODEL_ENV, '?')})")
            proc.terminate()
    _, alive = psutil.wait_procs(victims, timeout=3)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if removed:
        logger.warning(
            "removed {} upstream process(es) left by an earlier run: {}",
            len(removed),
            ", ".join(removed),
        )
    return removed
