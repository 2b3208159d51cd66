"""A model's states and the events its transitions publish."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from modelberth.errors import APIError


class ModelState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    # vLLM's sleep mode (models with `sleep`): the upstream lives on, its VRAM given back.
    SLEEPING = "sleeping"
    WAKING = "waking"  # taking its VRAM again: requests wait, as for a start
    STOPPING = "stopping"
    FAILED = "failed"
    RETIRED = "retired"  # removed from the config or stopped by shutdown: never starts again


class RetireReason(enum.StrEnum):
    """Why a model was retired; also the reason its last state changes carry."""

    REMOVED = "removed from config"
    SHUTDOWN = "shutdown"


S = ModelState
TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    S.STOPPED: frozenset({S.STARTING, S.RETIRED}),
    S.STARTING: frozenset({S.READY, S.FAILED, S.STOPPING}),
    S.READY: frozenset({S.STOPPING, S.FAILED, S.SLEEPING}),
    S.SLEEPING: frozenset({S.WAKING, S.STOPPING, S.FAILED}),
    # Back to SLEEPING only when the scheduler found no room: nothing was woken yet.
    S.WAKING: frozenset({S.READY, S.SLEEPING, S.STOPPING, S.FAILED}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.FAILED: frozenset({S.STARTING, S.STOPPED, S.RETIRED}),
    S.RETIRED: frozenset(),
}
# The states a model holds no upstream in.
IDLE = frozenset({S.STOPPED, S.FAILED})
# Asleep, or waking: the upstream is kept, requests wait for the wake.
WARM = frozenset({S.SLEEPING, S.WAKING})


class InvalidTransition(RuntimeError):
    """A transition not in the table, or from a state the model is no longer in."""


def check_transition(
    name: str,
    current: ModelState,
    expected: ModelState | frozenset[ModelState],
    new: ModelState,
    reason: str,
) -> None:
    """Compare and set, the comparing half: `current` must be what the caller expected
    (so a change decided on a stale view of the state fails loudly instead of applying) and
    the table must allow `current -> new`."""
    stale = current is not expected if isinstance(expected, ModelState) else current not in expected
    if stale:
        raise InvalidTransition(
            f"{name}: expected {expected}, found {current} (-> {new}, {reason})"
        )
    if new not in TRANSITIONS[current]:
        raise InvalidTransition(f"{name}: {current} -> {new} is not allowed ({reason})")


@dataclass(frozen=True, slots=True)
class StateEvent:
    """One state transition of one model; logs, metrics and /api/events feed on these."""

    model: str
    old: ModelState
    new: ModelState
    reason: str
    at: float = field(default_factory=time.time)
    detail: dict[str, Any] = field(default_factory=dict)

    kind = "state"

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": "state",
            "model": self.model,
            "from": self.old.value,
            "to": self.new.value,
            "reason": self.reason,
            "at": self.at,
            **self.detail,
        }


@dataclass(frozen=True, slots=True)
class Notice:
    """Anything else worth streaming on /api/events: an eviction, a start's progress."""

    kind: str
    model: str
    at: float = field(default_factory=time.time)
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "model": self.model, "at": self.at, **self.detail}


class ModelRetired(APIError):
    """What everyone still waiting on a retired model gets (a request queued for it, a start
    asked for by hand...): 404 if it was removed from the config, 503 during shutdown."""

    def __init__(self, model: str, reason: RetireReason) -> None:
        if reason is RetireReason.REMOVED:
            super().__init__(
                404, f"Model '{model}' was removed from the config.", code="model_not_found"
            )
        else:
            super().__init__(
                503, "modelberth is shutting down.", type="server_error", code="shutting_down"
            )
        self.model = model
        self.reason = reason
