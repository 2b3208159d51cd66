"""The dashboard shows where models run on a multi-node runtime: the node on the model's row
and a bar per node on the Resources tab. Two docker.hosts entries both point at this
machine's engine (addresses and names differ; that they share an engine plays no part in
what the page shows), in a real Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

import test_docker
from browser import close, launch, open_page, screenshot_dir
from test_docker import fake_container

engine, image, containers = test_docker.engine, test_docker.image, test_docker.containers


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch()


def test_nodes_on_the_models_and_resources_tabs(
    containers: Any, modelberth: Any, image: str, tmp_path: Path, browser: Browser
) -> None:
    local = "unix:///var/run/docker.sock"
    mb = modelberth(
        {
            "docker": {
                "hosts": [
                    {"name": "alpha", "url": local, "memory_mb": 300},
                    {"name": "beta", "url": local, "memory_mb": 200},
                ]
            },
            "models": {"m": fake_container(image, tmp_path, memory_mb=250)},
        }
    )
    with mb.client() as client:
        assert (
            client.post("/v1/chat/completions", json={"model": "m", "messages": []}).status_code
            == 200
        )
    assert mb.status("m")["node"]["name"] == "alpha"  # only alpha has 250 MiB
    watched = open_page(browser, mb.url)
    try:
        watched.page.goto(f"{mb.url}/ui#models")
        row = watched.page.locator('tr[data-model="m"]')
        expect(row.locator(".runtime-detail")).to_contain_text("on alpha (127.0.0.1)")
        watched.page.goto(f"{mb.url}/ui#resources")
        alpha = watched.page.locator('.node-box[data-node="alpha"]')
        expect(alpha).to_contain_text("Node alpha · 127.0.0.1 (docker)")
        expect(alpha).to_contain_text("250 MiB / 300 MiB · budget 300 MiB")
        expect(alpha.locator(".legend")).to_contain_text("m 250 MiB")
        expect(alpha.locator(".legend")).not_to_contain_text("other")  # a node has no other
        expect(alpha).not_to_contain_text("not measured")
        expect(watched.page.locator('.node-box[data-node="beta"]')).to_contain_text("0 B / 200 MiB")
        shots = screenshot_dir(tmp_path / "screenshots")
        watched.page.screenshot(path=str(shots / "resources-nodes.png"), full_page=True)
        watched.assert_clean()
    finally:
        close(watched)
