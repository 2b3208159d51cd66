"""The state table and its compare-and-set check (models/state.py)."""

from __future__ import annotations

import pytest

from modelberth.models.state import (
    IDLE,
    TRANSITIONS,
    InvalidTransition,
    ModelState,
    check_transition,
)

S = ModelState


def test_a_transition_from_the_expected_state_that_the_table_allows_passes() -> None:
    check_transition("m", S.STOPPED, S.STOPPED, S.STARTING, "start")
    check_transition("m", S.FAILED, IDLE, S.STARTING, "start")


def test_a_transition_decided_on_a_stale_state_fails() -> None:
    with pytest.raises(InvalidTransition, match="expected stopped, found ready"):
        check_transition("m", S.READY, S.STOPPED, S.STARTING, "start")
    with pytest.raises(InvalidTransition, match="found starting"):
        check_transition("m", S.STARTING, IDLE, S.STARTING, "start")


def test_a_transition_the_table_does_not_allow_fails_even_when_expected() -> None:
    with pytest.raises(InvalidTransition, match="ready -> stopped is not allowed"):
        check_transition("m", S.READY, S.READY, S.STOPPED, "skip stopping")


def test_retired_is_terminal_and_reached_only_from_a_state_without_an_upstream() -> None:
    assert TRANSITIONS[S.RETIRED] == frozenset()
    assert {old for old, targets in TRANSITIONS.items() if S.RETIRED in targets} == set(IDLE)
    assert set(TRANSITIONS) == set(ModelState)
