"""The model name in answers: every `"model": "..."` string value of an answer (a JSON body,
each SSE event, nested objects such as a Responses event's `response` or Anthropic's
`message_start`) becomes the name the client sent, alias included, instead of the one the
upstream reports (often a file path). `use_upstream_model_name: true` keeps the upstream's.

Inside a JSON string a quote is always escaped, so an unescaped `"model":` can only be an
object key: the rewrite needs no parsing. A stream is rewritten as it passes: SSE up to its
last complete line (a JSON document never holds a raw newline, so no key is ever cut), any
other body up to a short tail kept back in case a key straddles two pieces."""

from __future__ import annotations

import functools
import json
import re

_MODEL = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')
_HOLD = 512  # bytes of a non-SSE body kept back for the next piece
_LONGEST_LINE = 1 << 20  # an SSE line longer than this is passed on unrewritten


@functools.lru_cache(maxsize=4096)
def _template(requested: str) -> bytes:
    """The replacement, as a re template (its backslashes escaped), made once per name."""
    return (b'"model":' + json.dumps(requested).encode()).replace(b"\\", b"\\\\")


def rename(body: bytes, requested: str) -> bytes:
    """A whole answer, renamed."""
    return _MODEL.sub(_template(requested), body) if b'"model"' in body else body


class ModelNamer:
    """Renames a stream piece by piece."""

    __slots__ = ("_carry", "_requested", "_sse")

    def __init__(self, requested: str, sse: bool) -> None:
        self._requested = requested
        self._sse = sse
        self._carry = b""

    def whole(self, body: bytes) -> bytes:
        return rename(body, self._requested)

    def feed(self, chunk: bytes) -> bytes:
        """What of the answer so far can go out, renamed; the rest waits for more."""
        data = self._carry + chunk if self._carry else chunk
        if self._sse:
            cut = data.rfind(b"\n") + 1
            if not cut and len(data) > _LONGEST_LINE:
                cut = len(data)
        else:
            cut = max(0, len(data) - _HOLD)
            for match in _MODEL.finditer(data, max(0, cut - _HOLD)):
                if match.end() > cut:  # a key crossing the cut waits with the tail
                    cut = match.start()
                    break
        self._carry = data[cut:]
        return self.whole(data[:cut])

    def finish(self) -> bytes:
        """The rest, once the answer has ended."""
        rest, self._carry = self._carry, b""
        return self.whole(rest)
