"""The demo pages in a real browser: Debian's headless Chromium driven by Playwright (no
browser download), two viewer pages and a host console in the demo room of a real
``liveroom serve``: a comment typed in one page shows in the other, the host pins a product
and the viewers see its card, a viewer buys and the stock falls on every page, a comment
holding markup shows as text, and a viewer page survives a restart of the server.

Screenshots are test artifacts: in ``$LIVEROOM_ARTIFACTS`` when set, else in the test's
temporary directory. Every wait is bounded; the server and the browser are stopped in
``finally``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, expect, sync_playwright

from tests.processes import Engine

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "PHONE", "launch", "open_page"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # else Chromium calls home, over and over
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 430, "height": 860}
DESKTOP = {"width": 1360, "height": 900}
WAIT_MS = 10_000
"""Longest wait for anything a page should show (the reconnect has its own)."""
RECONNECT_MS = 20_000
_RESTART_NOISE = ("WebSocket", "net::ERR_")
"""Console errors a browser logs while the server restarts (refused connections)."""
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def launch(pw: Playwright) -> Browser:
    """Debian's Chromium, headless, without its background traffic."""
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def open_page(browser: Browser, url: str, viewport: dict[str, int], problems: list[str]) -> Page:
    """A page at ``url`` whose script errors and failed loads land in ``problems``."""
    page = browser.new_page(viewport={"width": viewport["width"], "height": viewport["height"]})
    page.set_default_timeout(WAIT_MS)

    def console(message: ConsoleMessage) -> None:
        text = message.text
        if message.type == "error" and not any(s in text for s in _RESTART_NOISE):
            problems.append(f"{url}: console: {text}")

    page.on("console", console)
    page.on("pageerror", lambda error: problems.append(f"{url}: {error}"))
    page.goto(url)
    return page


