"""Remote endpoints as models (runtime: remote) and fallbacks: a real modelberth in front of
fake_upstream.py processes the tests start themselves on loopback, playing the remote (another
modelberth, a vLLM cluster, a hosted API). Nothing here leaves 127.0.0.1."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import FAKE, Modelberth, events_of, fake_model, free_port, wait_for
from modelberth.config import ConfigError, parse_config
from modelberth.config.remote import RemoteSpec
from modelberth.proxy.remote import remote_body

CHAT = "/v1/chat/completions"
HELLO = {"messages": [{"role": "user", "content": "hi"}]}


class Remote:
    """fake_upstream.py on a loopback port, started by the test: a remote endpoint."""

    def __init__(self, tmp: Path, *extra: str, cert: Path | None = None) -> None:
        self.port = free_port()
        self.events = tmp / f"remote-{self.port}.events"
        tls = ["--tls-cert", str(cert), "--tls-key", str(cert.with_suffix(".key"))] if cert else []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                FAKE,
                "--port",
                str(self.port),
                "--events",
                str(self.events),
                "--silent",
                *tls,
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        scheme = "https" if cert else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"

        def up() -> bool:
            try:
                verify = ssl.create_default_context(cafile=cert) if cert else True
                return httpx.get(self.url + "/health", timeout=1, verify=verify).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=20)

    def requests(self) -> int:
        return len(events_of(self.events, "request"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Any]:
    """Factory: remote(*fake_upstream_args) starts a remote endpoint; all stop after."""
    started: list[Remote] = []

    def make(*extra: str, cert: Path | None = None) -> Remote:
        started.append(Remote(tmp_path, *extra, cert=cert))
        return started[-1]

    yield make
    for one in started:
        one.stop()


def remote_model(base_url: str, **settings: Any) -> dict[str, Any]:
    return {"runtime": "remote", "base_url": base_url, **settings}


def scrape(mb: Modelberth) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(mb.url + "/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def dead_url() -> str:
    """A loopback port nothing listens on: connections are refused."""
    return f"http://127.0.0.1:{free_port()}/v1"


# --- the config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "origin", "prefix", "target"),
    [
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000", "", "/v1/chat/completions"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000", "", "/v1/chat/completions"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000", "", "/v1/chat/completions"),
        (
            "https://api.example.com/openai/v1",
            "https://api.example.com",
            "/openai/v1",
            "/openai/v1/chat/completions",
        ),
        (
            "https://api.example.com:8443/x",
            "https://api.example.com:8443",
            "/x",
            "/x/chat/completions",
        ),
        ("http://[::1]:80/v1", "http://[::1]", "", "/v1/chat/completions"),
    ],
    ids=["v1", "bare", "slash", "prefix", "port", "ipv6"],
)
def test_a_base_url_resolves_once_to_address_host_header_and_paths(
    url: str, origin: str, prefix: str, target: str
) -> None:
    remote = RemoteSpec.build("m", url, "sk-1", None)
    assert (remote.origin, remote.prefix) == (origin, prefix)
    assert remote.target("/v1/chat/completions") == target
    assert remote.target("/tokenize") == "/tokenize"  # outside /v1: the host's root
    assert remote.auth == (b"authorization", b"Bearer sk-1")
    assert "sk-1" not in repr(remote)  # a spec may be logged: its key is not in it
    assert remote.model == "m"
    if "::1" in url:
        assert (remote.host, remote.port) == ("::1", 80)


def test_the_body_sent_to_a_remote_carries_its_name_for_the_model() -> None:
    remote = RemoteSpec.build("m", "http://h/v1", None, "served")
    body = b'{"model": "alias", "messages": [{"content": "\\"model\\": \\"x\\""}], "n": 1}'
    sent = json.loads(remote_body(remote, body, "alias", CHAT))
    assert sent == {**json.loads(body), "model": "served"}  # nothing else changes
    assert remote_body(remote, b'{"model": "served"}', "served", CHAT) == b'{"model": "served"}'
    form = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nalias\r\n--b--\r\n'
    assert remote_body(remote, form, "alias", "/v1/audio/transcriptions") == form
    assert remote_body(remote, body, "alias", "/upstream/m/v1/x") == body  # raw route


def test_fallbacks_resolve_depth_first_without_repeats() -> None:
    remote = {"runtime": "remote", "base_url": "http://h/v1"}
    config = parse_config(
        yaml.safe_dump(
            {
                "models": {
                    "a": {**remote, "fallbacks": ["b", "c-alias"]},
                    "b": {**remote, "fallbacks": ["d", "c"]},
                    "c": {**remote, "aliases": ["c-alias"], "fallbacks": ["d"]},
                    "d": remote,
                }
            }
        ),
        env={},
    )
    order = {name: spec.fallbacks for name, spec in config.specs().items()}
    assert order == {"a": ("b", "d", "c"), "b": ("d", "c"), "c": ("d",), "d": ()}


BAD = """\
models:
  r:
    runtime: remote
    fallbacks: [l, nope]
  l:
    command: [srv, '${PORT}']
    fallbacks: [l2]
  l2:
    command: [srv, '${PORT}']
    fallbacks: [l]
  x:
    runtime: remote
    base_url: http://127.0.0.1:9/v1
    command: [srv]
    image: img
  y:
    command: [srv, '${PORT}']
    base_url: http://127.0.0.1:9/v1
  z:
    runtime: remote
    base_url: ftp://127.0.0.1/v1
