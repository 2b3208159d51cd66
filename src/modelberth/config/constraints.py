"""TEMPORARY shim until the constraints module lands (replaced in this session)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Constraint:
    key: str
    operator: str
    value: str

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return (attributes.get(self.key) == self.value) == (self.operator == "==")


def parse(expression: str) -> Constraint:
    for op in ("==", "!="):
        if op in expression:
            key, value = expression.split(op, 1)
            return Constraint(key.strip(), op, value.strip())
    raise ValueError(f"bad constraint {expression!r}")


def matches_all(constraints: Iterable[Constraint], attributes: Mapping[str, str]) -> bool:
    return all(c.matches(attributes) for c in constraints)