@pytest.fixture(autouse=True)
def _expect_timeout() -> None:
    expect.set_options(timeout=WAIT_MS)


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("LIVEROOM_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(log=tmp_path / "liveroom.stderr") as e:
        yield e


def connected(page: Page, timeout: int = WAIT_MS) -> None:
    expect(page.get_by_test_id("state")).to_have_attribute("data-state", "open", timeout=timeout)


def test_two_viewers_and_a_host_console_share_the_demo_room(
    engine: Engine, artifacts: Path
) -> None:
    base = f"http://127.0.0.1:{engine.api_port}/demo/"
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            host = open_page(browser, base + "host", DESKTOP, problems)
            ann = open_page(browser, base, PHONE, problems)
            bob = open_page(browser, base, PHONE, problems)
            for page in (host, ann, bob):
                connected(page)
            expect(host.get_by_test_id("fig-viewers")).to_have_text("3")  # the console too

            # A comment typed in one page appears in the other.
            ann.get_by_test_id("comment-input").fill("大家好 from Ann")
            ann.get_by_test_id("comment-input").press("Enter")
            me = ann.get_by_test_id("me").inner_text()
            line = bob.get_by_test_id("comment").filter(has_text="大家好 from Ann")
            expect(line.get_by_test_id("comment-name")).to_have_text(me)
            expect(host.get_by_test_id("feed")).to_contain_text("大家好 from Ann")

            # The host pins a product: every viewer sees its card.
            tea = host.locator('[data-testid="catalogue-item"][data-product-id="p-tea"]')
            tea.get_by_test_id("pin-button").click()
            for page in (ann, bob):
                card = page.get_by_test_id("product-card")
                expect(card).to_have_attribute("data-product-id", "p-tea")
                expect(card.get_by_test_id("product-title")).to_have_text(
                    "明前龙井 Dragon Well green tea 250g"
                )
                expect(page.get_by_test_id("buy-button")).to_be_disabled()  # no sale of it yet

            # The host opens a sale of it; a viewer buys; the stock falls on every page.
            host.get_by_test_id("sale-stock").fill("5")
            host.get_by_test_id("sale-limit").fill("2")
            host.get_by_test_id("open-sale").click()
            expect(host.get_by_test_id("host-result")).to_contain_text("opened")
            for page in (ann, bob):
                expect(page.get_by_test_id("stock")).to_have_text("5")
                expect(page.get_by_test_id("buy-button")).to_be_enabled()
            ann.get_by_test_id("buy-button").click()
            expect(bob.get_by_test_id("toast").last).to_contain_text("just bought 1")  # 3.5 s
            result = ann.get_by_test_id("buy-result")
            expect(result).to_have_attribute("data-status", "ok")
            expect(result).to_contain_text("Order demo-")
            for page in (ann, bob):
                expect(page.get_by_test_id("stock")).to_have_text("4")
            expect(host.get_by_test_id("fig-stock")).to_have_text("4")
            expect(host.get_by_test_id("fig-orders")).to_have_text("1")
            expect(host.get_by_test_id("fig-units")).to_have_text("1")

            # Markup in a comment is shown as text, and never runs.
            ann.get_by_test_id("comment-input").fill(XSS)
            ann.get_by_test_id("comment-send").click()
            for page in (ann, bob):
                text = page.get_by_test_id("comment-text").last
                expect(text).to_have_text(XSS)
                comments = page.get_by_test_id("comments")
                assert comments.locator("script, img").count() == 0
                assert page.evaluate("window.__pwned") is None

            ann.screenshot(path=artifacts / "viewer.png")
            host.screenshot(path=artifacts / "host.png", full_page=True)

            # The server restarts on the same ports: the pages reconnect and go on.
            engine.stop(signal.SIGTERM)
            expect(ann.get_by_test_id("state")).not_to_have_attribute("data-state", "open")
            engine.start()
            for page in (ann, bob, host):
                connected(page, RECONNECT_MS)
            # A new process with the memory store: a new room (history and sale gone, SPEC
            # §8 resync); the page shows its snapshot: the seeded pin, no old comments.
            expect(ann.get_by_test_id("product-card")).to_have_attribute(
                "data-product-id", "p-thermos", timeout=RECONNECT_MS
            )
            bob.get_by_test_id("comment-input").fill("back again")
            bob.get_by_test_id("comment-input").press("Enter")
            expect(ann.get_by_test_id("comment-text").last).to_have_text("back again")
            expect(ann.get_by_test_id("comments")).not_to_contain_text("大家好 from Ann")
            expect(ann.get_by_test_id("buy-button")).to_be_enabled()
            ann.get_by_test_id("buy-button").click()
            expect(ann.get_by_test_id("buy-result")).to_have_attribute("data-status", "ok")
            ann.screenshot(path=artifacts / "viewer-after-restart.png")
        finally:
            browser.close()
    assert not problems, problems


def test_a_viewer_page_resumes_a_shared_room_after_a_restart(
    redis_url: str, tmp_path: Path, artifacts: Path
) -> None:
    """With the room's history and sale in Redis, a restart is a resume (SPEC §8): the
    page keeps what it showed and gets what it missed, each comment once."""
    prefix = f"demo{os.getpid()}"
    engine = Engine(
        log=tmp_path / "shared.stderr",
        BROKER_BACKEND="redis",
        BROKER_REDIS_URL=redis_url,
        BROKER_KEY_PREFIX=prefix,
        STOCK_BACKEND="redis",
        STOCK_REDIS_URL=redis_url,
        STOCK_KEY_PREFIX=prefix,
    )
    problems: list[str] = []
    try:
        engine.start()
        base = f"http://127.0.0.1:{engine.api_port}/demo/"
        with sync_playwright() as pw:
            browser = launch(pw)
            try:
                ann = open_page(browser, base, PHONE, problems)
                bob = open_page(browser, base, PHONE, problems)
                connected(ann)
                connected(bob)
                ann.get_by_test_id("buy-button").click()
                expect(ann.get_by_test_id("buy-result")).to_have_attribute("data-status", "ok")
                expect(bob.get_by_test_id("stock")).to_have_text("49")
                ann.get_by_test_id("comment-input").fill("before the restart")
                ann.get_by_test_id("comment-input").press("Enter")
                expect(bob.get_by_test_id("comment-text").last).to_have_text("before the restart")

                engine.stop(signal.SIGTERM)
                expect(ann.get_by_test_id("state")).not_to_have_attribute("data-state", "open")
                engine.start()
                connected(ann, RECONNECT_MS)
                connected(bob, RECONNECT_MS)
                bob.get_by_test_id("comment-input").fill("after the restart")
                bob.get_by_test_id("comment-input").press("Enter")
                texts = ann.get_by_test_id("comment-text")
                expect(texts.last).to_have_text("after the restart")
                expect(texts.filter(has_text="before the restart")).to_have_count(1)
                expect(texts.filter(has_text="after the restart")).to_have_count(1)
                expect(ann.get_by_test_id("product-card")).to_have_attribute(
                    "data-product-id", "p-thermos"
                )
                expect(ann.get_by_test_id("stock")).to_have_text("49")  # the same sale
                ann.screenshot(path=artifacts / "viewer-resumed.png")
            finally:
                browser.close()
    finally:
        engine.kill()
    assert not problems, problems
