"""Background tasks: how their outcome is marked as seen.

Every task a model creates has an owner that cancels or awaits it; this is only for the
ones nobody may be awaiting (a start asked for by hand, a start begun by a request that
has gone), whose exception would otherwise be logged as never retrieved."""

from __future__ import annotations

import asyncio
from typing import Any


def swallow_outcome(task: asyncio.Task[Any]) -> None:
    """Mark a background task's outcome as seen; its waiters (if any) get the error."""
    if not task.cancelled():
        task.exception()
