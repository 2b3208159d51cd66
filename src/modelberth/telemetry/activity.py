"""The last N proxied requests, kept in memory for `GET /api/requests` and the dashboard.

Each finished request leaves one small record (ids count up, the oldest falls out of the
ring). Bodies are kept only when `activity.capture_bodies` is on (off by default: prompts
and answers are the users' data), each cut at `activity.capture_kb`, so the ring holds at
most `size` x 2 x `capture_kb` of them. A record is also streamed as a `request` event on
/api/events, but only while someone listens."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from modelberth.models.events import EventBus


class Capture:
    """A body cut at `limit` bytes; the answer is fed piece by piece as it streams past."""

    __slots__ = ("data", "limit", "truncated")

    def __init__(self, limit: int, data: bytes = b"") -> None:
        self.limit = limit
        self.data = bytearray(data[:limit])
        self.truncated = len(data) > limit

    def feed(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room >= len(chunk):
            self.data += chunk
            return
        if room > 0:
            self.data += chunk[:room]
        self.truncated = True

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


class RequestRecord:
    """One finished request, as the activity table shows it."""

    __slots__ = (
        "answer",
        "at",
        "cold",
        "duration",
        "error",
        "id",
        "input_tokens",
        "method",
        "model",
        "output_tokens",
        "queue_seconds",
        "request",
        "requested",
        "route",
        "status",
        "streamed",
        "tokens_per_second",
        "ttft",
    )

    def __init__(
        self,
        at: float,
        model: str,
        requested: str,
        method: str,
        route: str,
        status: int,
        error: str | None,
        queue_seconds: float,
        cold: bool,
        ttft: float | None,
        input_tokens: int | None,
        output_tokens: int | None,
        tokens_per_second: float | None,
        duration: float,
        streamed: bool,
        request: Capture | None = None,
        answer: Capture | None = None,
    ) -> None:
        self.id = 0  # given by Activity.add
        self.at, self.model, self.requested, self.method = at, model, requested, method
        self.route, self.status, self.error = route, status, error
        self.queue_seconds, self.cold, self.ttft = queue_seconds, cold, ttft
        self.input_tokens, self.output_tokens = input_tokens, output_tokens
        self.tokens_per_second, self.duration, self.streamed = tokens_per_second, duration, streamed
        self.request, self.answer = request, answer

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": round(self.at, 3),
            "model": self.model,
            "requested": self.requested,
            "method": self.method,
            "route": self.route,
            "status": self.status,
            "error": self.error,
            "queue_seconds": round(self.queue_seconds, 4),
            "cold": self.cold,
            "ttft_seconds": None if self.ttft is None else round(self.ttft, 4),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "tokens_per_second": None
            if self.tokens_per_second is None
            else round(self.tokens_per_second, 2),
            "duration_seconds": round(self.duration, 4),
            "streamed": self.streamed,
        }

    def detail(self) -> dict[str, Any]:
        request, answer = self.request, self.answer
        return {
            **self.as_dict(),
            "request_body": request.text() if request else None,
            "request_truncated": bool(request and request.truncated),
            "response_body": answer.text() if answer else None,
            "response_truncated": bool(answer and answer.truncated),
        }


class Activity:
    """The ring of the last `size` requests. Owned by the app; the proxy adds to it, the
    API reads it. A reload may resize it or switch capturing on or off."""

    def __init__(
        self, events: EventBus, size: int = 500, capture_bodies: bool = False, capture_kb: int = 64
    ) -> None:
        self._events = events
        self._records: deque[RequestRecord] = deque(maxlen=size)
        self._next_id = 1
        self.capture_bodies = capture_bodies
        self.capture_bytes = capture_kb * 1024

    @property
    def total(self) -> int:
        """Requests recorded since the start (also those fallen out of the ring)."""
        return self._next_id - 1

    @property
    def size(self) -> int:
        return self._records.maxlen or 0

    def configure(self, size: int, capture_bodies: bool, capture_kb: int) -> None:
        if size != self.size:
            self._records = deque(self._records, maxlen=size)
        if not capture_bodies:  # switched off: what was captured goes too
            for record in self._records:
                record.request = record.answer = None
        self.capture_bodies = capture_bodies
        self.capture_bytes = capture_kb * 1024

    def capture(self, body: bytes = b"") -> Capture | None:
        """A capture for a request's body or its answer, or None when capturing is off."""
        return Capture(self.capture_bytes, body) if self.capture_bodies else None

    def add(self, record: RequestRecord) -> None:
        record.id = self._next_id
        self._next_id += 1
        self._records.append(record)
        if self._events.has_subscribers:
            detail = record.as_dict()
            del detail["model"]  # the event's own field
            self._events.notify("request", record.model, **detail)

    def get(self, record_id: int) -> RequestRecord | None:
        records = self._records
        if not records:
            return None
        index = record_id - records[0].id  # ids count up by one along the ring
        if 0 <= index < len(records) and records[index].id == record_id:
            return records[index]
        return None

    def newest(
        self, model: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[RequestRecord]:
        """Newest first; `status` is "ok" (below 400), "error" (400 and above) or a code."""
        found = []
        for record in self._iter_newest():
            if model and model not in (record.model, record.requested):
                continue
            if status and not _status_matches(record.status, status):
                continue
            found.append(record)
            if len(found) >= limit:
                break
        return found

    def _iter_newest(self) -> Iterator[RequestRecord]:
        return reversed(self._records)


def _status_matches(status: int, wanted: str) -> bool:
    if wanted == "ok":
        return status < 400
    if wanted == "error":
        return status >= 400
    return str(status) == wanted
