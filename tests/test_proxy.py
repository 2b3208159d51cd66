"""The proxy path: errors in OpenAI's shape, streaming untouched, disconnects, passthrough."""

from __future__ import annotations

import itertools
import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Modelberth, events_of, fake_model, wait_for

CHAT = "/v1/chat/completions"


@pytest.fixture
def mb(modelberth: Any, tmp_path: Path) -> Modelberth:
    server: Modelberth = modelberth(
        {
            "server": {"max_body_mb": 0.01},
            "models": {"m": fake_model(tmp_path / "events", aliases=["gpt-4o-mini"])},
        }
    )
    return server


def assert_error(
    response: httpx.Response, status: int, code: str | None, kind: str = "invalid_request_error"
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["message"]
    assert error["type"] == kind
    assert error["code"] == code
    return error


def assert_still_serving(client: httpx.Client) -> None:
    response = client.post(CHAT, json={"model": "m", "messages": []})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "hello"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b'{"model": "nope", "messages": []}', "application/json", 404, "model_not_found"),
        (b'{"model": "m", "messages": [', "application/json", 400, "invalid_json"),
        (b"\xff\xfe", "application/json", 400, "invalid_json"),
        (b'["m"]', "application/json", 400, "invalid_body"),
        (b'{"messages": []}', "application/json", 400, "missing_model"),
        (b'{"model": 42}', "application/json", 400, "invalid_model"),
        (
            b'{"model": "m", "pad": "' + b"x" * 20_000 + b'"}',
            "application/json",
            413,
            "request_too_large",
        ),
    ],
    ids=[
        "unknown-model",
        "malformed",
        "not-utf8",
        "not-object",
        "no-model",
        "model-not-string",
        "too-large",
    ],
)
def test_bad_requests_get_openai_errors_and_lose_nothing(
    mb: Modelberth, body: bytes, content_type: str, status: int, code: str
) -> None:
    with mb.client() as client:
        response = client.post(CHAT, content=body, headers={"content-type": content_type})
        error = assert_error(response, status, code)
        if code == "model_not_found":
            assert "nope" in error["message"]
        if code in ("missing_model", "invalid_model"):
            assert error["param"] == "model"
        assert_still_serving(client)


def test_oversized_chunked_body_is_413(mb: Modelberth) -> None:
    def chunks() -> Any:
        yield b'{"model": "m", "pad": "'
        for _ in range(10):
            yield b"x" * 4096
        yield b'"}'

    with mb.client() as client:
        response = client.post(CHAT, content=chunks())
        assert_error(response, 413, "request_too_large")
        assert_still_serving(client)


def test_an_oversized_upload_is_refused_without_reading_it(mb: Modelberth) -> None:
    with socket.create_connection(("127.0.0.1", mb.port), timeout=10) as sock:
        sock.sendall(
            b"POST " + CHAT.encode() + b" HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/json\r\ncontent-length: 1073741824\r\n\r\n"
            b'{"model": "m", "messages": ['
        )
        answer = b""
        while piece := sock.recv(65536):  # the server shuts its side after the answer
            answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "request_too_large"
    with mb.client() as client:
        assert_still_serving(client)


def test_wrong_method_and_unknown_path(mb: Modelberth) -> None:
    with mb.client() as client:
        wrong = client.get(CHAT)
        assert_error(wrong, 405, "method_not_allowed")
        assert wrong.headers["allow"] == "POST"
        assert_error(client.get("/nope"), 404, "not_found")
        assert_error(client.post("/api/nope"), 404, "not_found")
        assert_still_serving(client)


def test_alias_and_any_v1_post_with_a_model_is_forwarded(mb: Modelberth) -> None:
    with mb.client() as client:
        chat = client.post(CHAT, json={"model": "gpt-4o-mini", "messages": []})
        assert chat.status_code == 200
        assert chat.json()["model"] == "gpt-4o-mini"  # the body is forwarded untouched
        other = client.post("/v1/rerank?x=1", json={"model": "m", "query": "q"})
        assert other.status_code == 200
        assert other.json()["path"] == "/v1/rerank"
        assert other.json()["query"] == "x=1"


