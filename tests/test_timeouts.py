"""Upstreams that accept a request and never answer, stall mid-answer, or hang whole
(SIGSTOP): clients get a 504 in OpenAI's shape instead of waiting for ever, and a model whose
upstream keeps timing out is restarted."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from conftest import events_of, fake_model, wait_for

CHAT = "/v1/chat/completions"


def test_no_first_byte_within_first_byte_timeout_is_504(modelberth: Any, tmp_path: Path) -> None:
    events = tmp_path / "ev"
    mb = modelberth(
        {"models": {"m": fake_model(events, first_byte_timeout=1, max_timeouts=5, stop_timeout=1)}}
    )
    with mb.client() as client:
        began = time.monotonic()
        response = client.post(CHAT, json={"model": "m", "sleep": 30})
        assert time.monotonic() - began < 5
        assert response.status_code == 504
        error = response.json()["error"]
        assert error["code"] == "upstream_timeout" and error["type"] == "server_error"
        assert "first_byte_timeout" in error["message"]
        # Not sent again behind the client's back, and the model keeps serving.
        assert len(events_of(events, "request")) == 1
        assert client.post(CHAT, json={"model": "m"}).status_code == 200
        assert mb.status("m")["in_flight"] == 0


def test_a_stream_that_stalls_ends_with_an_sse_error_event(modelberth: Any) -> None:
    mb = modelberth(
        {"models": {"m": fake_model(stream_stall_timeout=1, max_timeouts=5, stop_timeout=1)}}
    )
    with mb.client() as client:
        began = time.monotonic()
        response = client.post(
            CHAT, json={"model": "m", "stream": True, "chunks": 3, "chunk_delay": 30}
        )
        assert time.monotonic() - began < 5
        assert response.status_code == 200
        assert response.text.count("tok0") == 1
        payload = json.loads(response.text.split("event: error\ndata: ", 1)[1].split("\n")[0])
        assert payload["error"]["code"] == "upstream_timeout"
        assert "stream_stall_timeout" in payload["error"]["message"]
        # A stream slower than the limit between chunks, but never silent that long, is fine.
        slow = client.post(
            CHAT, json={"model": "m", "stream": True, "chunks": 4, "chunk_delay": 0.4}
        )
        assert "event: error" not in slow.text and slow.text.count("tok") == 4


def test_a_sigstopped_upstream_is_marked_failed_and_restarted(
    modelberth: Any, tmp_path: Path
) -> None:
    """A SIGSTOPped llama-server once hung its clients 320 s while /api/models said ready."""
    events = tmp_path / "ev"
    mb = modelberth(
        {"models": {"m": fake_model(events, first_byte_timeout=1, max_timeouts=2, stop_timeout=1)}}
    )
    with mb.client() as client:
        assert client.post(CHAT, json={"model": "m"}).status_code == 200
        hung = mb.status("m")["runtime_id"]
        pid = int(hung)
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(2):
                response = client.post(CHAT, json={"model": "m"})
                assert response.status_code == 504, response.text
            # Two timeouts in a row: failed, the hung upstream killed, a new one started.
            wait_for(
                lambda: (
                    mb.status("m")["state"] == "ready"
                    and mb.status("m")["runtime_id"] not in (None, hung)
                ),
                timeout=15,
            )
            assert client.post(CHAT, json={"model": "m"}).status_code == 200
            wait_for(lambda: not _alive(pid), timeout=15)
        finally:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        assert mb.status("m")["in_flight"] == 0
        assert "ready -> failed (2 upstream timeouts in a row" in mb.log()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
