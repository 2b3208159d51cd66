"""A request on its way to a remote endpoint (runtime: remote; config/remote.py holds where
it goes, computed at config load): its headers and its body. Only requests to remote models
come here; local ones go on as they are."""

from __future__ import annotations

import msgspec

from modelberth.config.remote import RemoteSpec
from modelberth.proxy.asgi import Headers

# Not passed on: the answer must come uncompressed, since the proxy reads it on the way
# (usage, the model's name). The client's key never is (forwarding.py drops it): the
# remote gets the config's.
_DROPPED = frozenset({b"accept-encoding"})
_TOP_LEVEL = msgspec.json.Decoder(dict[str, msgspec.Raw])


def remote_headers(remote: RemoteSpec, headers: Headers) -> Headers:
    """The forwarded headers, with the configured key as `Authorization: Bearer`.

    >>> spec = RemoteSpec.build("gpt", "https://api.example.com/v1", "sk-1", None)
    >>> remote_headers(spec, [(b"accept-encoding", b"gzip"), (b"accept", b"*/*")])
    [(b'accept', b'*/*'), (b'authorization', b'Bearer sk-1')]
    """
    out = [item for item in headers if item[0] not in _DROPPED]
    if remote.auth is not None:
        out.append(remote.auth)
    return out


def remote_body(remote: RemoteSpec, body: bytes, requested: str, path: str) -> bytes:
    """The body with its top-level `model` set to the name the remote serves the model under
    (an alias the client used means nothing there). Unchanged when the client sent that
    name already, on the raw /upstream/ route, and when the body is no JSON object with a
    `model` (a multipart form's field goes as it was sent)."""
    if requested == remote.model or path.startswith("/upstream/"):
        return body
    try:
        # Only the top level is decoded: every other value stays the bytes it was.
        fields = _TOP_LEVEL.decode(body)
    except msgspec.DecodeError:
        return body
    if "model" not in fields:
        return body
    fields["model"] = msgspec.Raw(remote.model_json)
    return msgspec.json.encode(fields)
