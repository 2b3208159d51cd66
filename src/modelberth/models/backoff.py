"""Crash back-off: after repeated failures a model waits before its next automatic start, so
a model that cannot start is not relaunched for every request that asks for it.

1 s after the second failure in a row, doubling up to a minute; a success (or a new
config) starts the count again. Starts asked for by hand do not wait (Model.start)."""

from __future__ import annotations

import time

from modelberth.errors import StartFailed

_BASE = 1.0
_MAX = 60.0


class Backoff:
    """One model's failures in a row; owned by its Lifecycle, the one caller of these
    methods."""

    __slots__ = ("_failed_at", "_failures")

    def __init__(self) -> None:
        self._failures = 0  # consecutive failed starts or crashes
        self._failed_at = 0.0  # monotonic: the wall clock can jump

    @property
    def failures(self) -> int:
        return self._failures

    def failed(self) -> None:
        self._failures += 1
        self._failed_at = time.monotonic()

    def reset(self) -> None:
        self._failures = 0

    def remaining(self) -> float:
        """Seconds until an automatic start may try again."""
        if self._failures < 2:
            return 0.0
        delay = min(_BASE * 2.0 ** (self._failures - 2), _MAX)
        return max(0.0, self._failed_at + delay - time.monotonic())

    def check(self, model: str, last_error: str | None) -> None:
        """Raise StartFailed (with a Retry-After) while the model must still wait."""
        wait = self.remaining()
        if wait > 0:
            first_line = last_error.splitlines()[0] if last_error else ""
            raise StartFailed(
                model,
                f"{self._failures} failures in a row, next try in {wait:.1f}s (last: {first_line})",
                retry_after=max(1, round(wait)),
            )
