"""The public socket against hostile and sloppy clients, on raw sockets against a real
modelberth: head limits, slow heads and bodies, idle and capped connections, HEAD, Host,
redirects, the parser's own errors, descriptor exhaustion."""

from __future__ import annotations

import json
import resource
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Modelberth, fake_model, wait_for

FAST_LIMITS = {"header_timeout": 1, "body_timeout": 1, "keepalive_timeout": 1}


@pytest.fixture(scope="module")
def mb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Modelberth]:
    server = Modelberth(
        tmp_path_factory.mktemp("server"),
        {"server": dict(FAST_LIMITS), "models": {"m": fake_model()}},
    )
    server.start()
    yield server
    server.stop()
    assert not server.kill_leftovers()


def connect(mb: Modelberth) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", mb.port), timeout=10)
    return sock


def exchange(mb: Modelberth, raw: bytes, sock: socket.socket | None = None) -> bytes:
    """Send raw bytes and read until the server closes (or 5 s of silence)."""
    sock = sock or connect(mb)
    sock.settimeout(5)
    with sock:
        sock.sendall(raw)
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def assert_openai_error(answer: bytes, status: int, code: str | None = None) -> dict[str, Any]:
    got, headers, body = split(answer)
    assert got == status, answer[:500]
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error: dict[str, Any] = json.loads(body)["error"]
    assert error["message"] and error["type"]
    if code is not None:
        assert error["code"] == code
    return error


def still_serving(mb: Modelberth) -> None:
    resp = httpx.post(
        mb.url + "/v1/chat/completions", json={"model": "m", "messages": []}, timeout=10
    )
    assert resp.status_code == 200, resp.text


def rejected(mb: Modelberth, reason: str) -> float:
    text = httpx.get(mb.url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("modelberth_http_rejected") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_head_over_64_kib_or_over_100_headers_is_431(mb: Modelberth) -> None:
    before = rejected(mb, "head_too_large")
    big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    assert_openai_error(exchange(mb, big), 431, "request_header_fields_too_large")
    many = (
        b"GET /health HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(101))
        + b"\r\n"
    )
    assert_openai_error(exchange(mb, many), 431, "request_header_fields_too_large")
    long_url = b"GET /health?" + b"q" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert_openai_error(exchange(mb, long_url), 431)
    # 100 headers exactly are fine.
    ok = (
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(98))
        + b"\r\n"
    )
    assert split(exchange(mb, ok))[0] == 200
    assert rejected(mb, "head_too_large") >= before + 2
    still_serving(mb)


def test_a_huge_header_is_refused_before_anything_else_and_health_stays_fast(
    mb: Modelberth,
) -> None:
    """A 128 MB header once held /health for 8 s: it is cut off at the limit."""
    sock = connect(mb)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent = 0
    began = time.monotonic()
    try:
        while sent < 128 * 2**20:
            sock.sendall(b"a" * 65536)
            sent += 65536
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert sent < 4 * 2**20, "the server read megabytes of one header"
    assert time.monotonic() - began < 3
    answer = read_all(sock)
    sock.close()
    if answer:  # the 431 may be lost to the reset of a connection still sending
        assert_openai_error(answer, 431)
    began = time.monotonic()
    assert httpx.get(mb.url + "/health", timeout=10).status_code == 200
    assert time.monotonic() - began < 1


def test_a_slowloris_head_is_closed_at_header_timeout(mb: Modelberth) -> None:
    before = rejected(mb, "header_timeout")
    sock = connect(mb)
    began = time.monotonic()
    closed = False
    for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        time.sleep(0.25)  # a byte every 0.25 s: never idle, never done
        if time.monotonic() - began > 6:
            break
    if not closed:
        sock.settimeout(2)
        closed = read_all(sock) == b""
    sock.close()
    assert closed
    assert time.monotonic() - began < 3  # header_timeout is 1 s here
    assert rejected(mb, "header_timeout") >= before + 1
    # A connection that sends nothing at all is closed too.
    silent = connect(mb)
    silent.settimeout(4)
    began = time.monotonic()
    assert read_all(silent) == b""
    assert time.monotonic() - began < 3
    silent.close()
    still_serving(mb)


