"""Fallbacks (`fallbacks: [...]` on a model): a request whose model fails before any byte of
the answer reached the client goes on to the next model of its order (config/references.py:
a fallback's own fallbacks after it, no model twice), and the client gets the answer of the
first that does not fail, its `model` still the name the client sent.

Failing, here: a failed or timed-out start, a refused or broken connection, no answer head
within first_byte_timeout, a 5xx answer (read, and dropped), an answer that broke off or was
unreadable before any of it was relayed. Not: a 4xx (the request's own fault, the same
anywhere), and nothing at all once the client has been sent anything, SSE keep-alive comments
included: from then on the failure is the client's, as without fallbacks.

The failure points (handler.py, relay_translated.py) raise FallBack instead of answering
when `Reply.fallback` says a next model is there; the last model, like a model without
fallbacks, answers every failure itself, so the client gets the last failure in its API's
own shape. A model without fallbacks never comes here: its requests pay for the feature with
one read of `spec.fallbacks` and of `reply.fallback` per answer.

A request is never run twice behind the client's back except by this, which the operator
asked for: each fallback is sent the request again, as the client sent it (translated anew
for that model, whose API may differ). Each failed attempt is logged, counted
(`modelberth_requests_total` with its status, `modelberth_fallbacks_total`) and recorded in
the activity ring; the request's span is the one of the model that answered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loguru import logger

from modelberth.errors import APIError
from modelberth.proxy.asgi import Headers
from modelberth.proxy.reply import Reply, answer_error
from modelberth.proxy.translation import Translation

if TYPE_CHECKING:
    from modelberth.models.model import Model
    from modelberth.models.registry import Registry
    from modelberth.telemetry.observe import RequestObservation


class FallBack(Exception):
    """Raised at a failure point instead of answering: the next model gets the request."""

    def __init__(self, error: APIError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request made ready for one model: the upstream's path, headers and body, whether
    the client may get SSE keep-alives while the model loads, and its translation."""

    target: str
    headers: Headers
    body: bytes
    streaming: bool
    translation: Translation | None


@dataclass(frozen=True, slots=True)
class Sent:
    """The request as the client sent it, to prepare it again for each fallback."""

    path: str
    target: str
    body: bytes
    streaming: bool
    requested: str  # the name the client sent (its answers carry it)
    headers: Callable[[], Headers]  # a fresh copy (an attempt adds its traceparent)

    def prepare(self, reply: Reply, model: Model) -> Prepared:
        translation = reply.dialect.translate(model.spec, self.path, self.body, self.requested)
        if translation is None:
            return Prepared(self.target, self.headers(), self.body, self.streaming, None)
        return Prepared(
            translation.target, self.headers(), translation.body, translation.streaming, translation
        )


Attempt = Callable[["Model", Prepared], Awaitable[None]]


async def with_fallbacks(
    model: Model,
    first: Prepared,
    sent: Sent,
    registry: Registry,
    reply: Reply,
    obs: RequestObservation,
    attempt: Attempt,
) -> None:
    """`attempt` with the model, then with each of its fallbacks while one fails before
    the answer began (FallBack); the last one answers whatever happens."""
    chain = [model, *(m for name in model.spec.fallbacks if (m := registry.get(name)) is not None)]
    prepared = first
    for index, candidate in enumerate(chain):
        if index:
            try:
                prepared = sent.prepare(reply, candidate)
            except APIError as error:  # this fallback's translation refuses the request
                await answer_error(obs, reply, error)
                return
        reply.fallback = index + 1 < len(chain)
        try:
            await attempt(candidate, prepared)
            return
        except FallBack as failed:
            after = chain[index + 1].name
            message = f"{failed.error.message} (falling back to '{after}')"
            logger.bind(model=candidate.name).warning("{}", message)
            obs.attempt_failed(failed.error.status, message, after)
        finally:
            reply.fallback = False
