"""Logging: loguru for everything (richuru on a terminal, JSON lines or plain text on
request), with standard-library loggers (uvicorn, aiohttp) routed into it, so there is one
stream. Used by the server and by the span export process."""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger

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

        handler = LoguruRichHandler(rich_tracebacks=True, tracebacks_show_locals=False,
                                    show_time=True, markup=False)
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


# --- OpenTelemetry: traces, metrics and logs over OTLP ------------------------------------
