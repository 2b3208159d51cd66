"""Placement constraints as Docker Swarm writes them (`node.labels.zone==a`), parsed when the
config loads and matched by the scheduler against each node's attributes; a Swarm service
also gets them, so Swarm agrees.

The rules follow swarmkit's own parser and matcher (manager/constraint/constraint.go):
- one operator per expression, `==` or `!=`, with the key on its left and the value on its
  right, spaces around either trimmed;
- a key starts with a letter or `_` and holds letters, digits, `-`, `_`, `.`; a value holds no
  operator characters (`<`, `>`, `~`, `=`, `!`...);
- values compare case-insensitively; a label's *name* is case sensitive;
- a label the node does not have has the empty value: `node.labels.gpu!=yes` holds there,
  `node.labels.gpu==yes` does not.

>>> parse(" node.labels.zone == A ").matches({"node.labels.zone": "a"})
True
>>> parse("node.labels.gpu!=yes").matches({})
True
>>> str(parse("node.role==manager"))
'node.role==manager'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

KEYS = ("node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch")
PREFIXES = ("node.labels.", "engine.labels.")
_KEY = re.compile(r"^[a-z_][a-z0-9\-_.]+$", re.IGNORECASE)
_VALUE = re.compile(r"^[a-z0-9:\-_\s.*()?+\[\]\\^$|/]+$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Constraint:
    key: str  # as written: a label name keeps its case
    operator: str  # "==" or "!="
    value: str

    def matches(self, attributes: Mapping[str, str]) -> bool:
        """Whether a node with these attributes (see Node.attributes) satisfies it."""
        found = attributes.get(_canonical(self.key), "")
        same = found.casefold() == self.value.casefold()
        return same if self.operator == "==" else not same

    def __str__(self) -> str:
        return f"{self.key}{self.operator}{self.value}"


def parse(expression: str) -> Constraint:
    """One expression; ValueError saying what is wrong."""
    for operator in ("==", "!="):
        if operator in expression:
            key, value = (part.strip() for part in expression.split(operator, 1))
            break
    else:
        raise ValueError(
            f"constraint {expression!r}: expected <key>==<value> or "
            f"<key>!=<value> with a key among {_known()}"
        )
    if not _KEY.match(key) or not _canonical(key):
        raise ValueError(f"constraint {expression!r}: unknown key {key!r}; known: {_known()}")
    if not _VALUE.match(value):
        raise ValueError(
            f"constraint {expression!r}: the value {value!r} is empty or holds "
            "characters Swarm does not allow there"
        )
    return Constraint(key, operator, value)


def matches_all(constraints: Iterable[Constraint], attributes: Mapping[str, str]) -> bool:
    return all(constraint.matches(attributes) for constraint in constraints)


def _canonical(key: str) -> str:
    """The attribute a key names: fixed keys and prefixes in any case (as Swarm takes them),
    the label name after a prefix as written."""
    lowered = key.lower()
    if lowered in KEYS:
        return lowered
    for prefix in PREFIXES:
        if lowered.startswith(prefix) and len(key) > len(prefix):
            return prefix + key[len(prefix) :]
    return ""


def _known() -> str:
    return ", ".join([*KEYS, *(f"{prefix}<name>" for prefix in PREFIXES)])
