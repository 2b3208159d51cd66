"""forwarding.py: hop-by-hop removal and the X-Forwarded-* / Forwarded trust rules."""

from __future__ import annotations

import pytest

from modelberth import auth
from modelberth.proxy.forwarding import HOP_BY_HOP, Forwarding

H = list[tuple[bytes, bytes]]

NONE = Forwarding([])
PROXIES = Forwarding(["10.0.0.1", "192.168.0.0/16", "::1", "fd00::/8"])


def names(headers: H) -> list[bytes]:
    return [name for name, _ in headers]


def get(headers: H, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key == name]


def base(*extra: tuple[bytes, bytes]) -> H:
    return [
        (b"host", b"api.example"),
        (b"content-type", b"application/json"),
        (b"accept", b"*/*"),
        *extra,
        (b"user-agent", b"test"),
    ]


# Removal


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_hop_by_hop_headers_are_removed(name: bytes) -> None:
    out = NONE.request_headers(base((name, b"x")), "203.0.113.5", "http")
    assert name not in names(out)
    assert names(out)[:3] == [b"content-type", b"accept", b"user-agent"]


@pytest.mark.parametrize("name", [b"expect", b"host", b"content-length", *auth.AUTH_HEADERS])
def test_expect_host_length_and_auth_are_removed(name: bytes) -> None:
    headers = base(
        (b"expect", b"100-continue"),
        (b"content-length", b"12"),
        (b"authorization", b"Bearer k"),
        (b"x-api-key", b"k"),
    )
    assert name not in names(NONE.request_headers(headers, "203.0.113.5", "http"))


def test_other_headers_keep_their_order_and_forwarding_comes_last() -> None:
    headers = [
        (b"b", b"1"),
        (b"host", b"h"),
        (b"a", b"2"),
        (b"connection", b"keep-alive"),
        (b"c", b"3"),
        (b"a", b"4"),
    ]
    out = NONE.request_headers(headers, "203.0.113.5", "https")
    assert out == [
        (b"b", b"1"),
        (b"a", b"2"),
        (b"c", b"3"),
        (b"a", b"4"),
        (b"x-forwarded-for", b"203.0.113.5"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"h"),
    ]


def test_the_input_is_not_changed() -> None:
    headers = base((b"connection", b"x-foo"), (b"x-foo", b"1"))
    copy = list(headers)
    NONE.request_headers(headers, "203.0.113.5", "http")
    assert headers == copy


# Connection


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_header_named_in_connection_is_removed(where: str) -> None:
    foo, conn = (b"x-foo", b"1"), (b"connection", b"close, x-foo")
    headers = base(foo, conn) if where == "before" else base(conn, foo)
    out = NONE.request_headers([*headers, (b"x-bar", b"2")], "203.0.113.5", "http")
    assert b"x-foo" not in names(out)
    assert get(out, b"x-bar") == [b"2"]
    assert names(out)[:3] == [b"content-type", b"accept", b"user-agent"]


def test_connection_tokens_are_case_and_whitespace_insensitive() -> None:
    headers = base(
        (b"connection", b"Keep-Alive ,  X-Foo\t,X-BAR,,"),
        (b"x-foo", b"1"),
        (b"x-bar", b"2"),
        (b"x-baz", b"3"),
    )
    out = NONE.request_headers(headers, "203.0.113.5", "http")
    assert b"x-foo" not in names(out) and b"x-bar" not in names(out)
    assert get(out, b"x-baz") == [b"3"]


def test_multiple_connection_headers() -> None:
    headers = base(
        (b"connection", b"x-foo"),
        (b"x-foo", b"1"),
        (b"x-bar", b"2"),
        (b"connection", b"X-Bar"),
        (b"x-baz", b"3"),
    )
    out = NONE.request_headers(headers, "203.0.113.5", "http")
    assert b"x-foo" not in names(out) and b"x-bar" not in names(out)
    assert b"connection" not in names(out)
    assert get(out, b"x-baz") == [b"3"]


def test_forwarding_headers_named_in_connection_are_hop_by_hop() -> None:
    headers = base(
        (b"connection", b"X-Forwarded-For, x-forwarded-proto, forwarded"),
        (b"x-forwarded-for", b"198.51.100.7"),
        (b"x-forwarded-proto", b"https"),
        (b"forwarded", b"for=198.51.100.7"),
        (b"x-real-ip", b"198.51.100.7"),
    )
    out = PROXIES.request_headers(headers, "10.0.0.1", "http")
    assert get(out, b"x-forwarded-for") == [b"10.0.0.1"]
    assert get(out, b"x-forwarded-proto") == [b"http"]
    assert get(out, b"forwarded") == []
    assert get(out, b"x-real-ip") == [b"198.51.100.7"]


