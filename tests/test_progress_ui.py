"""The dashboard's models table during a start (the percent and ETA from start_progress
events and status.progress) and in the states other work adds (sleeping, waking), in a real
Chromium against a real modelberth."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Route, expect

from browser import close, launch, open_page
from conftest import fake_model


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch()


def test_a_starting_row_shows_percent_then_eta(browser: Browser, modelberth: Any) -> None:
    mb = modelberth(
        {"models": {"m": fake_model(None, "--print-load-lines", "vllm", "--start-delay", "3")}}
    )
    watched = open_page(browser, mb.url)
    try:
        watched.page.goto(f"{mb.url}/ui#models")
        row = watched.page.locator('tr[data-model="m"]')
        expect(row.locator(".state")).to_have_text("stopped")
        row.locator(".action-start").click()
        shown = row.locator(".start-progress")
        expect(shown).to_contain_text("%", timeout=10_000)  # from the vLLM lines
        expect(shown).to_contain_text("loading weights", timeout=10_000)
        expect(row.locator(".state")).to_have_text("ready", timeout=20_000)
        expect(shown).to_have_count(0)
        httpx.post(f"{mb.url}/api/models/m/stop", timeout=20).raise_for_status()
        expect(row.locator(".state")).to_have_text("stopped", timeout=10_000)
        row.locator(".action-start").click()  # the second start knows how long the first took
        expect(shown).to_contain_text("eta", timeout=10_000)
        expect(row.locator(".state")).to_have_text("ready", timeout=20_000)
        watched.assert_clean()
    finally:
        close(watched)


def test_sleeping_and_waking_rows(browser: Browser, modelberth: Any) -> None:
    """The server here has no sleep yet: its real statuses are answered with those states
    (and the GPUs a running model has), as a server that has it would."""
    mb = modelberth({"models": {"a": fake_model(None), "b": fake_model(None)}})
    real = httpx.get(f"{mb.url}/api/models", timeout=10).json()
    for status, state in zip(real["models"], ("sleeping", "waking"), strict=True):
        status.update(state=state, gpus=[0, 1], progress=None)
    real["models"][1]["progress"] = {
        "elapsed_seconds": 1.2,
        "percent": 40,
        "eta_seconds": 2.5,
        "phase": "waking",
    }

    def answer(route: Route) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(real))

    watched = open_page(browser, mb.url)
    try:
        watched.page.route(f"{mb.url}/api/models", answer)
        watched.page.goto(f"{mb.url}/ui#models")
        asleep = watched.page.locator('tr[data-model="a"]')
        waking = watched.page.locator('tr[data-model="b"]')
        expect(asleep.locator(".state")).to_have_text("sleeping")
        expect(asleep.locator(".state")).to_have_class("state state-sleeping")
        expect(waking.locator(".state")).to_have_text("waking")
        expect(waking.locator(".start-progress")).to_have_text("40% · eta 3s · waking")
        expect(waking.locator(".action-restart")).to_be_disabled()  # busy, like starting
        expect(asleep.locator(".runtime-detail")).to_contain_text("GPU 0, 1")
        colour = asleep.locator(".state").evaluate("el => getComputedStyle(el).color")
        own, stopped = (
            watched.page.evaluate(
                """(name) => {
            const probe = document.body.appendChild(document.createElement("span"));
            probe.style.color = `var(${name})`;
            const colour = getComputedStyle(probe).color;
            probe.remove();
            return colour;
        }""",
                name,
            )
            for name in ("--sleeping", "--stopped")
        )
        assert colour == own != stopped  # a colour of its own, not a stopped model's
        expect(watched.page.locator(".summary")).to_contain_text("1 sleeping")
        watched.assert_clean()
    finally:
        close(watched)
