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
from tests.conftest import Client, ClientFactory
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


async def _say(client: Client, frame_id: str, text: str) -> dict[str, Any]:
    """Send a message; the reply frame that answers it."""
    await client.send({"type": "message", "id": frame_id, "text": text})
    reply = (await client.recv_until("reply"))[-1]
    assert reply["intent"] and reply["emotion"], reply
    return reply


async def test_console_marks_gone_customers_labels_turns_and_agrees_on_emotion(
    server: RunningServer, browser: Any, open_client: ClientFactory
) -> None:
    from playwright.async_api import expect

    SHOTS.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{server.port}"
    nameless = await open_client()
    session_id = (await nameless.hello(user={"external_id": "console-nameless"}))["session_id"]
    first = await _say(nameless, "m1", "My card payment was declined.")
    gone = await open_client()
    gone_id = (await gone.hello(user={"external_id": "console-gone", "name": "Gone Away"}))[
        "session_id"
    ]
    await gone.ws.close()

    # An operator corrects the model's emotion: the live session never sees that correction,
    # so a live list that read the session's own labels would disagree with search.
    model_emotion = first["emotion"]["label"]
    corrected = "neutral" if model_emotion == "frustrated" else "frustrated"
    key = await make_operator(server, "console-agent", "agent")
    async with operator_client(server, key) as labeller:
        await labeller.ok("turn.relabel", turn_id=first["turn_id"], emotion=corrected)

    console = await browser.new_page()
    problems: list[str] = []
    console.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    # A favicon request is not a Playwright response: its 404 shows only as a console error.
    console.on(
        "console",
        lambda msg: problems.append(msg.text) if msg.type == "error" else None,
    )
    console.on(
        "response",
        lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    await console.goto(f"{base}/console")
    await console.fill("#key", key)
    await console.click("#login-button")
    await expect(console.locator("#whoami")).to_contain_text("console-agent", timeout=TIMEOUT_MS)

    live_row = console.locator(f"#sessions li[data-session-id='{session_id}']")
    gone_row = console.locator(f"#sessions li[data-session-id='{gone_id}']")
    # The list refreshes by itself, so it catches up once the server has seen the close.
    await expect(gone_row).to_have_attribute("data-connected", "false", timeout=TIMEOUT_MS)
    await expect(gone_row.locator(".tag.disconnected")).to_have_text("disconnected")
    await expect(live_row).to_have_attribute("data-connected", "true")
    await expect(live_row.locator(".tag.disconnected")).to_have_count(0)
    await expect(live_row.locator("button")).to_have_text("console-nameless")

    async def search_labels() -> Any:
        await console.fill("#q", "console-nameless")
        await console.click("#search-button")
        found = console.locator("#results li", has=console.locator("button[data-user-id]"))
        await expect(found).to_have_count(1, timeout=TIMEOUT_MS)
        return found.locator(".labels")

    found = await search_labels()
    await expect(found).to_have_attribute("data-emotion", corrected)
    await expect(live_row.locator(".labels")).to_have_attribute("data-emotion", corrected)
    intent = first["intent"]["label"]
    await expect(found).to_have_attribute("data-intent", intent)
    await expect(live_row.locator(".labels")).to_have_attribute("data-intent", intent)
    await console.locator("#results button[data-user-id]").click()
    await expect(console.locator("#profile-title")).to_have_text("console-nameless")
    await expect(console.locator("#profile-emotion")).to_have_text(corrected)

    await live_row.locator("button").click()
    watched = console.locator("#watch-turns .turn")
    await expect(watched).to_have_count(2, timeout=TIMEOUT_MS)
    stored = console.locator(f"#watch-turns .turn.user[data-turn-id='{first['turn_id']}'] .labels")
    await expect(stored).to_have_attribute("data-emotion", corrected)
    await expect(stored).to_have_attribute("data-intent", intent)

    second = await _say(nameless, "m2", "I was charged twice for the same purchase.")
    pushed = console.locator(f"#watch-turns .turn.user[data-turn-id='{second['turn_id']}'] .labels")
    await expect(pushed).to_have_attribute(
        "data-intent", second["intent"]["label"], timeout=TIMEOUT_MS
    )
    await expect(pushed).to_have_attribute("data-emotion", second["emotion"]["label"])
    await expect(watched).to_have_count(4)

    # Once the turn's rows are written, search and the live list give its labels again.
    await server.runtime.chat.sessions[session_id].settle()
    await console.click("#refresh-sessions")
    found = await search_labels()
    for name in ("emotion", "intent"):
        label = second[name]["label"]
        await expect(found).to_have_attribute(f"data-{name}", label)
        await expect(live_row.locator(".labels")).to_have_attribute(f"data-{name}", label)
    await console.screenshot(path=str(SHOTS / "6-console-labels.png"), full_page=True)
    assert not problems, problems


async def test_widget_shows_suggestions_a_click_answers_and_the_console_shows_the_topic(
    server: RunningServer, browser: Any
) -> None:
    """A clarifying question's suggestions are buttons; clicking one sends it as the
    customer's message, which the next reply answers; a watching operator sees the topic and
    how each live reply read its message."""
    from playwright.async_api import expect

    SHOTS.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{server.port}"
    errors: list[str] = []
    widget = await browser.new_page()
    widget.on("pageerror", lambda exc: errors.append(f"widget: {exc}"))
    await widget.goto(f"{base}/widget?user=browser-torn")
    await widget.click("#connect")
    await expect(widget.locator("#status")).to_have_text("connected", timeout=TIMEOUT_MS)
    # The heads are torn on this one whatever the page view before it.
    await widget.fill("#text", "atm issue")
    await widget.press("#text", "Enter")
    done = widget.locator(".bubble.bot[data-done='true']")
    await expect(done).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(done.first).to_have_attribute("data-turn", "clarification")
    buttons = widget.locator("#messages .suggestions button.suggestion")
    await expect(buttons).to_have_count(2)
    choices = await buttons.all_inner_texts()
    question = (await done.first.inner_text()).lower()
    assert all(choice.lower() in question for choice in choices), (choices, question)
    await widget.screenshot(path=str(SHOTS / "7-widget-suggestions.png"), full_page=True)

    await buttons.nth(1).click()
    await expect(widget.locator(".bubble.user").last).to_have_text(choices[1])
    await expect(buttons).to_have_count(0)
    await expect(done).to_have_count(2, timeout=TIMEOUT_MS)
    await expect(done.last).to_have_attribute("data-turn", "new_topic")
    session_id = await widget.locator("#status").get_attribute("data-session-id")
    assert session_id
    turns = await server.runtime.store.list_turns(session_id)
    asked, answered = [t for t in turns if t.role == "user"]
    assert answered.text == choices[1]
    topic = answered.intent
    # The second button is the models' second guess: the stored label is the choice.
    assert topic is not None and topic != asked.intent

    await server.runtime.chat.sessions[session_id].settle()
    key = await make_operator(server, "topic-agent", "agent")
    console = await browser.new_page()
    console.on("pageerror", lambda exc: errors.append(f"console: {exc}"))
    await console.goto(f"{base}/console")
    await console.fill("#key", key)
    await console.click("#login-button")
    await expect(console.locator("#whoami")).to_contain_text("topic-agent", timeout=TIMEOUT_MS)
    await console.click("#refresh-sessions")
    live = console.locator(f"#sessions button[data-session-id='{session_id}']")
    await expect(live).to_have_count(1, timeout=TIMEOUT_MS)
    await live.click()
    dialogue = console.locator("#watch-dialogue")
    await expect(dialogue).to_have_attribute("data-topic", topic, timeout=TIMEOUT_MS)
    await expect(dialogue).to_contain_text(f"topic {topic}")

    await widget.fill("#text", "how long will that take")
    await widget.press("#text", "Enter")
    await expect(done).to_have_count(3, timeout=TIMEOUT_MS)
    await expect(done.last).to_have_attribute("data-turn", "follow_up")
    reading = console.locator("#watch-turns .turn.assistant .tag.reading[data-reading='follow_up']")
    await expect(reading).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(dialogue).to_contain_text("2 turns")
    await console.screenshot(path=str(SHOTS / "8-console-dialogue.png"), full_page=True)
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