"""


def test_config_errors_name_their_place(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BAD, "bad.yaml", env={})
    found = [(i.path, i.line, i.message) for i in caught.value.issues]
    assert found == [
        ("models.r", 2, "runtime: remote needs `base_url` (e.g. http://host:8000/v1)"),
        ("models.r.fallbacks.1", 4, "fallback 'nope' of 'r' is not a configured model or alias"),
        ("models.l2.fallbacks.0", 10, "fallback loop: l -> l2 -> l"),
        (
            "models.x",
            11,
            "command, image: not for runtime: remote (it runs elsewhere: nothing "
            "to start, stop or budget)",
        ),
        ("models.y", 16, "base_url: only for runtime: remote"),
        ("models.z.base_url", 21, "'ftp://127.0.0.1/v1' must start with http:// or https://"),
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    checked = subprocess.run(
        [sys.executable, "-m", "modelberth", "check", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 2
    assert f"{bad}:line 10: models.l2.fallbacks.0: fallback loop: l -> l2 -> l" in checked.stderr
    assert "models.r.fallbacks.1" in checked.stderr and "models.x" in checked.stderr


def test_a_model_cannot_fall_back_on_itself() -> None:
    with pytest.raises(ConfigError, match=r"models\.a\.fallbacks\.0: fallback loop: a -> a"):
        parse_config(
            "models:\n  a: {runtime: remote, base_url: 'http://h', fallbacks: [a]}\n", env={}
        )


# --- serving through a remote endpoint -----------------------------------------------------


@pytest.mark.parametrize("path", ["/v1", ""], ids=["base-v1", "bare-host"])
def test_chat_stream_and_embeddings_through_a_remote(
    modelberth: Any, remote: Any, path: str
) -> None:
    far = remote()
    mb = modelberth(
        {
            "server": {"api_keys": ["client-key"]},
            "models": {
                "far": remote_model(far.url + path, api_key="${REMOTE_KEY}", aliases=["gpt-4o"])
            },
        },
        start=False,
    ).start(env={"REMOTE_KEY": "remote-secret"})
    with mb.client(headers={"Authorization": "Bearer client-key"}) as client:
        chat = client.post(CHAT, json={"model": "gpt-4o", **HELLO})
        assert chat.status_code == 200, chat.text
        answer = chat.json()
        assert answer["model"] == "gpt-4o"  # the name the client sent, as for local models
        echo = answer["echo"]
        assert echo["path"] == "/v1/chat/completions"
        assert echo["sent_model"] == "far"  # the alias means nothing to the remote
        seen = {k.lower(): v for k, v in echo["headers"].items()}
        assert seen["authorization"] == "Bearer remote-secret"  # the config's, not the client's
        assert "client-key" not in json.dumps(seen)
        assert "accept-encoding" not in seen
        assert seen["host"] == f"127.0.0.1:{far.port}"

        with client.stream(
            "POST", CHAT, json={"model": "far", "stream": True, "chunks": 3, **HELLO}
        ) as streamed:
            assert streamed.headers["content-type"].startswith("text/event-stream")
            text = "".join(streamed.iter_text())
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        assert [e["choices"][0]["delta"]["content"] for e in events] == ["tok0 ", "tok1 ", "tok2 "]
        assert text.rstrip().endswith("data: [DONE]")

        embedded = client.post("/v1/embeddings", json={"model": "far", "input": ["a b", "c"]})
        assert embedded.status_code == 200, embedded.text
        assert [d["embedding"] for d in embedded.json()["data"]] == [
            [3.0, 1.0, 0.5],
            [1.0, 1.0, 0.5],
        ]
        assert embedded.json()["model"] == "far"

        status = client.get("/api/models/far").json()
        assert status["state"] == "ready"
        assert status["runtime"] == "remote"
        assert status["base_url"] == far.url + path
        assert status["port"] is None and status["runtime_id"] is None
        assert status["memory_bytes"] is None and status["idle_stop_at"] is None
        shown = client.get("/api/config").json()["config"]["models"]["far"]
        assert shown["api_key"] == "***"
        assert "remote-secret" not in client.get("/api/config").text
        assert [m["name"] for m in client.get("/api/ps").json()["models"]] == ["far"]
        listed = client.get("/v1/models").json()["data"]
        assert {m["id"]: m["modelberth"]["state"] for m in listed} == {
            "far": "ready",
            "gpt-4o": "ready",
        }
    assert far.requests() == 2  # the chat and the stream; embeddings are not recorded


def test_a_remote_is_never_started_stopped_evicted_or_idle_stopped(
    modelberth: Any, remote: Any, tmp_path: Path
) -> None:
    far = remote()
    mb = modelberth(
        {
            "defaults": {"idle_timeout": "1s"},
            "resources": {"memory_budget_mb": 100},
            "models": {
                "far": remote_model(far.url + "/v1", upstream_model="served"),
                "a": fake_model(tmp_path / "a.events", memory_mb=80),
                "b": fake_model(tmp_path / "b.events", memory_mb=80),
            },
        }
    )
    with mb.client() as client:
        for action in ("start", "stop", "restart"):
            refused = client.post(f"/api/models/far/{action}")
            assert refused.status_code == 409, refused.text
            assert refused.json()["error"]["code"] == "remote_model"
            assert "remote endpoint" in refused.json()["error"]["message"]
        assert client.post("/api/stop-all").status_code == 200
        assert mb.status("far")["state"] == "ready"
        # a and b cannot both fit: b's start evicts a; the remote costs nothing, stays.
        assert client.post(CHAT, json={"model": "a", **HELLO}).status_code == 200
        assert client.post(CHAT, json={"model": "b", **HELLO}).status_code == 200
        assert mb.status("a")["state"] == "stopped"
        sent = client.post(CHAT, json={"model": "far", **HELLO}).json()
        assert sent["echo"]["sent_model"] == "served"  # upstream_model
        assert sent["model"] == "far"
        wait_for(lambda: mb.status("b")["state"] == "stopped", timeout=10)  # idle: 1 s
        time.sleep(1.5)
        status = mb.status("far")
        assert status["state"] == "ready" and status["idle_timeout"] == 0
        assert status["starts"] == 0  # nothing was ever started for it
        assert status["estimate_memory_bytes"] is None and status["plan_memory_bytes"] is None
    log = mb.log()
    assert "evicting a" in log and "evicting far" not in log


def test_a_base_url_path_replaces_v1(modelberth: Any, remote: Any) -> None:
    far = remote()
    mb = modelberth({"models": {"far": remote_model(far.url + "/echo/v1")}})
    with mb.client() as client:
        answer = client.post(CHAT + "?x=1", json={"model": "far", **HELLO}).json()
    assert answer["path"] == "/echo/v1/chat/completions"
    assert answer["query"] == "x=1"


def test_https_to_a_remote_with_its_own_certificate(
    modelberth: Any, remote: Any, tmp_path: Path
) -> None:
    cert = tmp_path / "remote.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(cert.with_suffix(".key")),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    far = remote(cert=cert)
    trusting = modelberth(
        {"models": {"far": remote_model(far.url + "/v1", api_key="k")}}, start=False
    ).start(env={"SSL_CERT_FILE": str(cert)})
    with trusting.client() as client:
        for _ in range(3):  # a pooled TLS connection is reused
            answer = client.post(CHAT, json={"model": "far", **HELLO})
            assert answer.status_code == 200, answer.text
            assert answer.json()["echo"]["headers"]["Authorization"] == "Bearer k"
        streamed = client.post(CHAT, json={"model": "far", "stream": True, **HELLO})
        assert streamed.text.count("data: ") == 6
    untrusting = modelberth({"models": {"far": remote_model(far.url + "/v1")}})
    with untrusting.client() as client:
        refused = client.post(CHAT, json={"model": "far", **HELLO})
    assert refused.status_code == 502
    assert "CERTIFICATE_VERIFY_FAILED" in refused.json()["error"]["message"]


def test_a_reload_moves_a_remote_in_place(modelberth: Any, remote: Any) -> None:
    one, two = remote(), remote()
    mb = modelberth({"models": {"far": remote_model(one.url)}})
    with mb.client() as client:
        assert client.post(CHAT, json={"model": "far", **HELLO}).status_code == 200
        config = yaml.safe_load(mb.config_path.read_text())
        config["models"]["far"]["base_url"] = two.url + "/v1"
        config["models"]["near"] = remote_model(two.url)
        mb.config_path.write_text(yaml.safe_dump(config))
        result = client.post("/api/reload").json()
        assert result["updated"] == ["far"] and result["added"] == ["near"]
        assert client.post(CHAT, json={"model": "far", **HELLO}).status_code == 200
        assert client.post(CHAT, json={"model": "near", **HELLO}).status_code == 200
        assert mb.status("near")["state"] == "ready"
    assert (one.requests(), two.requests()) == (1, 2)


# --- fallbacks -----------------------------------------------------------------------------


def test_a_remote_that_refuses_falls_back_to_a_local_model(modelberth: Any, tmp_path: Path) -> None:
    mb = modelberth(
        {
            "models": {
                "far": remote_model(dead_url(), fallbacks=["near"], aliases=["gpt-4o"]),
                "near": fake_model(tmp_path / "near.events"),
            }
        }
    )
    with mb.client() as client:
        answer = client.post(CHAT, json={"model": "gpt-4o", **HELLO})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "gpt-4o"  # still the name the client sent
        assert answer.json()["choices"][0]["message"]["content"] == "hello"
        streamed = client.post(CHAT, json={"model": "far", "stream": True, "chunks": 2, **HELLO})
        assert streamed.status_code == 200
        assert streamed.text.count("data: ") == 3 and '"model":"far"' in streamed.text
        records = client.get("/api/requests").json()["requests"]
    assert len(events_of(tmp_path / "near.events", "request")) == 2
    # Each attempt is recorded: the remote's failures, then what the fallback answered.
    seen = sorted((r["model"], r["status"]) for r in records)
    assert seen == [("far", 502), ("far", 502), ("near", 200), ("near", 200)]
    failed = [r for r in records if r["status"] == 502]
    assert all("falling back to 'near'" in r["error"] for r in failed)
    assert all(r["requested"] in ("gpt-4o", "far") for r in records)
    samples = scrape(mb)
    assert samples[("modelberth_requests_total", (("model", "far"), ("status", "502")))] == 2
    assert samples[("modelberth_requests_total", (("model", "near"), ("status", "200")))] == 2
    assert samples[("modelberth_fallbacks_total", (("fallback", "near"), ("model", "far")))] == 2
    assert "falling back to 'near'" in mb.log()


def test_a_5xx_before_the_answer_falls_back_and_a_4xx_does_not(
    modelberth: Any, remote: Any, tmp_path: Path
) -> None:
    failing, refusing = remote("--fail-status", "500"), remote("--fail-status", "400")
    mb = modelberth(
        {
            "models": {
                "far": remote_model(failing.url + "/v1", fallbacks=["near"]),
                "picky": remote_model(refusing.url + "/v1", fallbacks=["near"]),
                "near": fake_model(tmp_path / "near.events"),
            }
        }
    )
    with mb.client() as client:
        answer = client.post(CHAT, json={"model": "far", "stream": True, **HELLO})
        assert answer.status_code == 200, answer.text
        assert answer.text.count("data: ") == 6
        embedded = client.post("/v1/embeddings", json={"model": "far", "input": "x"})
        assert embedded.status_code == 200 and embedded.json()["data"]
        refused = client.post(CHAT, json={"model": "picky", **HELLO})
        assert refused.status_code == 400  # the request's own fault: the same anywhere
        assert refused.json()["error"]["message"] == "simulated failure 400"
    assert failing.requests() == 2 and refusing.requests() == 1  # the chat and embeddings
    assert len(events_of(tmp_path / "near.events", "request")) == 1  # the chat, not picky's


def test_a_stream_that_breaks_after_its_first_chunk_is_not_sent_again(
    modelberth: Any, remote: Any, tmp_path: Path
) -> None:
    breaking = remote("--die-after-chunks", "1")
    mb = modelberth(
        {
            "models": {
                "far": remote_model(breaking.url + "/v1", fallbacks=["near"]),
                "near": fake_model(tmp_path / "near.events"),
            }
        }
    )
    with (
        mb.client() as client,
        client.stream(
            "POST",
            CHAT,
            json={"model": "far", "stream": True, "chunks": 4, "chunk_delay": 0.2, **HELLO},
        ) as streamed,
    ):
        assert streamed.status_code == 200
        text = "".join(streamed.iter_text())
    assert "tok0" in text and "tok1" not in text
    assert "event: error" in text and "upstream_error" in text  # the client's failure
    assert events_of(tmp_path / "near.events", "request") == []  # never run twice
    assert "falling back" not in mb.log()


def test_every_candidate_failing_gives_the_last_error_in_the_apis_shape(
    modelberth: Any, tmp_path: Path
) -> None:
    mb = modelberth(
        {
            "models": {
                "far": remote_model(dead_url(), fallbacks=["farther"]),
                "farther": remote_model(dead_url(), fallbacks=["broken"]),
                "broken": fake_model(None, "--exit-code", "3", start_timeout="10s"),
                "two": remote_model(dead_url(), fallbacks=["farther2"]),
                "farther2": remote_model(dead_url()),
            }
        }
    )
    with mb.client() as client:
        # The last candidate failed to start: its 503, in OpenAI's shape.
        last = client.post(CHAT, json={"model": "far", **HELLO})
        assert last.status_code == 503, last.text
        assert last.json()["error"]["code"] == "model_start_failed"
        assert "'broken'" in last.json()["error"]["message"]
        # Both remotes refused: the last one's 502, in each API's own shape.
        openai = client.post(CHAT, json={"model": "two", **HELLO})
        assert openai.status_code == 502
        assert openai.json()["error"]["code"] == "upstream_error"
        assert "'farther2'" in openai.json()["error"]["message"]
        anthropic = client.post("/v1/messages", json={"model": "two", "max_tokens": 8, **HELLO})
        assert anthropic.status_code == 502
        assert anthropic.json()["type"] == "error"
        assert anthropic.json()["error"]["type"] == "api_error"
        assert "'farther2'" in anthropic.json()["error"]["message"]
        ollama = client.post("/api/chat", json={"model": "two", "stream": False, **HELLO})
        assert ollama.status_code == 502
        assert set(ollama.json()) == {"error"} and "'farther2'" in ollama.json()["error"]
        records = client.get("/api/requests", params={"model": "farther2"}).json()
    assert {r["status"] for r in records["requests"]} == {502}
    samples = scrape(mb)
    assert samples[("modelberth_fallbacks_total", (("fallback", "farther"), ("model", "far")))] == 1
    assert (
        samples[("modelberth_fallbacks_total", (("fallback", "broken"), ("model", "farther")))] == 1
    )


def test_a_local_model_that_cannot_start_falls_back_to_a_remote(
    modelberth: Any, remote: Any
) -> None:
    far = remote()
    mb = modelberth(
        {
            "models": {
                "near": fake_model(None, "--exit-code", "3", fallbacks=["far"]),
                "far": remote_model(far.url + "/v1"),
            }
        }
    )
    with mb.client() as client:
        answer = client.post(CHAT, json={"model": "near", **HELLO})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "near"
        assert answer.json()["echo"]["sent_model"] == "far"
        messages = client.post("/v1/messages", json={"model": "near", "max_tokens": 8, **HELLO})
        assert messages.status_code == 200, messages.text
        assert messages.json()["type"] == "message" and messages.json()["model"] == "near"
    assert mb.status("near")["state"] == "failed"
    assert far.requests() == 2


def test_a_translated_request_is_translated_anew_for_its_fallback(
    modelberth: Any, remote: Any, tmp_path: Path
) -> None:
    """Anthropic's Messages: passed through to a model with `anthropic: native`, translated
    to chat completions for its fallback, which does not speak it."""
    native = remote("--fail-status", "503")
    mb = modelberth(
        {
            "models": {
                "far": remote_model(native.url, anthropic="native", fallbacks=["near"]),
                "near": fake_model(tmp_path / "near.events"),
            }
        }
    )
    with mb.client() as client:
        answer = client.post("/v1/messages", json={"model": "far", "max_tokens": 8, **HELLO})
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"] == [{"type": "text", "text": "hello"}]
    assert answer.json()["model"] == "far"


def test_remote_bodies_are_decoded_only_at_the_top() -> None:
    """Large nested values pass as the bytes they were (msgspec.Raw)."""
    remote = RemoteSpec.build("m", "http://h", None, "served")
    content = "x" * 100_000 + '"model": "inner"'
    body = json.dumps({"model": "a", "messages": [{"role": "user", "content": content}]})
    sent = remote_body(remote, body.encode(), "a", CHAT)
    assert msgspec.json.decode(sent)["messages"][0]["content"] == content
    assert json.loads(sent)["model"] == "served"


def test_the_env_expands_in_remote_settings() -> None:
    config = parse_config(
        "models:\n  r:\n    runtime: remote\n    base_url: ${URL}\n    api_key: ${KEY}\n",
        env={"URL": "https://h/v1", "KEY": "k1"},
    )
    remote = config.specs()["r"].remote
    assert remote is not None and remote.tls
    assert remote.auth == (b"authorization", b"Bearer k1")
