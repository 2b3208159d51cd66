"""Logging: loguru for everything (richuru on a terminal, JSON lines or plain text on
request), with standard-library loggers (uvicorn, aiohttp) routed into it, so there is one
stream. Used by the server and by the span export process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger

from modelberth.runtimes.logbuffer import LogBuffer

if TYPE_CHECKING:
    from loguru import Message, Record


_PLAIN = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {extra[_tag]}{message}"

LogFormat = Literal["auto", "rich", "json", "plain"]


class _ToLoguru(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def _json_sink(message: Message) -> None:
    record = message.record
    line: dict[str, Any] = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
        "logger": record["name"],
    }
    line.update({k: v for k, v in record["extra"].items() if isinstance(v, str | int | float)})
    if record["exception"] is not None:
        line["exception"] = repr(record["exception"].value)
    sys.stderr.write(json.dumps(line) + "\n")


CURRENT = {"format": "plain", "level": "INFO"}  # as last set up, for child processes


def setup_logging(fmt: LogFormat = "auto", level: str = "INFO") -> None:
    if fmt == "auto":
        fmt = "rich" if sys.stderr.isatty() else "plain"
    CURRENT.update(format=fmt, level=level)
    logger.remove()
    if fmt == "json":
        logger.add(_json_sink, level=level, format="{message}")
    elif fmt == "rich":
        from richuru import LoguruRichHandler

        handler = LoguruRichHandler(
            rich_tracebacks=True, tracebacks_show_locals=False, show_time=True, markup=False
        )
        logger.add(handler, level=level, format="{extra[_tag]}{message}", filter=_add_tag)
    else:
        logger.add(sys.stderr, level=level, format=_PLAIN, filter=_add_tag)
    logging.basicConfig(handlers=[_ToLoguru()], level=logging.INFO, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True


def _add_tag(record: Record) -> bool:
    extra = record["extra"]
    model = extra.get("model")
    if extra.get("upstream"):
        extra["_tag"] = f"[{model}:{extra.get('stream', 'out')}] "
    else:
        extra["_tag"] = f"[{model}] " if model else ""
    return True


class ServerLog:
    """modelberth's own recent log lines, for GET /api/logs and the dashboard: a loguru sink
    into a ring buffer. Lines logged off the event loop's thread (the Docker log threads, the
    SDK's exporters) reach the buffer through the loop, whose followers it wakes."""

    def __init__(self, max_lines: int = 2000) -> None:
        self.buffer = LogBuffer(max_lines)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._sink_id: int | None = None

    def attach(self) -> None:
        """Start collecting (on the event loop, which appends every line)."""
        if self._sink_id is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._sink_id = logger.add(
            self._sink,
            level=CURRENT["level"],
            format="{extra[_tag]}{message}",
            filter=_add_tag,
            colorize=False,
        )

    def detach(self) -> None:
        if self._sink_id is not None:
            logger.remove(self._sink_id)
            self._sink_id = None

    def _sink(self, message: Message) -> None:
        level, text = message.record["level"].name, str(message).rstrip("\n")
        if threading.get_ident() == self._thread:
            self.buffer.append(level, text)
        elif self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody follows
                self._loop.call_soon_threadsafe(self.buffer.append, level, text)
