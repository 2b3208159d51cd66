"""What the client raises: every failure is an UpstreamError, telling how far the request got
so that the caller can decide whether sending it again is safe."""

from __future__ import annotations


class UpstreamError(Exception):
    """The connection failed, or the upstream's answer was cut short or malformed.

    `answered`: some byte of the answer had arrived. `reused`: the request went out on a
    pooled connection. Neither set: the upstream may still have read the request."""

    def __init__(self, message: str, *, answered: bool = False, reused: bool = False) -> None:
        super().__init__(message)
        self.answered = answered
        self.reused = reused


class UpstreamUnreachable(UpstreamError):
    """Connecting failed: the request never reached the upstream."""


class UpstreamTimeout(UpstreamError):
    """The answer's head, or its next byte, did not arrive in time; the connection was
    aborted."""
