"""Request spans built and exported in a child process of their own.

The server hands each traced request over as one `RequestTrace` (handover.py); the event
loop encodes them 64 to a frame and writes each frame to the child's stdin as it fills,
without blocking. The child makes the SDK's spans of each frame as it arrives and exports
them with the official OTLP exporter the OTEL_* variables choose (exporters.py),
OTEL_BSP_MAX_EXPORT_BATCH_SIZE spans at a time, the rest when the server's batcher ends the
batch. Work spread frame by frame, rather than done for a whole batch at once, keeps the
child from taking a core in bursts that stall whatever shares it. The server's event loop
keeps only the encoding of plain values; the child runs wherever the OS puts it, at a lower
priority.

The child lives exactly as long as its stdin: it runs in a session of its own and ignores
SIGINT and SIGTERM (a service manager's stop reaches every process of the service, and the
server's last batch would be lost), and exports what it has and exits when the server closes
the pipe, also when the server dies. If the child exits early, the server logs it and starts
another on the next batch (at most one start every 5 s; batches meanwhile are dropped).

Frames on the pipe: a 4-byte little-endian length and a payload. The first frame is the
set-up (pickled: resource, scope, logging); then groups of RequestTraces
(`handover.encode_traces`); an empty frame ends a batch."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import IO

from loguru import logger
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from modelberth.telemetry.handover import RequestTrace, decode_traces, request_spans

_RESTART_AFTER = 5.0  # seconds between starts of the child
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux
# Signals are ignored before anything is imported (a stop during the slow imports would
# end the child). The child runs at a lower CPU priority: exporting spans must not take
# time from the proxy or from a model server computing on the CPU; when the machine is
# saturated, spans wait.
_CHILD = (
    "import os, signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); os.nice(10); "
    "from modelberth.telemetry.export import main; main()"
)
# The child's argv[1], so that tools (ps, the benchmarks) can tell it apart.
CHILD_NAME = "modelberth-span_export"


class TraceBatch:
    """The spans of requests, made as the requests are added, and exported `max_spans` at a
    time (OTEL_BSP_MAX_EXPORT_BATCH_SIZE, as for the SDK's processor)."""

    def __init__(
        self,
        exporter: SpanExporter,
        resource: Resource,
        scope: InstrumentationScope,
        new_span_id: Callable[[], int],
        max_spans: int | None = None,
    ) -> None:
        self._exporter, self._resource, self._scope = exporter, resource, scope
        self._new_span_id = new_span_id
        self._max = max_spans or int(os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") or 512)
        self._spans: list[ReadableSpan] = []

    def add(self, traces: Iterable[RequestTrace]) -> None:
        """Make these requests' spans; export every full batch of them."""
        resource, scope, new_span_id = self._resource, self._scope, self._new_span_id
        for trace in traces:
            self._spans += request_spans(trace, resource, scope, new_span_id)
        while len(self._spans) >= self._max:
            self._export()

    def export(self) -> SpanExportResult | None:
        """Export what is left (the server's batch ended), if anything."""
        result = None
        while self._spans:
            result = self._export()
        return result

    def _export(self) -> SpanExportResult:
        spans, self._spans = self._spans[: self._max], self._spans[self._max :]
        return self._exporter.export(spans)


class SpanExportProcess:
    """The server's side of the span export process: starts it and writes to its pipe
    without blocking, on the event loop (no thread to wake): encoded groups of requests as
    they fill (`send`), and the end of each batch (`end_batch`). What the pipe cannot take
    waits in a backlog for the next write; beyond `max_backlog` bytes, `send` refuses groups
    (the batcher counts them)."""

    def __init__(
        self,
        resource: Resource,
        scope: InstrumentationScope,
        log_format: str,
        log_level: str,
        restart_after: float = _RESTART_AFTER,
        max_backlog: int = 8 << 20,
    ) -> None:
        self._setup = pickle.dumps(
            (
                dict(resource.attributes),
                resource.schema_url,
                scope.name,
                scope.version,
                scope.schema_url,
                log_format,
                log_level,
            )
        )
        self._restart_after, self._max_backlog = restart_after, max_backlog
        self._child: subprocess.Popen[bytes] | None = None
        self._started_at = float("-inf")
        self._backlog = bytearray()  # written frames the pipe has not taken yet
        self._lock = threading.Lock()  # the loop's batches against close() on another thread
        self._closed = False
        self._start()

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def send(self, group: bytes) -> bool:
        """An encoded group of RequestTraces, for the child to make into spans now and
        export with the rest of their batch; False when it cannot be taken (the child is
        behind, or gone and not yet replaced)."""
        return self._put(_frame(group))

    def end_batch(self) -> bool:
        """The batch sent so far is complete: the child exports it."""
        return self._put(_frame(b""))

    def _put(self, frames: bytes) -> bool:
        with self._lock:
            child = None if self._closed else self._running()
            if child is None or len(self._backlog) + len(frames) > self._max_backlog:
                return False
            self._backlog += frames
            self._write(child)
            return True

    def close(self, timeout: float = 5.0) -> None:
        """Write what is left, close the pipe (the child exports what it has and exits) and
        wait for the child; a child that takes longer than `timeout` in all is killed."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True  # no child is started after this
            child, self._child = self._child, None
            if child is None:
                return
            self._write(child, deadline=deadline)
            self._backlog.clear()
            _close_pipe(child)
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("span export process did not finish in {} s: killed", timeout)
            child.kill()
            child.wait()

    def _write(self, child: subprocess.Popen[bytes], deadline: float | None = None) -> None:
        """Write the backlog as far as the pipe takes it now, or, given a deadline, until it
        is all written or the deadline has passed."""
        assert child.stdin is not None
        fd = child.stdin.fileno()
        try:
            while self._backlog:
                try:
                    written = os.write(fd, self._backlog)
                except BlockingIOError:
                    left = 0.0 if deadline is None else deadline - time.monotonic()
                    if left <= 0 or not select.select([], [fd], [], left)[1]:
                        return
                    continue
                del self._backlog[:written]
        except OSError:  # the child is gone: BrokenPipeError; it is replaced on the next batch
            self._backlog.clear()
            logger.warning(
                "span export process exited ({}): a batch of spans is lost", child.poll()
            )

    def _running(self) -> subprocess.Popen[bytes] | None:
        if self._child is not None and self._child.poll() is None:
            return self._child
        if self._child is not None:
            logger.warning("span export process exited ({})", self._child.returncode)
            _close_pipe(self._child)
            self._child = None
            self._backlog.clear()  # a frame cut in the middle would garble the next child's
        if time.monotonic() - self._started_at < self._restart_after:
            return None
        self._start()  # a fork and exec on the loop, at most once every restart_after seconds
        return self._child

    def _start(self) -> None:
        self._started_at = time.monotonic()
        try:
            child = subprocess.Popen(
                [sys.executable, "-c", _CHILD, CHILD_NAME],
                stdin=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            logger.error("cannot start the span export process: {}", exc)
            return
        assert child.stdin is not None
        with contextlib.suppress(OSError):  # a larger pipe: fewer batches wait in the backlog
            fcntl.fcntl(child.stdin.fileno(), _F_SETPIPE_SZ, 1 << 20)
        os.set_blocking(child.stdin.fileno(), False)
        self._child = child
        self._backlog += _frame(self._setup)
        self._write(child)


def _close_pipe(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        if child.stdin is not None:
            child.stdin.close()


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "little") + payload


def _read_frame(source: IO[bytes]) -> bytes | None:
    head = source.read(4)
    if len(head) < 4:
        return None
    size = int.from_bytes(head, "little")
    payload = source.read(size) if size else b""
    return payload if len(payload) == size else None


def main() -> None:
    """The child: read the set-up, then export batch by batch until stdin ends."""
    source = sys.stdin.buffer
    setup = _read_frame(source)
    if setup is None:
        return
    attributes, schema_url, name, version, scope_schema, log_format, log_level = pickle.loads(setup)
    from modelberth.telemetry.exporters import span_exporter
    from modelberth.telemetry.logs import setup_logging

    setup_logging(log_format, log_level)
    resource = Resource(attributes, schema_url)
    scope = InstrumentationScope(name, version, scope_schema)
    exporter = span_exporter()
    new_span_id = TracerProvider(shutdown_on_exit=False).id_generator.generate_span_id
    batch = TraceBatch(exporter, resource, scope, new_span_id)

    while (frame := _read_frame(source)) is not None:
        try:
            if frame:
                batch.add(decode_traces(frame))
            else:
                batch.export()
        except Exception as exc:  # the exporter logs its own failures; this would be a bug
            logger.error("span export failed: {}", exc)
    with contextlib.suppress(Exception):  # as above
        batch.export()
    exporter.shutdown()