def test_our_own_forwarding_headers_survive_a_connection_naming_them() -> None:
    headers = base((b"connection", b"x-forwarded-for, x-forwarded-host"))
    out = NONE.request_headers(headers, "203.0.113.5", "http")
    assert get(out, b"x-forwarded-for") == [b"203.0.113.5"]
    assert get(out, b"x-forwarded-host") == [b"api.example"]


# Untrusted peers


def test_a_spoofed_forwarded_for_from_an_untrusted_peer_is_replaced() -> None:
    headers = base((b"x-forwarded-for", b"127.0.0.1"), (b"x-forwarded-for", b"::1"))
    for forwarding in (NONE, PROXIES):
        out = forwarding.request_headers(headers, "203.0.113.5", "http")
        assert get(out, b"x-forwarded-for") == [b"203.0.113.5"]


def test_an_untrusted_peer_gets_proto_and_host_from_the_connection() -> None:
    headers = base(
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"evil.example"),
        (b"forwarded", b"for=1.2.3.4;proto=https"),
        (b"x-real-ip", b"1.2.3.4"),
    )
    out = PROXIES.request_headers(headers, "203.0.113.5", "http")
    assert get(out, b"x-forwarded-proto") == [b"http"]
    assert get(out, b"x-forwarded-host") == [b"api.example"]
    assert get(out, b"forwarded") == [] and get(out, b"x-real-ip") == []


def test_no_host_header_no_forwarded_host() -> None:
    out = NONE.request_headers([(b"x-forwarded-host", b"evil.example")], "203.0.113.5", "http")
    assert get(out, b"x-forwarded-host") == []


def test_no_peer_drops_forwarding_headers_and_adds_no_address() -> None:
    headers = base(
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"x-real-ip", b"1.2.3.4"),
        (b"forwarded", b"for=1.2.3.4"),
        (b"x-forwarded-proto", b"https"),
    )
    for peer in (None, ""):
        out = PROXIES.request_headers(headers, peer, "http")
        assert get(out, b"x-forwarded-for") == [] and get(out, b"x-real-ip") == []
        assert get(out, b"forwarded") == []
        assert get(out, b"x-forwarded-proto") == [b"http"]
        assert get(out, b"x-forwarded-host") == [b"api.example"]
    assert PROXIES.client_address(headers, None) is None


# Trusted peers


def test_a_trusted_peer_is_appended_to_forwarded_for() -> None:
    headers = base((b"x-forwarded-for", b"198.51.100.7"))
    out = PROXIES.request_headers(headers, "10.0.0.1", "http")
    assert get(out, b"x-forwarded-for") == [b"198.51.100.7, 10.0.0.1"]


def test_multiple_forwarded_for_headers_are_combined_in_order() -> None:
    headers = base(
        (b"x-forwarded-for", b"198.51.100.7, 192.168.1.1"),
        (b"x", b"y"),
        (b"x-forwarded-for", b" 192.168.1.2 "),
        (b"x-forwarded-for", b""),
    )
    out = PROXIES.request_headers(headers, "10.0.0.1", "http")
    assert get(out, b"x-forwarded-for") == [b"198.51.100.7, 192.168.1.1, 192.168.1.2, 10.0.0.1"]
    assert get(out, b"x") == [b"y"]


def test_a_trusted_peer_without_forwarded_for_gets_its_own_address() -> None:
    out = PROXIES.request_headers(base(), "10.0.0.1", "https")
    assert get(out, b"x-forwarded-for") == [b"10.0.0.1"]
    assert get(out, b"x-forwarded-proto") == [b"https"]
    assert get(out, b"x-forwarded-host") == [b"api.example"]


def test_a_trusted_peer_keeps_proto_host_forwarded_and_real_ip() -> None:
    headers = base(
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"public.example"),
        (b"forwarded", b"for=198.51.100.7;proto=https"),
        (b"x-real-ip", b"198.51.100.7"),
    )
    out = PROXIES.request_headers(headers, "10.0.0.1", "http")
    assert get(out, b"x-forwarded-proto") == [b"https"]
    assert get(out, b"x-forwarded-host") == [b"public.example"]
    assert names(out) == [
        b"content-type",
        b"accept",
        b"forwarded",
        b"x-real-ip",
        b"user-agent",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    ]
    assert get(out, b"forwarded") == [b"for=198.51.100.7;proto=https"]


def test_cidr_trust() -> None:
    assert PROXIES.trusts("192.168.3.4") and PROXIES.trusts("10.0.0.1")
    assert not PROXIES.trusts("10.0.0.2") and not PROXIES.trusts("192.169.0.1")
    assert not PROXIES.trusts(None) and not PROXIES.trusts("not-an-ip")
    assert not NONE.trusts("127.0.0.1")
    out = PROXIES.request_headers([(b"x-forwarded-for", b"1.2.3.4")], "192.168.200.9", "http")
    assert get(out, b"x-forwarded-for") == [b"1.2.3.4, 192.168.200.9"]


