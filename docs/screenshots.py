"""Take the demo's screenshots in docs/: ``demo-viewer.png`` and ``demo-host.png``.

A real ``liveroom serve`` (free loopback ports, stopped by PID at the end) with a room as a
show has it: a few viewers commenting, the pinned product on flash sale, people buying, a
"just bought" toast; headless Chromium (Debian's, through Playwright) shoots the viewer page
and the host console::

    .venv/bin/python docs/screenshots.py            # needs chromium and the dev extras

Chinese and emoji need fonts (Debian: fonts-noto-cjk, fonts-noto-color-emoji).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson
from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.client import LiveroomClient  # noqa: E402
from tests.processes import Engine  # noqa: E402
from tests.test_demo_browser import CHROMIUM, CHROMIUM_ARGS, PHONE  # noqa: E402

COMMENTS = (
    "主播晚上好! 👋",
    "这个保温杯能装开水吗?",
    "Does it keep tea hot overnight?",
    "雾蓝色好好看",
    "已下单 😄 期待",
    "666666",
)


async def session(port: int) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /demo/session HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    raw = await reader.read()
    writer.close()
    answer: dict[str, Any] = orjson.loads(raw.partition(b"\r\n\r\n")[2])
    return answer


async def shoot(engine: Engine, out: Path) -> None:
    base = f"http://127.0.0.1:{engine.api_port}/demo/"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            host = await browser.new_page(viewport={"width": 1360, "height": 820})
            await host.goto(base + "host")
            page = await browser.new_page(viewport=dict(PHONE), device_scale_factor=1.5)
            await page.goto(base)
            await page.get_by_test_id("buy-button").wait_for()
            await page.locator('[data-state="open"]').wait_for()

            viewers = []
            for _ in range(4):
                s = await session(engine.api_port)
                client = await LiveroomClient.connect(s["url"], s["token"])
                sale = (await client.join(s["room"])).sale
                assert sale is not None, "the demo room has no sale"
                viewers.append((client, {**s, "sale": sale.id}))
            for i, text in enumerate(COMMENTS):
                client, s = viewers[i % len(viewers)]
                await client.comment(s["room"], text)
                await client.like(s["room"], 10)
                await asyncio.sleep(0.15)
            await page.get_by_test_id("comment-input").fill("我也要一个!")
            await page.get_by_test_id("comment-input").press("Enter")
            await page.get_by_test_id("buy-button").click()
            await page.locator('[data-testid="buy-result"][data-status="ok"]').wait_for()
            for client, s in viewers[:3]:
                await client.buy(s["room"], s["sale"], 2)
            await page.get_by_test_id("toast").last.wait_for()
            await host.get_by_test_id("fig-orders").filter(has_text="4").wait_for()
            await page.screenshot(path=out / "demo-viewer.png")
            await host.screenshot(path=out / "demo-host.png")
            for client, _ in viewers:
                await client.close()
        finally:
            await browser.close()


def main() -> None:
    engine = Engine()
    try:
        engine.start()
        asyncio.run(shoot(engine, ROOT / "docs"))
    finally:
        engine.kill()
    print("wrote docs/demo-viewer.png and docs/demo-host.png")


if __name__ == "__main__":
    main()
