"""The headers a request carries on to its upstream, and those an answer carries back.

A proxy must not pass on hop-by-hop headers (RFC 9110 §7.6.1: the fixed set and every header
a Connection header names), and must not believe a client's X-Forwarded-For, Forwarded or
X-Real-IP unless the client is itself a proxy we trust: else anyone can claim any address.
Like nginx, Envoy and Go's ReverseProxy, an untrusted peer's forwarding headers are replaced by
what this hop saw; a trusted peer's are kept, and this hop is appended (RFC 9110 §7.6.3).

This runs once per request: everything that can be is computed at construction, and the
headers are walked once (twice only when a Connection header names an unusual header).
Header names must be lower case, as ASGI scopes (and modelberth's connection) give them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import TypeAlias

from modelberth.auth import AUTH_HEADERS
from modelberth.config.types import parse_network

Headers: TypeAlias = list[tuple[bytes, bytes]]
_IP: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 9110 §7.6.1, plus Proxy-Connection (pre-standard, still sent) and Trailers (as Go does).
# "close" is a reserved field name (RFC 9110 §18.4): dropped always, so that the common
# `Connection: close` needs no second pass to remove a header named after it.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"close",
    }
)
# Never forwarded either: modelberth answers 100-continue itself, the upstream client sets
# its own Host and Content-Length, and the API key is for modelberth, not for the upstream.
_NOT_FORWARDED = HOP_BY_HOP | {b"expect", b"host", b"content-length"} | frozenset(AUTH_HEADERS)
_XFF, _XFP, _XFH = b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"
# From a trusted peer the X-Forwarded-* are read and emitted again (at the end); Forwarded and
# X-Real-IP stay as they are. From an untrusted or unknown peer, all are dropped.
_DROP_TRUSTED = _NOT_FORWARDED | {_XFF, _XFP, _XFH}
_DROP_UNTRUSTED = _DROP_TRUSTED | {b"forwarded", b"x-real-ip"}
_RESPONSE_DROPPED = HOP_BY_HOP | {b"date"}
_NO_BODY = frozenset({204, 304})
_PROTO = {scheme: (_XFP, scheme.encode()) for scheme in ("http", "https")}
_CACHE_SIZE = 1024  # peers, and Connection values, remembered
_EMPTY: frozenset[bytes] = frozenset()
# Per peer: whether it is trusted, and its X-Forwarded-For header (None: no peer).
_Peer: TypeAlias = tuple[bool, tuple[bytes, bytes] | None]
_UNKNOWN: _Peer = (False, None)
_INVALID = ("", False)  # an X-Forwarded-For entry that is no address


class Forwarding:
    """The forwarding policy for one set of trusted proxies (addresses or CIDR networks).
    An IPv4 peer seen as IPv6 by a dual-stack socket is still that IPv4 address. One string
    is refused: iterated, it would be a list of characters.

    >>> forwarding = Forwarding(["10.0.0.0/8"])
    >>> forwarding.trusts("10.1.2.3"), forwarding.trusts("::ffff:10.1.2.3")
    (True, True)
    >>> forwarding.trusts("192.0.2.7"), forwarding.trusts(None)
    (False, False)
    >>> Forwarding("10.0.0.0/8")
    Traceback (most recent call last):
      ...
    TypeError: trusted_proxies must be a list of addresses, not one string
    """

    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        if isinstance(trusted_proxies, str | bytes):
            raise TypeError("trusted_proxies must be a list of addresses, not one string")
        networks = [parse_network(entry) for entry in trusted_proxies]
        self._v4 = tuple(n for n in networks if isinstance(n, ipaddress.IPv4Network))
        self._v6 = tuple(n for n in networks if isinstance(n, ipaddress.IPv6Network))
        self._any = bool(networks)
        self._peers: dict[str, _Peer] = {}
        # X-Forwarded-For entry -> (its address, trusted), or _INVALID.
        self._entries: dict[str, tuple[str, bool]] = {}

    def trusts(self, peer: str | None) -> bool:
        """Whether `peer` (the connection's remote address) is a trusted proxy."""
        return self._peer(peer)[0]

    def request_headers(
        self, headers: Iterable[tuple[bytes, bytes]], peer: str | None, scheme: str
    ) -> Headers:
        """The headers to send upstream for a request that came from `peer` over `scheme`:
        hop-by-hop and auth headers removed, the forwarding headers set by the trust rule.
        Other headers keep their order; X-Forwarded-For, -Proto and -Host come last.

        From a peer that is not trusted, the claimed X-Forwarded-For is replaced by the peer,
        and what Connection names goes too:

        >>> forwarding = Forwarding(["10.0.0.0/8"])
        >>> forwarding.request_headers(
        ...     [(b"host", b"mb.lan"), (b"connection", b"keep-alive, x-trace"),
        ...      (b"x-trace", b"1"), (b"keep-alive", b"timeout=5"),
        ...      (b"authorization", b"Bearer sk-1"), (b"x-forwarded-for", b"6.6.6.6"),
        ...      (b"accept", b"*/*"), (b"content-length", b"2")], "192.0.2.7", "http",
        ... )  # doctest: +NORMALIZE_WHITESPACE
        [(b'accept', b'*/*'), (b'x-forwarded-for', b'192.0.2.7'),
         (b'x-forwarded-proto', b'http'), (b'x-forwarded-host', b'mb.lan')]

        From a trusted proxy, its X-Forwarded-For is kept with the proxy appended, and its
        X-Forwarded-Proto is believed:

        >>> forwarding.request_headers(
        ...     [(b"x-forwarded-for", b"203.0.113.9"), (b"x-forwarded-proto", b"https")],
        ...     "10.0.0.2", "http")
        [(b'x-forwarded-for', b'203.0.113.9, 10.0.0.2'), (b'x-forwarded-proto', b'https')]
        """
        known = self._peers.get(peer) if peer else _UNKNOWN
        trusted, forwarded_for = self._peer(peer) if known is None else known
        drop = _DROP_TRUSTED if trusted else _DROP_UNTRUSTED
        out: Headers = []
        append = out.append
        named = _EMPTY  # what Connection headers name, beyond the fixed hop-by-hop set
        xff: bytes | None = None
        proto: bytes | None = None
        fhost: bytes | None = None
        host: bytes | None = None
        for item in headers:
            name = item[0]
            if name not in drop:
                append(item)
            elif name == b"host":
                if host is None:
                    host = item[1]
            elif name == b"connection":
                options = _CONNECTION.get(item[1])
                if options is None:
                    options = _connection_options(item[1])
                if options:
                    named = named | options if named else options
            elif trusted:
                if name == _XFF:
                    value = item[1].strip()
                    if value:
                        xff = value if xff is None else xff + b", " + value
                elif name == _XFP:
                    if proto is None:
                        proto = item[1]
                elif name == _XFH and fhost is None:
                    fhost = item[1]
        if named:  # rare: Connection names more than keep-alive, close, upgrade...
            _remove(out, named - drop)
            if trusted:  # a forwarding header named in Connection is hop-by-hop too
                xff, proto, fhost = (
                    None if _XFF in named else xff,
                    None if _XFP in named else proto,
                    None if _XFH in named else fhost,
                )
        if forwarded_for is not None:
            append(forwarded_for if xff is None else (_XFF, xff + b", " + forwarded_for[1]))
        if proto:
            append((_XFP, proto))
        else:
            append(_PROTO.get(scheme) or (_XFP, scheme.encode("latin-1")))
        forwarded_host = fhost or host
        if forwarded_host:
            append((_XFH, forwarded_host))
        return out

    @staticmethod
    def answer_head(
        status: int, headers: Iterable[tuple[bytes, bytes]]
    ) -> tuple[Headers, bool, int | None]:
        """In one pass over an answer's headers: those to relay (without its hop-by-hop
        ones, those a Connection header names included, its Date, which the server sets,
        and its Content-Length, which whoever frames the answer sets again), whether it is
        an SSE stream, and its Content-Length (None for 204 and 304, which have no body).

        >>> Forwarding.answer_head(200, [
        ...     (b"content-type", b"text/event-stream; charset=utf-8"),
        ...     (b"transfer-encoding", b"chunked"), (b"date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
        ...     (b"x-request-id", b"r1")])  # doctest: +NORMALIZE_WHITESPACE
        ([(b'content-type', b'text/event-stream; charset=utf-8'), (b'x-request-id', b'r1')],
         True, None)
        >>> Forwarding.answer_head(200, [(b"content-type", b"application/json"),
        ...                              (b"content-length", b"17")])
        ([(b'content-type', b'application/json')], False, 17)
        >>> Forwarding.answer_head(204, [(b"content-length", b"0")])
        ([], False, None)
        """
        out: Headers = []
        named = _EMPTY
        is_sse, length = False, None
        for item in headers:
            name = item[0]
            if name == b"content-type":
                is_sse = item[1].partition(b";")[0].strip().lower() == b"text/event-stream"
            elif name == b"content-length":
                if item[1].isdigit() and status not in _NO_BODY:
                    length = int(item[1])
                continue
            if name not in _RESPONSE_DROPPED:
                out.append(item)
            elif name == b"connection":
                named |= _named(item[1])
        if named:
            _remove(out, named)
        return out, is_sse, length

    def client_address(
        self, headers: Iterable[tuple[bytes, bytes]], peer: str | None
    ) -> str | None:
        """The real client's address, for logs: the peer, or, when the peer is a trusted
        proxy, the right-most address in X-Forwarded-For that is not a trusted proxy (walking
        from the right over trusted hops; the left-most if all are trusted). An entry that is
        not an address stops the walk at the hop that reported it (as nginx does).

        >>> forwarding = Forwarding(["10.0.0.0/8"])
        >>> forwarding.client_address([(b"x-forwarded-for", b"203.0.113.9, 10.0.0.3")],
        ...                           "10.0.0.2")
        '203.0.113.9'
        >>> forwarding.client_address([(b"x-forwarded-for", b"203.0.113.9")], "192.0.2.7")
        '192.0.2.7'
        >>> forwarding.client_address([(b"x-forwarded-for", b"203.0.113.9, unknown")],
        ...                           "10.0.0.2")
        '10.0.0.2'
        """
        if not peer or not self._peer(peer)[0]:
            return peer or None
        values: list[bytes] = []
        hop = False  # X-Forwarded-For named in Connection: hop-by-hop, not for us
        for name, value in headers:
            if name == _XFF:
                values.append(value)
            elif name == b"connection":
                hop = hop or _XFF in _named(value)
        if not values or hop:
            return peer
        address = peer
        entries = self._entries
        for entry in reversed(b",".join(values).decode("latin-1").split(",")):
            text = entry.strip()
            if not text:
                continue
            known = entries.get(text)
            if known is None:
                parsed = _parse_entry(text)
                known = _INVALID if parsed is None else (parsed[0], self._trusts_ip(parsed[1]))
                if len(entries) >= _CACHE_SIZE:
                    entries.clear()
                entries[text] = known
            if known is _INVALID:  # not an address: believe no further
                return address
            address, trusted = known
            if not trusted:
                return address
        return address

    def _peer(self, peer: str | None) -> _Peer:
        """Whether the peer is trusted, and its X-Forwarded-For; cached, since a server sees
        the same few peers again and again (bounded: cleared when full)."""
        if not peer:
            return _UNKNOWN
        known = self._peers.get(peer)
        if known is None:
            trusted = False
            if self._any:
                ip = _parse_ip(peer)
                trusted = ip is not None and self._trusts_ip(ip)
            if len(self._peers) >= _CACHE_SIZE:
                self._peers.clear()
            known = self._peers[peer] = (trusted, (_XFF, peer.encode("latin-1")))
        return known

    def _trusts_ip(self, ip: _IP) -> bool:
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:  # ::ffff:10.0.0.1 from a dual-stack socket
                return any(ip.ipv4_mapped in n for n in self._v4) or any(ip in n for n in self._v6)
            return any(ip in n for n in self._v6)
        return any(ip in n for n in self._v4)


# Connection header value -> the options it names beyond HOP_BY_HOP (lower case). Clients
# send a few values ("keep-alive", "close", "Upgrade, HTTP2-Settings"), parsed once each.
_CONNECTION: dict[bytes, frozenset[bytes]] = {}


def _connection_options(value: bytes) -> frozenset[bytes]:
    """The options a Connection header value names (comma-separated, case-insensitive),
    without those in HOP_BY_HOP: the headers it makes hop-by-hop beyond the fixed set.

    >>> _connection_options(b"Keep-Alive, X-Trace")
    frozenset({b'x-trace'})
    >>> _connection_options(b"close")
    frozenset()
    """
    options = frozenset(token.strip() for token in value.lower().split(b",")) - HOP_BY_HOP
    options -= {b""}
    if len(_CONNECTION) >= _CACHE_SIZE:
        _CONNECTION.clear()
    _CONNECTION[value] = options
    return options


def _named(value: bytes) -> frozenset[bytes]:
    options = _CONNECTION.get(value)
    return _connection_options(value) if options is None else options


def _remove(headers: Headers, names: frozenset[bytes]) -> None:
    """Remove the headers with these names in place, keeping the order of the others."""
    if not names:
        return
    kept = 0
    for item in headers:
        if item[0] not in names:
            headers[kept] = item
            kept += 1
    del headers[kept:]


def _parse_ip(text: str) -> _IP | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _parse_entry(text: str) -> tuple[str, _IP] | None:
    """An X-Forwarded-For entry: an address, or one with a port as some proxies write it
    (1.2.3.4:80, [::1]:80); gives the address without the port.

    >>> _parse_entry("1.2.3.4:80"), _parse_entry("[::1]:80")
    (('1.2.3.4', IPv4Address('1.2.3.4')), ('::1', IPv6Address('::1')))
    >>> _parse_entry("unknown") is None
    True
    """
    ip = _parse_ip(text)
    if ip is not None:
        return text, ip
    if text.startswith("["):
        host = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        host = text.partition(":")[0]
    else:
        return None
    ip = _parse_ip(host)
    return None if ip is None else (host, ip)