def test_ipv6_peers() -> None:
    assert PROXIES.trusts("::1") and PROXIES.trusts("fd12:3456::7")
    assert PROXIES.trusts("::ffff:10.0.0.1")  # IPv4 peer on a dual-stack socket
    assert not PROXIES.trusts("2001:db8::1") and not PROXIES.trusts("::2")
    headers = [(b"x-forwarded-for", b"2001:db8::9")]
    out = PROXIES.request_headers(headers, "fd00::5", "http")
    assert get(out, b"x-forwarded-for") == [b"2001:db8::9, fd00::5"]
    out = PROXIES.request_headers(headers, "2001:db8::1", "http")
    assert get(out, b"x-forwarded-for") == [b"2001:db8::1"]
    v6 = Forwarding(["fe80::/10"])
    assert v6.trusts("fe80::1%eth0") and not v6.trusts("10.0.0.1")


def test_many_peers_are_still_answered_right() -> None:
    forwarding = Forwarding(["10.0.0.0/8"])
    for i in range(3000):
        assert forwarding.trusts(f"10.0.{i // 256}.{i % 256}")
        assert not forwarding.trusts(f"11.0.{i // 256}.{i % 256}")


# The client's address


def test_client_address_of_an_untrusted_peer_is_the_peer() -> None:
    headers = [(b"x-forwarded-for", b"1.2.3.4")]
    assert PROXIES.client_address(headers, "203.0.113.5") == "203.0.113.5"
    assert NONE.client_address(headers, "10.0.0.1") == "10.0.0.1"
    assert PROXIES.client_address([], "10.0.0.1") == "10.0.0.1"


def test_chained_trusted_proxies() -> None:
    # client 198.51.100.7 -> 192.168.1.1 -> 192.168.1.2 -> 10.0.0.1 -> modelberth;
    # the client itself claimed to be 127.0.0.1.
    headers = [
        (b"x-forwarded-for", b"127.0.0.1, 198.51.100.7, 192.168.1.1"),
        (b"x-forwarded-for", b"192.168.1.2"),
    ]
    assert PROXIES.client_address(headers, "10.0.0.1") == "198.51.100.7"
    out = PROXIES.request_headers(headers, "10.0.0.1", "http")
    assert get(out, b"x-forwarded-for") == [
        b"127.0.0.1, 198.51.100.7, 192.168.1.1, 192.168.1.2, 10.0.0.1"
    ]
    assert PROXIES.client_address(out, "10.0.0.1") == "198.51.100.7"


def test_client_address_edge_cases() -> None:
    trusted = "10.0.0.1"
    cases = {
        b"192.168.1.1, ::1": "192.168.1.1",  # all trusted: the left-most
        b"198.51.100.7:5678, 192.168.1.1": "198.51.100.7",  # a port
        b"[2001:db8::9]:443": "2001:db8::9",
        b"2001:db8::9": "2001:db8::9",
        b"198.51.100.7, unknown, 192.168.1.1": "192.168.1.1",  # stops at the reporting hop
        b"garbage": trusted,
        b" , ": trusted,
    }
    for xff, expected in cases.items():
        assert PROXIES.client_address([(b"x-forwarded-for", xff)], trusted) == expected, xff
    hop = [(b"connection", b"X-Forwarded-For"), (b"x-forwarded-for", b"198.51.100.7")]
    assert PROXIES.client_address(hop, trusted) == trusted


# Configuration


@pytest.mark.parametrize(
    "entry", ["localhost", "10.0.0.1/8", "", "300.1.2.3", "10.0.0.0/33", "[::1]", "10.0.0.1:80"]
)
def test_an_invalid_trusted_proxy_is_a_value_error(entry: str) -> None:
    with pytest.raises(ValueError, match=r"trusted_proxies: .* is not an IP address or CIDR"):
        Forwarding(["127.0.0.1", entry])


def test_one_string_instead_of_a_list_is_refused() -> None:
    with pytest.raises(TypeError):
        Forwarding("10.0.0.1")


# Answers


def test_answer_headers_drop_hop_by_hop() -> None:
    headers = [
        (b"content-type", b"text/event-stream"),
        (b"connection", b"close, X-Trace"),
        (b"transfer-encoding", b"chunked"),
        (b"x-trace", b"1"),
        (b"keep-alive", b"5"),
        (b"content-length", b"10"),
        (b"date", b"now"),
        (b"upgrade", b"h2c"),
    ]
    assert Forwarding.answer_head(200, headers) == (
        [(b"content-type", b"text/event-stream")],
        True,
        10,
    )
    assert PROXIES.answer_head(200, [(b"a", b"1")]) == ([(b"a", b"1")], False, None)
    # 204 and 304 have no body, whatever length they state.
    assert Forwarding.answer_head(304, [(b"content-length", b"1234")]) == ([], False, None)
