"""A remote endpoint as a model (`runtime: remote`): another modelberth, a vLLM cluster, a
hosted API. What its `base_url`, `api_key` and `upstream_model` resolve to is computed here
once, when the config is loaded, so that a request to it costs a few attribute reads: the
address and TLS, the Host header, the path prefix, the Authorization header and the name the
remote serves the model under."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
# What may go into a header value without ending it or starting another: printable ASCII.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")


def check_base_url(url: str) -> str:
    """A base URL as the OpenAI SDKs take it, http(s)://host[:port][/path]; ValueError if not.

    >>> check_base_url(" https://api.example.com/v1 ")
    'https://api.example.com/v1'
    >>> check_base_url("https://user:pw@api.example.com/v1")
    Traceback (most recent call last):
      ...
    ValueError: credentials in the URL are not used: give the key as `api_key`
    >>> check_base_url("https://api.example.com:99999")
    Traceback (most recent call last):
      ...
    ValueError: 'https://api.example.com:99999': Port out of range 0-65535
    """
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"'{url}' must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"'{url}' names no host")
    if parts.username is not None or parts.password is not None:
        # They would not be sent (no Basic auth here): say so rather than drop them silently.
        raise ValueError("credentials in the URL are not used: give the key as `api_key`")
    if parts.query or parts.fragment:
        raise ValueError(f"'{url}' may not have a query or a fragment")
    try:
        parts.port  # noqa: B018 (it raises for a port out of range)
    except ValueError as exc:
        raise ValueError(f"'{url}': {exc}") from None
    return text


def check_api_key(key: str) -> str:
    r"""A key sent as a header: printable ASCII without spaces (a line break in it would
    start a header of its own).

    >>> check_api_key("sk-1234")
    'sk-1234'
    >>> check_api_key("sk-1234\r\nx-injected: 1")
    Traceback (most recent call last):
      ...
    ValueError: must be printable ASCII without spaces or line breaks
    """
    if not _HEADER_SAFE.fullmatch(key):
        raise ValueError("must be printable ASCII without spaces or line breaks")
    return key


@dataclass(frozen=True, slots=True)
class RemoteSpec:
    """Where a remote model's requests go, ready to be used as they are. The Host header
    leaves out the scheme's own port, as clients write it; an IPv6 host is bracketed there
    and connected to without the brackets.

    >>> spec = RemoteSpec.build("gpt", "https://api.example.com/openai/v1/", "sk-1", None)
    >>> spec.host, spec.port, spec.tls, spec.authority, spec.prefix, spec.model
    ('api.example.com', 443, True, 'api.example.com', '/openai/v1', 'gpt')
    >>> spec.auth
    (b'authorization', b'Bearer sk-1')
    >>> local = RemoteSpec.build("m", "http://[fd00::5]:8000", None, "qwen2.5")
    >>> local.host, local.authority, local.prefix, local.model, local.auth
    ('fd00::5', '[fd00::5]:8000', '', 'qwen2.5', None)
    """

    base_url: str  # as configured, without a trailing slash
    host: str  # to connect to (an IPv6 address without its brackets)
    port: int
    tls: bool
    authority: str  # the Host header: the host, with :port unless it is the scheme's own
    prefix: str  # put in place of the /v1 of modelberth's paths; "": paths go as received
    model: str  # the `model` the remote is sent
    model_json: bytes  # the same as a JSON string, for rewriting request bodies
    # Authorization: Bearer <api_key>, in place of the client's (never forwarded); kept out
    # of the repr, which may end up in a log.
    auth: tuple[bytes, bytes] | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls, name: str, base_url: str, api_key: str | None, upstream_model: str | None
    ) -> RemoteSpec:
        url = base_url.strip().rstrip("/")
        parts = urlsplit(url)
        scheme = parts.scheme
        host = parts.hostname or ""
        port = parts.port or _DEFAULT_PORTS[scheme]
        shown = f"[{host}]" if ":" in host else host
        authority = shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"
        path = parts.path.rstrip("/")
        return cls(
            base_url=url,
            host=host,
            port=port,
            tls=scheme == "https",
            authority=authority,
            # /v1 itself, or no path: modelberth's own paths are the remote's.
            prefix="" if path in ("", "/v1") else path,
            model=upstream_model or name,
            model_json=json.dumps(upstream_model or name).encode(),
            auth=(b"authorization", b"Bearer " + api_key.encode("ascii")) if api_key else None,
        )

    @property
    def origin(self) -> str:
        """scheme://authority, for spans and the status."""
        return f"{'https' if self.tls else 'http'}://{self.authority}"

    def target(self, path: str) -> str:
        """The remote's path for one of modelberth's: with the base URL's path in place of
        /v1 (`https://host/openai/v1`: /openai/v1/chat/completions); a path outside /v1
        (`/tokenize`, a raw /upstream/ call's) goes to the host's root as it is.

        >>> spec = RemoteSpec.build("gpt", "https://api.example.com/openai/v1", None, None)
        >>> spec.target("/v1/chat/completions"), spec.target("/tokenize")
        ('/openai/v1/chat/completions', '/tokenize')
        """
        prefix = self.prefix
        if prefix and (path.startswith("/v1/") or path == "/v1"):
            return prefix + path[3:]
        return path
