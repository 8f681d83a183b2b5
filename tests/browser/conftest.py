"""Browser tier: headless Chromium (Debian's) against a real server, the network outside blocked.

Deselected by default; run with `pytest tests/browser -m browser`. Every page a test opens
must log no console error and no uncaught exception, and request nothing but this server:
every request is recorded, and one to another host is aborted by `context.route`. Chromium
delivers no event-stream message while requests are intercepted, so the pages that must
follow a run live (`live`) go without the route; there a proxy that does not exist refuses
whatever is not loopback instead, and the record still shows any attempt.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Request,
    expect,
    sync_playwright,
)

CHROMIUM = os.environ.get("FITSERVE_CHROMIUM", "/usr/bin/chromium")
# Into the build folder; `make screenshots` copies them over the ones docs/ shows.
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
LOCAL_HOSTS = {"127.0.0.1"}
# Runs train in worker processes on a shared machine: give them time.
expect.set_options(timeout=20_000)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Nothing listens on port 9: any request that is not loopback fails there.
    "--proxy-server=http://127.0.0.1:9",
]


@pytest.fixture(autouse=True)
def _empty(empty_database: None) -> None:
    """Every test sees only the rows it writes."""


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    """Playwright's driver, once per session."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `apt-get install -y chromium` (or set FITSERVE_CHROMIUM)"
        )
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def chromium(playwright: Playwright) -> Iterator[Browser]:
    """Headless Chromium from the system package, not a downloaded build."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@dataclass
class Watched:
    """A page, and what it did that a test must not let pass: errors and outside requests."""

    page: Page
    errors: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)

    def screenshot(self, name: str, *, full_page: bool = True) -> None:
        """Save the page (or only the window) to build/screenshots/NAME.png."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)

    def assert_clean(self) -> None:
        """No console error, no page error, no request that left this machine."""
        assert self.errors == [], self.errors
        assert self.outside == [], self.outside


def _watch(chromium: Browser, *, intercept: bool) -> tuple[BrowserContext, Watched]:
    context = chromium.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(20_000)
    result = Watched(page)

    def request(sent: Request) -> None:
        if urlsplit(sent.url).hostname not in LOCAL_HOSTS and sent.url.startswith("http"):
            result.outside.append(sent.url)

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            result.errors.append(f"console: {message.text} at {message.location}")

    if intercept:
        context.route(
            lambda url: urlsplit(url).hostname not in LOCAL_HOSTS, lambda route: route.abort()
        )
    context.on("request", request)
    page.on("console", console)
    page.on("pageerror", lambda error: result.errors.append(f"pageerror: {error}"))
    return context, result


@pytest.fixture
def watched(chromium: Browser) -> Iterator[Watched]:
    """A fresh page whose requests to other hosts are aborted by a route, and recorded."""
    context, result = _watch(chromium, intercept=True)
    yield result
    context.close()
    result.assert_clean()


@pytest.fixture
def live(chromium: Browser) -> Iterator[Watched]:
    """A fresh page that can follow event streams: other hosts fail at the proxy, recorded."""
    context, result = _watch(chromium, intercept=False)
    yield result
    context.close()
    result.assert_clean()
