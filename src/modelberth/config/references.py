"""What one model's settings say of the others: its aliases (no name or alias used twice) and
its fallbacks (each a configured model, no loop), checked on the models as YAML gave them,
so that every mistake is reported at its own place even when a model is invalid otherwise;
and the order a model's fallbacks resolve to.

A fallback's own fallbacks come after it (depth first), and no model is tried twice: with
`a: [b, c]` and `b: [d]`, a request for `a` may go on to b, d, then c. A loop (`a -> b -> a`)
is refused: it would make that order depend on where one starts reading it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic_core import InitErrorDetails, PydanticCustomError

if TYPE_CHECKING:
    from modelberth.config.schema import ModelConfig


def _field(model: Any, name: str) -> Any:
    """A field of a model, validated (a ModelConfig) or as YAML gave it (a mapping)."""
    if isinstance(model, Mapping):
        return model.get(name)
    return getattr(model, name, None)


def _names(models: Mapping[Any, Any]) -> dict[str, str]:
    """Every name and alias, to the model it names (a repeated alias: its first model)."""
    known: dict[str, str] = {name: name for name in models if isinstance(name, str)}
    for name, model in models.items():
        aliases = _field(model, "aliases")
        if isinstance(name, str) and isinstance(aliases, list):
            for alias in aliases:
                if isinstance(alias, str):
                    known.setdefault(alias, name)
    return known


def _error(
    kind: str, message: str, context: dict[str, Any], loc: tuple[str | int, ...], value: Any
) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, message, context), loc=loc, input=value)


def alias_errors(models: Mapping[Any, Any]) -> list[InitErrorDetails]:
    """An error at each alias that is a model's name or an earlier alias, at its own place."""
    seen: dict[str, str] = {name: name for name in models if isinstance(name, str)}
    errors: list[InitErrorDetails] = []
    for name, model in models.items():
        aliases = _field(model, "aliases")
        if not isinstance(name, str) or not isinstance(aliases, list):
            continue
        for index, alias in enumerate(aliases):
            if not isinstance(alias, str):
                continue
            if alias in seen:
                errors.append(
                    _error(
                        "alias_taken",
                        "alias '{alias}' of '{name}' is already used by '{other}'",
                        {"alias": alias, "name": name, "other": seen[alias]},
                        (name, "aliases", index),
                        alias,
                    )
                )
            else:
                seen[alias] = name
    return errors


def fallback_errors(models: Mapping[Any, Any]) -> list[InitErrorDetails]:
    """An error at each fallback that names no model, repeats one, or closes a loop."""
    known = _names(models)
    graph: dict[str, list[tuple[int, str]]] = {}
    errors: list[InitErrorDetails] = []
    for name, model in models.items():
        listed = _field(model, "fallbacks")
        if not isinstance(name, str) or not isinstance(listed, list):
            continue
        edges = graph[name] = []
        for index, entry in enumerate(listed):
            if not isinstance(entry, str):
                continue  # the type error is Pydantic's
            target = known.get(entry)
            context = {"fallback": entry, "name": name}
            if target is None:
                errors.append(
                    _error(
                        "fallback_unknown",
                        "fallback '{fallback}' of '{name}' is not a configured model or alias",
                        context,
                        (name, "fallbacks", index),
                        entry,
                    )
                )
            elif any(target == other for _, other in edges):
                errors.append(
                    _error(
                        "fallback_repeated",
                        "fallback '{fallback}' of '{name}' is listed twice",
                        context,
                        (name, "fallbacks", index),
                        entry,
                    )
                )
            else:
                edges.append((index, target))
    return errors + _loops(graph)


def _loops(graph: Mapping[str, list[tuple[int, str]]]) -> list[InitErrorDetails]:
    """One error per loop, at the fallback that closes it, naming the whole loop."""
    errors: list[InitErrorDetails] = []
    done: set[str] = set()
    reported: set[frozenset[str]] = set()
    for start in graph:
        if start in done:
            continue
        path = [start]  # depth first, without recursion: the models on the way, and
        edges = [iter(graph[start])]  # what is left of each one's fallbacks
        while path:
            step = next(edges[-1], None)
            if step is None:
                done.add(path.pop())
                edges.pop()
                continue
            index, target = step
            if target in path:
                loop = [*path[path.index(target) :], target]
                if frozenset(loop) not in reported:
                    reported.add(frozenset(loop))
                    errors.append(
                        _error(
                            "fallback_loop",
                            "fallback loop: {loop}",
                            {"loop": " -> ".join(loop)},
                            (path[-1], "fallbacks", index),
                            target,
                        )
                    )
            elif target not in done:
                path.append(target)
                edges.append(iter(graph.get(target, ())))
    return errors


def fallback_order(models: Mapping[str, ModelConfig]) -> dict[str, tuple[str, ...]]:
    """Each model's fallbacks, by name, in the order they are tried (the module docstring);
    for a config whose fallbacks passed `fallback_errors`."""
    known = _names(models)
    orders: dict[str, tuple[str, ...]] = {}
    for name in models:
        order: list[str] = []
        seen = {name}
        stack = [iter(models[name].fallbacks)]
        while stack:  # depth first, without recursion
            entry = next(stack[-1], None)
            if entry is None:
                stack.pop()
                continue
            target = known[entry]
            if target not in seen:
                seen.add(target)
                order.append(target)
                stack.append(iter(models[target].fallbacks))
        orders[name] = tuple(order)
    return orders