def test_a_stalled_body_is_closed_at_body_timeout(mb: Modelberth) -> None:
    before = rejected(mb, "body_timeout")
    sock = connect(mb)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model"'
    )
    began = time.monotonic()
    sock.settimeout(5)
    read_all(sock)
    sock.close()
    assert time.monotonic() - began < 3
    assert rejected(mb, "body_timeout") >= before + 1
    still_serving(mb)


def test_an_idle_keep_alive_connection_is_closed(mb: Modelberth) -> None:
    sock = connect(mb)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(5)
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    began = time.monotonic()
    assert read_all(sock) == b""  # closed by the server after keepalive_timeout (1 s)
    assert 0.5 < time.monotonic() - began < 3
    sock.close()


def test_head_answers_like_get_without_a_body(mb: Modelberth) -> None:
    for path in (b"/health", b"/v1/models"):
        get = split(exchange(mb, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path))
        head = exchange(mb, b"HEAD %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
        status, headers, body = split(head)
        assert status == 200 and body == b""
        assert headers["content-length"] == get[1]["content-length"]


def test_head_through_the_passthrough_keeps_the_upstreams_length(mb: Modelberth) -> None:
    get = split(
        exchange(mb, b"GET /upstream/m/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    status, headers, body = split(
        exchange(mb, b"HEAD /upstream/m/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    assert status == 200 and body == b""
    assert headers["content-length"] == get[1]["content-length"] == str(len(get[2]))


def test_204_and_304_from_an_upstream_carry_no_body_and_no_length(mb: Modelberth) -> None:
    with connect(mb) as sock:
        sock.settimeout(5)
        for code in (204, 304):
            sock.sendall(b"GET /upstream/m/status/%d HTTP/1.1\r\nHost: x\r\n\r\n" % code)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(65536)
            status, headers, rest = split(answer)
            assert status == code and rest == b""
            assert "content-length" not in headers and "transfer-encoding" not in headers
        # The connection is still in step: the next request is answered normally.
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert split(read_all(sock))[0] == 200


def test_a_request_without_host_or_with_two_is_400(mb: Modelberth) -> None:
    assert_openai_error(exchange(mb, b"GET /health HTTP/1.1\r\n\r\n"), 400, "bad_request")
    two = b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    assert_openai_error(exchange(mb, two), 400, "bad_request")
    # HTTP/1.0 needs none.
    assert split(exchange(mb, b"GET /health HTTP/1.0\r\n\r\n"))[0] == 200


def test_a_trailing_slash_is_served_not_redirected_to_the_clients_host(mb: Modelberth) -> None:
    answer = exchange(
        mb, b"GET /v1/models/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    )
    status, headers, body = split(answer)
    assert status == 200 and "location" not in headers
    assert json.loads(body)["object"] == "list"
    assert b"evil.example" not in answer


def test_the_parsers_errors_are_openai_json_counted_and_not_logged_each(mb: Modelberth) -> None:
    before = rejected(mb, "malformed")
    for _ in range(20):
        assert_openai_error(exchange(mb, b"NOT HTTP AT ALL\r\n\r\n"), 400, "bad_request")
    assert_openai_error(exchange(mb, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"), 400)
    assert rejected(mb, "malformed") >= before + 21
    assert mb.log().count("Invalid HTTP request") < 5
    still_serving(mb)


def test_a_deeply_nested_json_body_is_400_invalid_json(mb: Modelberth) -> None:
    body = b'{"model": "m", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    resp = httpx.post(
        mb.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid_json"
    still_serving(mb)


def test_2000_idle_connections_do_not_stop_new_requests(mb: Modelberth) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    idle = []
    try:
        for _ in range(2000):
            idle.append(connect(mb))
        began = time.monotonic()
        still_serving(mb)
        assert time.monotonic() - began < 2
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_at_the_connection_cap_silent_ones_make_room_and_busy_ones_get_503(modelberth: Any) -> None:
    mb = modelberth({"server": {"max_connections": 10}, "models": {"m": fake_model(max_queue=100)}})
    still_serving(mb)
    idle = [connect(mb) for _ in range(10)]
    still_serving(mb)  # a connection that had sent nothing was closed to make room
    for sock in idle:
        sock.close()
    busy = []
    for _ in range(12):
        sock = connect(mb)
        body = b'{"model": "m", "sleep": 5}'
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        busy.append(sock)
    time.sleep(0.5)
    answers = []
    for sock in busy[10:]:
        sock.settimeout(3)
        answers.append(read_all(sock))
    for answer in answers:
        assert_openai_error(answer, 503, "server_busy")
    for sock in busy:
        sock.close()
    wait_for(lambda: httpx.get(mb.url + "/health", timeout=5).status_code == 200)


def test_running_out_of_descriptors_refuses_only_new_connections(tmp_path: Path) -> None:
    """Under `ulimit -n 1024`, 1,100 slow connections once refused everyone for 15 s."""
    server = Modelberth(
        tmp_path,
        {"server": {"header_timeout": 3, "keepalive_timeout": 30}, "models": {"m": fake_model()}},
    )
    server.start(prefix=["prlimit", "--nofile=1024:1024", "--"])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    slow: list[socket.socket] = []
    try:
        keeper = connect(server)  # a client served before the flood keeps its connection
        keeper.settimeout(5)
        keeper.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert keeper.recv(65536).startswith(b"HTTP/1.1 200")
        refused = 0
        for _ in range(1100):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            slow.append(sock)
            try:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            except OSError:  # past the cap: answered 503 and closed already
                refused += 1
        # The connection that was already open is served.
        keeper.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert keeper.recv(65536).startswith(b"HTTP/1.1 200")
        # A new one is answered at once: 503 in OpenAI's shape, not a hang or a reset.
        began = time.monotonic()
        answer = exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert time.monotonic() - began < 2
        assert split(answer)[0] in (200, 503)
        if split(answer)[0] == 503:
            assert_openai_error(answer, 503, "server_busy")
        # Once the slow heads time out, everyone is served again.
        wait_for(
            lambda: httpx.get(server.url + "/health", timeout=2).status_code == 200, timeout=10
        )
        keeper.close()
    finally:
        for sock in slow:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        server.stop()
        assert not server.kill_leftovers()
    assert "Too many open files" not in server.log()


def test_pipelined_requests_are_answered_in_order(mb: Modelberth) -> None:
    body = b'{"model": "m", "messages": []}'
    one = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    last = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = exchange(mb, one * 3 + last)
    assert answer.count(b"HTTP/1.1 200") == 4
    assert answer.rindex(b'"status"') > answer.rindex(b"chat.completion")


def test_a_chunked_and_a_100_continue_request_body_reach_the_upstream_whole(mb: Modelberth) -> None:
    body = json.dumps({"model": "m", "pad": "x" * 5000}).encode()
    chunked = (
        b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 1000]), body[i : i + 1000])
            for i in range(0, len(body), 1000)
        )
        + b"0\r\n\r\n"
    )
    answer = exchange(
        mb,
        b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked,
    )
    assert json.loads(split(answer)[2])["body_bytes"] == len(body)
    with connect(mb) as sock:
        sock.settimeout(5)
        sock.sendall(
            b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        assert json.loads(split(read_all(sock))[2])["body_bytes"] == len(body)


def test_upgrade_requests_are_answered_as_plain_http(mb: Modelberth) -> None:
    answer = exchange(
        mb, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert split(answer)[0] == 200


def test_redoc_and_docs_follow_the_health_guard(modelberth: Any) -> None:
    mb = modelberth(
        {"server": {"api_keys": ["k"], "protect_health": True}, "models": {"m": fake_model()}}
    )
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(mb.url + path, timeout=10).status_code == 401
        ok = httpx.get(mb.url + path, headers={"authorization": "Bearer k"}, timeout=10)
        assert ok.status_code == 200
    open_mb = modelberth({"models": {"m": fake_model()}})
    assert httpx.get(open_mb.url + "/redoc", timeout=10).status_code == 200


def test_an_admin_key_may_also_call_v1(modelberth: Any) -> None:
    mb = modelberth(
        {"server": {"api_keys": ["user"], "admin_keys": ["admin"]}, "models": {"m": fake_model()}}
    )
    for key in ("user", "admin"):
        resp = httpx.post(
            mb.url + "/v1/chat/completions",
            json={"model": "m"},
            headers={"authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        models = httpx.get(
            mb.url + "/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=10
        )
        assert models.status_code == 200
    assert (
        httpx.get(
            mb.url + "/api/models", headers={"authorization": "Bearer user"}, timeout=10
        ).status_code
        == 401
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
