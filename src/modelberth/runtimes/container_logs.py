"""A container's output as lines: Docker's timestamped log frames split into lines (at a
newline or a bare carriage return, see logbuffer.split_output), so that
an adopted container's earlier output is copied once and following resumes after it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import datetime

from modelberth.runtimes.logbuffer import split_output

BACKFILL_LINES = 200  # output of an adopted container copied into its model's log buffer
_TIMESTAMP = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) ")


def split_timestamp(frame: bytes) -> tuple[int | None, bytes]:
    """A log frame fetched with `timestamps=True`: (nanoseconds since the epoch, payload)."""
    match = _TIMESTAMP.match(frame)
    if match is None:
        return None, frame
    zone = match[3].decode()
    when = datetime.fromisoformat(match[1].decode() + ("+00:00" if zone == "Z" else zone))
    nanos = int((match[2] or b"").decode().ljust(9, "0"))
    return int(when.timestamp()) * 1_000_000_000 + nanos, frame[match.end() :]


def lines(frames: Iterable[bytes], after: int | None = None) -> Iterator[tuple[int, str]]:
    """Output lines (with the timestamp of the frame that ended them) from timestamped log
    frames; frames stamped at or before `after` are skipped (already seen)."""
    pending, stamp = b"", 0
    for frame in frames:
        when, payload = split_timestamp(frame)
        if when is not None:
            if after is not None and when <= after:
                continue
            stamp = when
        done, pending = split_output(pending, payload)
        for line in done:
            yield stamp, line
    if pending.rstrip(b"\r"):
        yield stamp, pending.rstrip(b"\r").decode("utf-8", "replace")
