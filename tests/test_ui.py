"""The dashboard at /ui, in a real Chromium, against a real modelberth with real upstreams
(the tiny llama-server model and the fake upstream)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from browser import Watched, close, launch, open_page, screenshot_dir
from conftest import Modelberth, fake_model, llama_command, wait_for

TABS = ["models", "resources", "activity", "logs", "playground", "config"]
# What a loaded tab shows once its data has arrived.
LOADED = {
    "models": 'tr[data-model="tiny"] .state',
    "resources": ".stack-box",
    "activity": "#panel-activity tbody tr",
    "logs": "#log-view .line",
    "playground": "#pg-send",
    "config": "#config-view:not(:empty)",
}


class Servers:
    """Module-scoped servers (the `modelberth` fixture is per test; these are shared to keep
    the module fast), stopped and checked for leaked upstreams at the end like it does."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[Modelberth] = []

    def make(self, config: dict[str, Any]) -> Modelberth:
        directory = self.base / f"mb{len(self.started)}"
        directory.mkdir()
        server = Modelberth(directory, config)
        self.started.append(server)
        return server.start()

    def close(self) -> None:
        leaks = []
        for server in self.started:
            if server.proc is None:
                continue
            assert server.stop() in (0, -signal.SIGTERM, -signal.SIGKILL), server.log()[-3000:]
            leaks += server.kill_leftovers()
        assert not leaks, f"upstream processes outlived modelberth: {leaks}"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    made = Servers(tmp_path_factory.mktemp("ui"))
    yield made
    made.close()


@pytest.fixture(scope="module")
def mb(servers: Servers, tiny_model: Path) -> Modelberth:
    """No keys: the tiny llama model, a fake upstream, and a fake one slow to load."""
    return servers.make(
        {
            "server": {"stream_keepalive": 0.5},
            "models": {
                "tiny": {
                    "command": llama_command(tiny_model, "--embeddings", "--pooling", "mean"),
                    "aliases": ["gpt-4o-mini"],
                },
                "fake": fake_model(None, "--start-delay", "0.5"),
                "slow": fake_model(
                    None, "--start-delay", "2", "--chunks", "12", "--chunk-delay", "0.15"
                ),
                "broken": fake_model(None, "--exit-code", "3", pinned=True),
            },
        }
    )