def test_multipart_model_field_is_understood(mb: Modelberth) -> None:
    with mb.client() as client:
        response = client.post(
            "/v1/audio/transcriptions",
            data={"model": "m"},
            files={"file": ("a.wav", b"RIFF....", "audio/wav")},
        )
        assert response.status_code == 200
        assert response.json()["path"] == "/v1/audio/transcriptions"
        assert response.json()["headers"]["Content-Type"].startswith("multipart/form-data")


def test_headers_forwarded_except_hop_by_hop(mb: Modelberth) -> None:
    with mb.client() as client:
        response = client.post(
            CHAT,
            json={"model": "m", "messages": []},
            headers={"X-Request-Id": "abc", "traceparent": "00-1-2-01", "Connection": "keep-alive"},
        )
    seen = {k.lower(): v for k, v in response.json()["echo"]["headers"].items()}
    assert seen["x-request-id"] == "abc"
    assert seen["traceparent"] == "00-1-2-01"
    assert "keep-alive" not in seen.get("connection", "")
    assert seen["content-type"] == "application/json"
    # The answer's headers come from the upstream, but only one Date (uvicorn's).
    assert len(response.headers.get_list("date")) == 1
    assert response.headers["server"].startswith("Python")  # the fake upstream's aiohttp


def test_connection_named_headers_are_dropped_and_forwarding_headers_not_trusted(
    mb: Modelberth,
) -> None:
    with mb.client() as client:
        response = client.post(
            CHAT,
            json={"model": "m", "messages": []},
            headers={
                "Connection": "keep-alive, X-Secret",
                "X-Secret": "hop",
                "Expect": "100-continue",
                "X-Forwarded-For": "6.6.6.6",
                "X-Forwarded-Host": "evil.example",
                "X-Forwarded-Proto": "https",
                "Forwarded": "for=6.6.6.6",
                "X-Real-IP": "6.6.6.6",
            },
        )
    seen = {k.lower(): v for k, v in response.json()["echo"]["headers"].items()}
    assert "x-secret" not in seen and "expect" not in seen
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{mb.port}"
    assert "forwarded" not in seen and "x-real-ip" not in seen


def test_a_trusted_proxys_forwarding_headers_are_extended(modelberth: Any) -> None:
    mb = modelberth({"server": {"trusted_proxies": ["127.0.0.0/8"]}, "models": {"m": fake_model()}})
    with mb.client() as client:
        response = client.post(
            CHAT,
            json={"model": "m", "messages": []},
            headers={
                "X-Forwarded-For": "203.0.113.7",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "models.example",
            },
        )
    seen = {k.lower(): v for k, v in response.json()["echo"]["headers"].items()}
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "models.example"


def test_upstream_passthrough_route(mb: Modelberth) -> None:
    with mb.client() as client:
        got = client.get("/upstream/m/echo/a/b", params={"q": "1"})
        assert got.status_code == 200
        assert got.json() == {**got.json(), "method": "GET", "path": "/echo/a/b", "query": "q=1"}
        posted = client.post("/upstream/gpt-4o-mini/echo/x", content=b"12345")
        assert posted.json()["body_bytes"] == 5
        assert_error(client.get("/upstream/nope/health"), 404, "model_not_found")


