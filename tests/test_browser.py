"""The widget and the console in headless Chromium (Debian's), against a real server.

A customer chats in /widget and sees replies; in /console an operator finds them, sees the
emotion chart and the modality bars, takes over, writes a message the widget shows, and
releases. Screenshots go to var/screenshots/ (git-ignored).
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from server import RunningServer
from tests.support.operator_helpers import make_operator, operator_client

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"
TIMEOUT_MS = 20_000

if importlib.util.find_spec("playwright") is None:
    pytest.skip("playwright is not installed (pip install playwright)", allow_module_level=True)
if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def test_widget_and_console_takeover(server: RunningServer, browser: Any) -> None:
    from playwright.async_api import expect

    SHOTS.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{server.port}"
    errors: list[str] = []

    widget = await browser.new_page()
    widget.on("pageerror", lambda exc: errors.append(f"widget: {exc}"))
    await widget.goto(f"{base}/widget?user=browser-cust-1&name=Grace%20Hopper")
    await widget.click("#connect")
    await expect(widget.locator("#status")).to_have_text("connected", timeout=TIMEOUT_MS)
    await widget.click("#act-cart")
    await widget.click("#act-checkout")
    for n, text in enumerate(["My card payment was declined.", "Can you check my order?"]):
        await widget.fill("#text", text)
        await widget.press("#text", "Enter")
        done = widget.locator(".bubble.bot[data-done='true']")
        await expect(done).to_have_count(n + 1, timeout=TIMEOUT_MS)
    assert await widget.locator(".bubble.bot").first.inner_text()
    await widget.screenshot(path=str(SHOTS / "1-widget-replies.png"), full_page=True)
    session_id = await widget.locator("#status").get_attribute("data-session-id")
    assert session_id

    # An agent labels the customer's turns (as the emotion model will), so the chart has data.
    turns = [t for t in await server.runtime.store.list_turns(session_id) if t.role == "user"]
    key = await make_operator(server, "grace-agent", "agent")
    async with operator_client(server, key) as labeller:
        for turn, emotion in zip(turns, ["frustrated", "neutral"], strict=True):
            await labeller.ok("turn.relabel", turn_id=turn.id, emotion=emotion)

    console = await browser.new_page()
    console.on("pageerror", lambda exc: errors.append(f"console: {exc}"))
    await console.goto(f"{base}/console")
    await console.fill("#key", key)
    await console.click("#login-button")
    await expect(console.locator("#whoami")).to_contain_text("grace-agent", timeout=TIMEOUT_MS)
    await console.fill("#q", "grace")
    await console.click("#search-button")
    result = console.locator("#results button[data-user-id]")
    await expect(result).to_have_count(1, timeout=TIMEOUT_MS)
    await result.click()
    await expect(console.locator("#profile-title")).to_have_text("Grace Hopper")
    await expect(console.locator("#emotion-chart circle")).to_have_count(2)
    await expect(console.locator("#profile-emotion")).to_have_text("neutral")
    await expect(console.locator("#profile-intent")).not_to_have_text("—")
    shares = {
        m: float(
            await console.locator(f"#contributions .bar[data-modality='{m}']").get_attribute(
                "data-share"
            )
            or 0
        )
        for m in ("text", "speech", "behaviour")
    }
    assert shares["text"] > 0 and shares["behaviour"] > 0, shares
    width = await console.locator("#contributions .bar[data-modality='text']").bounding_box()
    assert width is not None and width["width"] > 0
    await console.screenshot(path=str(SHOTS / "2-console-profile.png"), full_page=True)

    await console.click("#refresh-sessions")
    live = console.locator(f"#sessions button[data-session-id='{session_id}']")
    await expect(live).to_have_count(1, timeout=TIMEOUT_MS)
    await live.click()
    await expect(console.locator("#watch-turns .turn")).to_have_count(4, timeout=TIMEOUT_MS)
    await console.click("#takeover")
    await expect(console.locator("#watch-status")).to_have_text("with grace-agent")
    await expect(widget.locator(".bubble.system")).to_contain_text(["grace-agent joined"])

    await widget.fill("#text", "Is a person there?")
    await widget.press("#text", "Enter")
    heard = console.locator("#watch-turns .turn.user", has_text="Is a person there?")
    await expect(heard).to_have_count(1, timeout=TIMEOUT_MS)
    await console.fill("#reply-text", "Hello Grace, this is a human agent.")
    await console.press("#reply-text", "Enter")
    operator_bubble = widget.locator(".bubble.operator")
    await expect(operator_bubble).to_have_text("Hello Grace, this is a human agent.")
    assert await widget.locator(".bubble.bot").count() == 2, "the bot stayed quiet"
    await widget.screenshot(path=str(SHOTS / "3-widget-operator.png"), full_page=True)
    await console.screenshot(path=str(SHOTS / "4-console-takeover.png"), full_page=True)

    await console.click("#release")
    await expect(widget.locator(".bubble.system").last).to_contain_text("assistant is back")
    await widget.fill("#text", "Thanks!")
    await widget.press("#text", "Enter")
    await expect(widget.locator(".bubble.bot[data-done='true']")).to_have_count(
        3, timeout=TIMEOUT_MS
    )
    await widget.screenshot(path=str(SHOTS / "5-widget-released.png"), full_page=True)
    assert not errors, errors


async def test_pages_are_served_with_a_content_security_policy(server: RunningServer) -> None:
    import asyncio

    for path, kind in [
        ("/console", "text/html"),
        ("/widget", "text/html"),
        ("/static/console.js", "text/javascript"),
        ("/static/common.css", "text/css"),
    ]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head = raw.split(b"\r\n\r\n", 1)[0].decode().lower()
        assert head.startswith("http/1.1 200"), (path, head)
        assert f"content-type: {kind}" in head and "content-security-policy:" in head
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /static/../server.py HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 404")