@pytest.fixture(scope="module")
def keyed(servers: Servers) -> Modelberth:
    return servers.make(
        {
            "server": {"api_keys": ["user-key"], "admin_keys": ["admin-key"]},
            "models": {"fake": fake_model()},
        }
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return screenshot_dir(tmp_path_factory.mktemp("screenshots"))


@pytest.fixture
def page(browser: Browser, mb: Modelberth) -> Iterator[Watched]:
    watched = open_page(browser, mb.url)
    yield watched
    close(watched)


def goto(watched: Watched, tab: str) -> None:
    watched.page.goto(f"{watched.base}/ui#{tab}")
    expect(watched.page.locator(f"#panel-{tab}")).to_be_visible()


def chat(mb: Modelberth, model: str = "fake", **body: Any) -> httpx.Response:
    return httpx.post(
        f"{mb.url}/v1/chat/completions",
        timeout=30,
        json={
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
            **body,
        },
    )


def test_static_files_and_headers(mb: Modelberth) -> None:
    with mb.client(follow_redirects=False) as client:
        root = client.get("/")
        assert root.status_code == 307
        assert root.headers["location"] == "/ui"
        for path in ("/ui", "/ui/", "/ui/index.html"):
            page = client.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in page.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
            assert page.headers["x-content-type-options"] == "nosniff"
            assert page.headers["referrer-policy"] == "no-referrer"
            assert page.headers["cache-control"] == "no-cache"
        script = client.get("/ui/js/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert client.get("/ui/style.css").headers["content-type"].startswith("text/css")
        assert client.head("/ui/js/api.js").status_code == 200
        assert "<script>" not in page.text and " on" + "click=" not in page.text
        for bad in (
            "/ui/nope.js",
            "/ui/%2e%2e/router.py",
            "/ui/..%2frouter.py",
            "/ui/js/..%2f..%2f__init__.py",
            "/ui/%2e%2e%2f%2e%2e%2fapp.py",
        ):
            answer = client.get(bad)
            assert answer.status_code == 404, bad
            assert answer.json()["error"]["code"] == "not_found"


def test_each_tab_loads_cleanly(page: Watched, mb: Modelberth, shots: Path) -> None:
    chat(mb, "fake").raise_for_status()  # something in the activity list and the logs
    for tab in TABS:
        goto(page, tab)
        expect(page.page.locator(LOADED[tab]).first).to_be_visible()
        selected = page.page.locator(f"#tab-{tab}")
        expect(selected).to_have_attribute("aria-selected", "true")
        if tab == "activity":
            page.page.locator("#panel-activity tbody tr[data-id]").first.click()
            expect(page.page.locator("#request-detail dl")).to_be_visible()
        page.page.wait_for_timeout(300)  # let late fetches land before judging
        page.page.screenshot(path=str(shots / f"{tab}.png"), full_page=True)
    page.assert_clean()
    assert any(url.startswith(mb.url + "/api/events") for url in page.urls)


def test_tabs_work_with_the_keyboard(page: Watched) -> None:
    goto(page, "models")
    page.page.locator("#tab-models").focus()
    page.page.keyboard.press("ArrowRight")
    expect(page.page.locator("#tab-resources")).to_be_focused()
    expect(page.page.locator("#panel-resources")).to_be_visible()
    assert page.page.evaluate("location.hash") == "#resources"
    page.page.keyboard.press("End")
    expect(page.page.locator("#panel-config")).to_be_visible()
    page.page.keyboard.press("ArrowRight")  # wraps around
    expect(page.page.locator("#panel-models")).to_be_visible()


def test_start_from_the_page_turns_ready(page: Watched, mb: Modelberth) -> None:
    with mb.client() as client:
        client.post("/api/models/fake/stop").raise_for_status()
    goto(page, "models")
    state = page.page.locator('tr[data-model="fake"] .state')
    expect(state).to_have_text("stopped")
    page.page.evaluate("window.__same_page = true")
    page.page.locator('tr[data-model="fake"] .action-start').click()
    expect(state).to_have_text("ready", timeout=20_000)
    assert page.page.evaluate("window.__same_page") is True  # no reload happened
    assert mb.status("fake")["state"] == "ready"
    expect(page.page.locator('tr[data-model="fake"] .port')).to_contain_text(
        str(mb.status("fake")["port"])
    )
    page.assert_clean()


def test_stop_through_the_api_shows_on_the_page(page: Watched, mb: Modelberth) -> None:
    with mb.client() as client:
        client.post("/api/models/fake/start").raise_for_status()
        goto(page, "models")
        state = page.page.locator('tr[data-model="fake"] .state')
        expect(state).to_have_text("ready")
        page.page.evaluate("window.__same_page = true")
        client.post("/api/models/fake/stop?wait=false").raise_for_status()
    expect(state).to_have_text("stopped", timeout=15_000)
    assert page.page.evaluate("window.__same_page") is True
    page.assert_clean()


def _watch_answer(watched: Watched) -> None:
    """Record every length the assistant's answer takes on screen, as it changes."""
    watched.page.evaluate("""() => {
      window.__lengths = [];
      const observer = new MutationObserver(() => {
        const answer = document.querySelectorAll('#pg-transcript .message.assistant .content');
        const last = answer[answer.length - 1];
        if (last) window.__lengths.push(last.textContent.length);
      });
      observer.observe(document.getElementById('pg-transcript'),
        {childList: true, subtree: true, characterData: true});
    }""")


def test_playground_streams_tokens(page: Watched, mb: Modelberth, shots: Path) -> None:
    goto(page, "playground")
    page.page.locator("#pg-model").select_option("tiny")
    page.page.locator("#pg-max-tokens").fill("24")
    _watch_answer(page)
    page.page.locator("#pg-prompt").fill("Tell me a story")
    page.page.locator("#pg-send").click()
    expect(page.page.locator("#pg-stats .ttft")).to_be_visible(timeout=30_000)
    expect(page.page.locator("#pg-send")).to_be_enabled(timeout=30_000)  # finished
    lengths: list[int] = page.page.evaluate("window.__lengths")
    growing = sorted({n for n in lengths if n > 0})
    assert len(growing) >= 3, lengths  # the answer grew chunk by chunk
    expect(page.page.locator("#pg-stats .ttft")).to_contain_text("TTFT")
    speed = page.page.locator("#pg-stats .speed").inner_text()
    assert any(ch.isdigit() for ch in speed), speed
    page.page.locator("#emb-model").select_option("tiny")
    page.page.locator("#emb-run").click()
    expect(page.page.locator("#emb-result .dimension")).to_have_text("64")
    page.page.screenshot(path=str(shots / "playground-chat.png"), full_page=True)
    page.assert_clean()


def test_playground_shows_a_cold_start_loading(page: Watched, mb: Modelberth) -> None:
    with mb.client() as client:
        client.post("/api/models/slow/stop").raise_for_status()
    goto(page, "playground")
    page.page.locator("#pg-model").select_option("slow")
    page.page.locator("#pg-prompt").fill("hello")
    page.page.locator("#pg-send").click()
    expect(page.page.locator("#pg-progress")).to_contain_text("loading slow", timeout=10_000)
    answer = page.page.locator("#pg-transcript .message.assistant .content")
    expect(answer).to_contain_text("tok0", timeout=15_000)
    early = len(answer.inner_text())
    expect(page.page.locator("#pg-send")).to_be_enabled(timeout=15_000)
    assert len(answer.inner_text()) > early  # more text arrived after the first chunk
    expect(answer).to_contain_text("tok11")
    expect(page.page.locator("#pg-progress")).to_be_empty()
    page.assert_clean()


def test_logs_follow(page: Watched, mb: Modelberth) -> None:
    chat(mb, "tiny").raise_for_status()  # tiny is running and has output
    goto(page, "logs")
    page.page.locator("#logs-source").select_option("tiny")
    lines = page.page.locator("#log-view .line")
    expect(lines.first).to_be_visible()
    time.sleep(0.5)
    before = lines.count()
    chat(mb, "tiny", max_tokens=4).raise_for_status()
    wait_for(lambda: lines.count() > before, timeout=10)
    page.page.locator("#logs-search").fill("EVAL time")  # llama-server's timing lines
    expect(page.page.locator("#log-view mark").first).to_have_text("eval time")
    shown = page.page.locator("#log-view .line .text").all_inner_texts()
    assert len(shown) >= 2
    assert all("eval time" in text for text in shown), shown
    page.page.locator("#logs-source").select_option("")  # modelberth's own log
    expect(lines.first).to_be_visible()
    page.assert_clean()


def test_activity_shows_a_request_just_made(page: Watched, mb: Modelberth) -> None:
    goto(page, "activity")
    expect(page.page.locator("#activity-status")).to_be_visible()
    page.page.wait_for_timeout(300)
    chat(mb, "fake", max_tokens=3).raise_for_status()
    newest = page.page.locator('#panel-activity tbody tr[data-model="fake"]').first
    expect(newest).to_be_visible(timeout=10_000)
    expect(newest).to_contain_text("/v1/chat/completions")
    expect(newest).to_contain_text("200")
    newest.focus()
    page.page.keyboard.press("Enter")
    detail = page.page.locator("#request-detail")
    expect(detail).to_contain_text("Request ")
    expect(detail).to_contain_text("fake")
    expect(detail.locator(".capture-off").first).to_contain_text("capture is off")
    page.page.locator("#activity-status").select_option("error")
    expect(page.page.locator('#panel-activity tbody tr[data-model="fake"]')).to_have_count(0)
    page.assert_clean()


def test_keys_wrong_admin_and_inference(browser: Browser, keyed: Modelberth) -> None:
    refused = ("401", "Unauthorized")  # the key probes fail on purpose
    admin = open_page(browser, keyed.url)
    try:
        admin.page.goto(keyed.url + "/ui")
        expect(admin.page.locator("#auth-form")).to_be_visible()
        admin.page.locator("#auth-key").fill("wrong-key")
        admin.page.locator("#auth-form button[type=submit]").click()
        expect(admin.page.locator("#auth-error")).to_contain_text("refused")
        admin.page.locator("#auth-key").fill("admin-key")
        admin.page.locator("#auth-form button[type=submit]").click()
        expect(admin.page.locator('tr[data-model="fake"] .action-start')).to_be_visible()
        expect(admin.page.locator("#tab-resources")).to_be_visible()
        expect(admin.page.locator("#conn")).to_have_attribute("data-state", "connected")
        admin.page.reload()  # the key stays for the tab's session
        expect(admin.page.locator("#stop-all")).to_be_visible()
        admin.assert_clean(allow_console=refused)
    finally:
        close(admin)
    user = open_page(browser, keyed.url)
    try:
        user.page.goto(keyed.url + "/ui")
        user.page.locator("#auth-key").fill("user-key")
        user.page.locator("#auth-form button[type=submit]").click()
        expect(user.page.locator('tr[data-model="fake"] .state')).to_be_visible()
        expect(user.page.locator("#tab-playground")).to_be_visible()
        for tab in ("resources", "activity", "logs", "config"):
            expect(user.page.locator(f"#tab-{tab}")).to_be_hidden()
        expect(user.page.locator(".action-start")).to_have_count(0)
        expect(user.page.locator("#stop-all")).to_have_count(0)
        user.page.locator("#tab-playground").click()
        user.page.locator("#pg-prompt").fill("hi")
        user.page.locator("#pg-send").click()
        expect(user.page.locator("#pg-transcript .message.assistant")).to_contain_text("tok4")
        user.assert_clean(allow_console=refused)
    finally:
        close(user)


def test_config_shows_a_rejected_reload(page: Watched, mb: Modelberth, shots: Path) -> None:
    good = mb.config_path.read_text()
    mb.config_path.write_text(
        "models:\n  fake:\n    command: [python]\n    idle_timeout: soon\n    bogus: 1\n"
    )
    try:
        goto(page, "config")
        expect(page.page.locator("#config-view")).not_to_be_empty()
        page.page.locator("#reload").click()
        error = page.page.locator("#reload-outcome .reload-error")
        expect(error).to_be_visible()
        expect(error).to_contain_text("line 4")
        expect(error).to_contain_text("line 5")
        expect(error).to_contain_text("bogus")
        expect(page.page.locator("#last-reload")).to_contain_text("rejected")
        page.page.screenshot(path=str(shots / "config-rejected.png"), full_page=True)
    finally:
        mb.config_path.write_text(good)
    assert mb.status("tiny")["name"] == "tiny"  # the old config still runs
    page.assert_clean(allow_console=("400",))


def test_failed_model_shows_its_error_and_log_tail(page: Watched) -> None:
    goto(page, "models")
    row = page.page.locator('tr[data-model="broken"]')
    expect(row.locator(".badge")).to_have_text("pinned")
    row.locator(".action-start").click()
    expect(row.locator(".state")).to_have_text("failed", timeout=15_000)
    error = row.locator("xpath=following-sibling::tr[1]")
    expect(error).to_contain_text("Last error")
    error.locator("summary").click()
    expect(error.locator("pre.log-tail")).to_contain_text("cannot load model weights")
    page.assert_clean()


def test_stop_all(page: Watched, mb: Modelberth) -> None:
    chat(mb, "fake").raise_for_status()
    goto(page, "models")
    expect(page.page.locator('tr[data-model="fake"] .state')).to_have_text("ready")
    page.page.locator("#stop-all").click()
    expect(page.page.locator("#stop-all")).to_contain_text("again")  # asks to confirm
    page.page.locator("#stop-all").click()
    for name in ("fake", "tiny", "slow"):
        expect(page.page.locator(f'tr[data-model="{name}"] .state')).to_have_text(
            "stopped", timeout=15_000
        )
    assert {mb.status(name)["state"] for name in ("fake", "tiny", "slow")} == {"stopped"}
    page.assert_clean()


def test_narrow_and_dark(browser: Browser, mb: Modelberth, shots: Path) -> None:
    narrow = open_page(browser, mb.url, viewport={"width": 390, "height": 844})
    try:
        for tab in TABS:
            goto(narrow, tab)
            expect(narrow.page.locator(LOADED[tab]).first).to_be_visible()
            width = narrow.page.evaluate("document.scrollingElement.scrollWidth")
            assert width <= 390, (tab, width)
            if tab in ("models", "activity"):
                narrow.page.screenshot(path=str(shots / f"{tab}-390.png"), full_page=True)
        narrow.assert_clean()
    finally:
        close(narrow)
    dark = open_page(browser, mb.url, color_scheme="dark")
    try:
        goto(dark, "models")
        expect(dark.page.locator('tr[data-model="tiny"] .state')).to_be_visible()
        background = dark.page.evaluate("getComputedStyle(document.body).backgroundColor")
        red, green, blue = (int(v) for v in background[background.index("(") + 1 : -1].split(","))
        assert red + green + blue < 120, background
        dark.page.screenshot(path=str(shots / "models-dark.png"), full_page=True)
        goto(dark, "resources")
        expect(dark.page.locator(LOADED["resources"]).first).to_be_visible()
        dark.page.screenshot(path=str(shots / "resources-dark.png"), full_page=True)
        dark.page.locator("#theme").click()  # auto -> light, remembered
        dark.page.reload()
        expect(dark.page.locator("html")).to_have_attribute("data-theme", "light")
        background = dark.page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert sum(int(v) for v in background[background.index("(") + 1 : -1].split(",")) > 600, (
            background
        )  # the choice wins over the system's dark
        dark.assert_clean()
    finally:
        close(dark)


def test_resources_show_gpus_stacked_by_model_and_evictions_on_the_charts(
    servers: Servers, browser: Browser, tmp_path: Path, shots: Path
) -> None:
    """GPUs from the fake NVML (tests/fake_nvml.py: no GPU can exist here; it reports like
    the real driver, per process from FAKE_VRAM_MB): two models that cannot share the GPU,
    so the second evicts the first."""
    state = tmp_path / "gpus.json"
    state.write_text(
        json.dumps(
            {
                "gpus": [
                    {"name": "Fake A100", "total_mb": 8000, "base_used_mb": 300, "utilization": 7}
                ]
            }
        )
    )

    def gpu_model(vram: int) -> dict[str, Any]:
        return fake_model(None, gpus=[0], vram_mb=vram, env={"FAKE_VRAM_MB": str(vram)})

    directory = servers.base / f"mb{len(servers.started)}"
    directory.mkdir()
    gpu_mb = Modelberth(
        directory,
        {
            "resources": {"vram_margin_mb": 500, "sample_interval": 0.5},
            "models": {"g1": gpu_model(4000), "g2": gpu_model(4000)},
        },
    )
    servers.started.append(gpu_mb)
    gpu_mb.start(
        env={
            "MODELBERTH_NVML_MODULE": "fake_nvml",
            "FAKE_NVML_STATE": str(state),
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
            ),
        }
    )
    assert chat(gpu_mb, "g1").status_code == 200
    wait_for(
        lambda: httpx.get(gpu_mb.url + "/api/resources", timeout=5).json()["models"]["g1"][
            "vram_bytes"
        ],
        timeout=10,
    )
    assert chat(gpu_mb, "g2").status_code == 200  # 4000 + 4000 > 8000 - 500: g1 is evicted

    watched = open_page(browser, gpu_mb.url)
    try:
        goto(watched, "resources")
        gpu_bar = watched.page.locator(".stack-box", has_text="GPU 0 · Fake A100")
        expect(gpu_bar).to_contain_text("budget 7.3 GiB")
        wait_for(
            lambda: httpx.get(gpu_mb.url + "/api/resources", timeout=5).json()["models"]["g2"][
                "vram_bytes"
            ],
            timeout=10,
        )
        watched.page.locator("#panel-resources button", has_text="Refresh").click()
        expect(gpu_bar.locator(".legend")).to_contain_text("g2 3.9 GiB")
        expect(watched.page.locator(".eviction-list li").first).to_contain_text("g1 evicted for g2")
        expect(
            watched.page.locator("figure.chart-box", has_text="VRAM per GPU")
            .locator(".marker")
            .first
        ).to_be_attached()
        watched.page.screenshot(path=str(shots / "resources-gpu.png"), full_page=True)
        watched.assert_clean()
    finally:
        close(watched)
