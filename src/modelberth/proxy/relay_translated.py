"""Relaying an answer that must be translated for the client (translation.py): a stream
fed through the route's stream translator piece by piece as it arrives, anything else
read whole and translated at once. The upstream's own OpenAI usage is read on the way, so
tokens are counted whatever the client's API. Also the answers that need no upstream call:
`answer_at_once` (before admission: Ollama's unload) and `relay_local` (once the model is
ready: Ollama's preload)."""

from __future__ import annotations

from modelberth.errors import APIError
from modelberth.models.model import Model
from modelberth.proxy.errors import failure
from modelberth.proxy.fallback import FallBack
from modelberth.proxy.forwarding import Forwarding
from modelberth.proxy.reply import Reply, answer_error
from modelberth.proxy.translation import Translation
from modelberth.telemetry.observe import RequestObservation, UsageReader, usage_of_answer
from modelberth.upstream_client import UpstreamError, UpstreamResponse

_JSON = [(b"content-type", b"application/json")]
_STREAMING = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


async def answer_at_once(
    model: Model, reply: Reply, obs: RequestObservation, translation: Translation
) -> bool:
    """Answer now if the translation needs neither the model nor its upstream; whether it
    did."""
    out = translation.at_once(model)
    if out is None:
        return False
    await reply.respond(200, _JSON, out)
    obs.finish(200)
    return True


async def relay_local(
    model: Model, reply: Reply, obs: RequestObservation, translation: Translation
) -> None:
    """The answer of a translation with nothing to send upstream, the model being ready."""
    translation.apply(model)
    obs.first_chunk()
    try:
        status, out = translation.whole(200, b"", obs)
    except APIError as error:
        await answer_error(obs, reply, error, reply.early)
        return
    if reply.early:  # an SSE head went out while the model loaded
        await reply.finish(out)
    else:
        await reply.respond(status, _JSON, out)
    obs.finish(status)


async def relay_translated(
    model: Model,
    reply: Reply,
    resp: UpstreamResponse,
    obs: RequestObservation,
    translation: Translation,
) -> None:
    translation.apply(model)
    _, is_sse, _ = Forwarding.answer_head(resp.status, resp.headers)
    stall = model.spec.stream_stall_timeout or None
    if is_sse and resp.status < 400:
        await _relay_stream(model, reply, resp, obs, translation, stall)
        return
    try:
        answer = resp.arrived_whole()
        if answer is None:
            answer = await resp.read(stall)
    except UpstreamError as exc:
        if reply.fallback and not reply.early:  # nothing was sent: the next model's turn
            raise FallBack(failure(model, exc)) from exc
        await answer_error(obs, reply, failure(model, exc), reply.early)
        return
    model.upstream_answered()
    obs.first_chunk()
    try:
        status, out = translation.whole(resp.status, answer, obs)
    except APIError as error:
        if reply.fallback and error.status >= 500 and not reply.early:
            raise FallBack(error) from None  # e.g. an answer that is no JSON
        await answer_error(obs, reply, error, reply.early)
        return
    if reply.early:  # the client's SSE head went out while the model loaded
        if status >= 400:
            failed = APIError(
                status,
                f"Upstream answered {status}: {answer.decode('utf-8', 'replace')[:500]}",
                type="server_error",
                code="upstream_error",
            )
            await answer_error(obs, reply, failed, early=True)
            return
        await reply.finish(out)
    else:
        await reply.respond(status, _JSON, out)
    obs.answer_body = obs.activity.capture(out)
    obs.finish(status, usage_of_answer(answer))


async def _relay_stream(
    model: Model,
    reply: Reply,
    resp: UpstreamResponse,
    obs: RequestObservation,
    translation: Translation,
    stall: float | None,
) -> None:
    if not reply.early:
        await reply.start(resp.status, [(b"content-type", translation.stream_type), *_STREAMING])
    stream = translation.stream(obs)
    obs.streamed = True
    usage = UsageReader(True)
    captured = obs.answer_body = obs.activity.capture()
    try:
        while chunk := await resp.next_piece(stall):
            obs.first_chunk()
            usage.feed(chunk)
            out = stream.feed(chunk)
            if out:
                if captured is not None:
                    captured.feed(out)
                await reply.chunk(out)
    except UpstreamError as exc:
        error = failure(model, exc, mid_stream=True)
        obs.finish(error.status, usage.result(), error=error.message)
        await reply.finish(stream.error(error.status, error.message))
        return
    model.upstream_answered()
    await reply.finish(stream.finish())
    obs.finish(resp.status, usage.result())
