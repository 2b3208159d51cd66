"""Driving the dashboard in a real Chromium (Debian's /usr/bin/chromium) with Playwright's
sync API: one browser per test module, a fresh context per page, and a watch on what each
page logs and fetches."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch() -> Iterator[Browser]:
    """A headless Chromium, closed afterwards (use from a module-scoped fixture)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot_dir(fallback: Path) -> Path:
    """$MODELBERTH_SCREENSHOTS if set, else `fallback`."""
    directory = Path(os.environ.get("MODELBERTH_SCREENSHOTS") or fallback)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@dataclass
class Watched:
    """A page and what it did: console errors, uncaught exceptions, every URL requested."""

    page: Page
    base: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def foreign(self) -> list[str]:
        """Requests to anything but the modelberth under test."""
        return [url for url in self.urls if not url.startswith(self.base + "/")]

    def assert_clean(self, allow_console: tuple[str, ...] = ()) -> None:
        console = [m for m in self.console_errors if not any(a in m for a in allow_console)]
        assert not self.page_errors, self.page_errors
        assert not console, console
        assert not self.foreign(), self.foreign()


def open_page(browser: Browser, base: str, **context: Any) -> Watched:
    """A new context (own sessionStorage and localStorage) and page, watched."""
    options: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}, **context}
    page = browser.new_context(**options).new_page()
    watched = Watched(page, base)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            location = message.location.get("url", "") if message.location else ""
            watched.console_errors.append(f"{message.text} ({location})")

    def on_request(request: Request) -> None:
        watched.urls.append(request.url)

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.page_errors.append(str(error)))
    page.on("request", on_request)
    page.set_default_timeout(15_000)
    return watched


def close(watched: Watched) -> None:
    watched.page.context.close()
