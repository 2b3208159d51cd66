"""Whether a model was retired, and how its waiters find out at once.

Retiring is decided in one synchronous step (Lifecycle.retire) and never undone.
Everything that waits on the model (a queued request, a start, a stop in progress) waits
through `wait`, so it gets ModelRetired the moment the model is retired, not when the stop
that follows has drained the requests in flight."""

from __future__ import annotations

import asyncio
from typing import Any

from modelberth.models.state import ModelRetired


class Retirement:
    __slots__ = ("_error", "_future")

    def __init__(self) -> None:
        self._error: ModelRetired | None = None
        # Made on first wait, not here: a Model may be built before the loop runs.
        self._future: asyncio.Future[None] | None = None

    @property
    def declared(self) -> bool:
        return self._error is not None

    def declare(self, error: ModelRetired) -> None:
        """Retire (once: Lifecycle.retire keeps the first reason); wakes every `wait` at once."""
        self._error = error
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    def check(self) -> None:
        """Raise the model's ModelRetired if it was retired."""
        if self._error is not None:
            raise self._error

    async def wait(self, future: asyncio.Future[Any]) -> None:
        """Wait for `future` without ever cancelling it; ModelRetired as soon as the model
        is retired, whichever comes first."""
        await asyncio.wait((future, self._declared()), return_when=asyncio.FIRST_COMPLETED)
        self.check()

    def _declared(self) -> asyncio.Future[None]:
        """A future done once the model is retired."""
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
            if self._error is not None:
                self._future.set_result(None)
        return self._future