def test_stream_is_relayed_chunk_by_chunk(mb: Modelberth) -> None:
    arrivals: list[float] = []
    pieces: list[bytes] = []
    with mb.client() as client:
        began = time.monotonic()
        with client.stream(
            "POST", CHAT, json={"model": "m", "stream": True, "chunks": 5, "chunk_delay": 0.3}
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for piece in response.iter_raw():
                arrivals.append(time.monotonic() - began)
                pieces.append(piece)
    assert b"".join(pieces).count(b"data: ") == 6
    # Each event arrives on its own, ~0.3 s apart: nothing waits for the end of the stream.
    assert len(pieces) >= 5
    assert arrivals[0] < arrivals[-1] - 1.0
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert sum(1 for gap in gaps if gap > 0.2) >= 4


def test_client_disconnect_cancels_the_upstream_request(mb: Modelberth, tmp_path: Path) -> None:
    events = tmp_path / "events"
    with mb.client() as client:
        with client.stream(
            "POST", CHAT, json={"model": "m", "stream": True, "chunks": 100, "chunk_delay": 0.1}
        ) as response:
            iterator = response.iter_raw()
            next(iterator)
            next(iterator)
        wait_for(lambda: events_of(events, "cancelled"), timeout=5)
        assert not events_of(events, "finished")
        wait_for(lambda: mb.status("m")["in_flight"] == 0, timeout=5)
        assert_still_serving(client)


def test_upstream_dying_mid_stream_ends_with_an_sse_error_event(
    modelberth: Any, tmp_path: Path
) -> None:
    mb = modelberth({"models": {"m": fake_model(tmp_path / "ev", "--die-after-chunks", "2")}})
    with mb.client() as client:
        response = client.post(CHAT, json={"model": "m", "stream": True, "chunks": 5})
        assert response.status_code == 200
        text = response.text
        assert text.count("tok") == 2
        assert "event: error" in text
        payload = json.loads(text.split("event: error\ndata: ", 1)[1].split("\n", 1)[0])
        assert payload["error"]["code"] == "upstream_error"
        assert payload["error"]["type"] == "server_error"
        wait_for(lambda: mb.status("m")["state"] == "failed", timeout=3)
        # The next request restarts the model and is served.
        assert client.post(CHAT, json={"model": "m", "messages": []}).status_code == 200


def test_a_request_right_after_an_upstream_crash_waits_for_the_restart(
    modelberth: Any, tmp_path: Path
) -> None:
    """Once 1 run in 4 gave 502 "connection reset by peer": the plain request reached the dead
    upstream's pooled connection before its exit was processed."""
    events = tmp_path / "ev"
    mb = modelberth({"models": {"m": fake_model(events, "--die-after-chunks", "2")}})
    with mb.client() as client:
        for _ in range(3):  # pooled connections to the upstream, for the next one to find
            assert client.post(CHAT, json={"model": "m", "messages": []}).status_code == 200
        for round_ in range(6):
            streamed = client.post(CHAT, json={"model": "m", "stream": True, "chunks": 5})
            assert "event: error" in streamed.text
            plain = client.post(CHAT, json={"model": "m", "messages": []})  # at once
            assert plain.status_code == 200, (round_, plain.text)
    # Every plain request ran once, on a live upstream: 3 + 6 plain and 6 streamed.
    assert len(events_of(events, "request")) == 15


def test_upstream_dying_before_answering_is_502(mb: Modelberth) -> None:
    with mb.client() as client:
        response = client.post(CHAT, json={"model": "m", "messages": [], "die": True})
        error = assert_error(response, 502, "upstream_error", kind="server_error")
        assert "'m'" in error["message"]
        assert_still_serving(client)


def test_upstream_dying_in_a_small_answer_is_a_clean_502(mb: Modelberth) -> None:
    # An answer of known length up to 64 KB is read whole before anything is sent, so an
    # upstream that dies halfway leaves the client a proper error, not a cut connection.
    with mb.client() as client:
        response = client.post(CHAT, json={"model": "m", "messages": [], "die_mid_body": True})
        error = assert_error(response, 502, "upstream_error", kind="server_error")
        assert "during" not in error["message"]  # the client never saw a byte of it
        assert_still_serving(client)


def test_v1_models_lists_every_model_and_alias(mb: Modelberth) -> None:
    with mb.client() as client:
        listing = client.get("/v1/models").json()
        assert listing["object"] == "list"
        ids = {entry["id"]: entry for entry in listing["data"]}
        assert set(ids) == {"m", "gpt-4o-mini"}
        assert ids["m"]["owned_by"] == "modelberth"
        assert ids["m"]["modelberth"]["state"] == "stopped"
        assert ids["gpt-4o-mini"]["modelberth"]["alias_of"] == "m"
        assert client.get("/v1/models/gpt-4o-mini").json()["id"] == "gpt-4o-mini"
        assert_error(client.get("/v1/models/nope"), 404, "model_not_found")


def test_logs_endpoint_returns_and_follows_upstream_output(mb: Modelberth) -> None:
    with mb.client() as client:
        assert client.post("/api/models/m/start").status_code == 200
        text = client.get("/api/models/m/logs").text
        assert "fake upstream starting on port" in text
        lines = client.get("/api/models/m/logs", params={"format": "json"}).text.splitlines()
        assert any(json.loads(line)["stream"] == "stdout" for line in lines)
        with client.stream(
            "GET", "/api/models/m/logs", params={"follow": "true", "tail": 0}
        ) as follow:
            client.post("/api/models/m/restart")
            first = next(follow.iter_lines())
        assert first


def test_events_stream_reports_state_changes(mb: Modelberth) -> None:
    with mb.client() as client, client.stream("GET", "/api/events") as events:
        lines = events.iter_lines()
        assert next(lines).startswith(": connected")
        client.post("/api/models/m/start")
        seen = []
        for line in lines:
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
            if len(seen) == 2:
                break
    assert [(e["from"], e["to"]) for e in seen] == [("stopped", "starting"), ("starting", "ready")]
    assert seen[1]["start_seconds"] > 0


def test_health_is_open(mb: Modelberth) -> None:
    body = httpx.get(mb.url + "/health").json()
    assert body["status"] == "ok"
    assert body["models"] == {"stopped": 1}


def test_api_keys_guard_inference_and_admin_keys_guard_management(
    modelberth: Any, tmp_path: Path
) -> None:
    mb = modelberth(
        {
            "server": {"api_keys": ["sk-user"], "admin_keys": ["sk-admin"]},
            "models": {"m": fake_model(None)},
        }
    )
    body = {"model": "m", "messages": []}
    with mb.client() as client:
        assert_error(client.post(CHAT, json=body), 401, "invalid_api_key")
        assert_error(
            client.post(CHAT, json=body, headers={"Authorization": "Bearer no"}),
            401,
            "invalid_api_key",
        )
        ok = client.post(CHAT, json=body, headers={"Authorization": "Bearer sk-user"})
        assert ok.status_code == 200
        seen = {k.lower() for k in ok.json()["echo"]["headers"]}
        assert "authorization" not in seen  # the key never reaches the upstream
        assert client.post(CHAT, json=body, headers={"x-api-key": "sk-user"}).status_code == 200
        assert_error(client.get("/v1/models"), 401, "invalid_api_key")
        assert_error(
            client.get("/api/models", headers={"Authorization": "Bearer sk-user"}),
            401,
            "invalid_api_key",
        )
        admin = client.get("/api/models", headers={"Authorization": "Bearer sk-admin"})
        assert admin.status_code == 200
        assert client.get("/health").status_code == 200


def test_port_already_taken_by_fixed_port_fails_clearly(modelberth: Any) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        mb = modelberth({"models": {"m": fake_model(None, port=port, start_timeout=5)}})
        with mb.client() as client:
            response = client.post(CHAT, json={"model": "m", "messages": []})
    assert response.status_code == 503
    assert "exited during start" in response.json()["error"]["message"]


def test_keys_are_never_logged_and_health_can_be_protected(modelberth: Any) -> None:
    mb = modelberth(
        {
            "server": {
                "api_keys": ["sk-secret-user"],
                "admin_keys": ["sk-secret-adm"],
                "protect_health": True,
            },
            "models": {"m": fake_model(None)},
        },
        start=False,
    )
    mb.start(extra=["--access-log"])
    with mb.client(headers={"Authorization": "Bearer sk-secret-user"}) as client:
        assert client.post(CHAT, json={"model": "m", "messages": []}).status_code == 200
        assert client.get("/health").status_code == 200
        assert client.get("/health", headers={"Authorization": "Bearer nope"}).status_code == 401
    with mb.client() as client:
        assert client.get("/api/models", headers={"x-api-key": "sk-secret-adm"}).status_code == 200
        assert client.get("/health").status_code == 401
    log = mb.log()
    assert "POST /v1/chat/completions" in log
    assert "sk-secret" not in log
