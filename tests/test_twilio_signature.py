"""Signed Twilio streams: with ASSISTANT_TWILIO_AUTH_TOKEN, a `/voice/twilio` upgrade without
Twilio's `X-Twilio-Signature` for the URL it opened gets HTTP 403 and no WebSocket.

The signature is checked against Twilio's documented example, and every signature these tests
send is computed here with hmac and hashlib, apart from the code under test. The servers are
real ones on port 0; the accepted call streams a sentence spoken by espeak-ng as Twilio would.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from assistant import Settings, SettingsError
from assistant.voice.twilio_signature import (
    twilio_refusal,
    twilio_signature,
    twilio_stream_url,
)
from server import RunningServer
from tests.conftest import Client, ServerFactory
from tests.test_metrics import scrape, value
from tests.test_voice_calls import TwilioPeer, caller_mulaw, user_turns

TOKEN = "0123456789abcdef0123456789abcdef"
ROUTE = "/voice/twilio"
PUBLIC = "wss://voice.example.com/edge"

# Twilio's worked example of its request signature: an auth token, the URL it requested and
# the POST parameters it sent, and the X-Twilio-Signature that came with them.
DOCUMENTED_TOKEN = "12345"
DOCUMENTED_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOCUMENTED_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
DOCUMENTED_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def sign(url: str, token: str = TOKEN) -> str:
    """Twilio's signature of a request of `url` without a body, computed without the server's
    code: base64 of the HMAC-SHA1 of the URL, keyed with the auth token."""
    return base64.b64encode(hmac.new(token.encode(), url.encode(), hashlib.sha1).digest()).decode()


def local_url(srv: RunningServer, target: str = ROUTE) -> str:
    """What Twilio would have opened to reach `srv` directly: wss://, the Host, the target."""
    return f"wss://127.0.0.1:{srv.port}{target}"


# The signature and the URL, pure


def test_the_signature_is_twilios_documented_one() -> None:
    # For a POST, Twilio signs the URL followed by each parameter's name and value, sorted by
    # name; an upgrade has no parameters, so the URL alone.
    signed = DOCUMENTED_URL + "".join(k + v for k, v in sorted(DOCUMENTED_PARAMS.items()))
    assert twilio_signature(DOCUMENTED_TOKEN, signed) == DOCUMENTED_SIGNATURE
    assert sign(signed, DOCUMENTED_TOKEN) == DOCUMENTED_SIGNATURE
    stream = "wss://assistant.example.com/voice/twilio"
    assert twilio_signature(TOKEN, stream) == sign(stream)
    assert twilio_signature(TOKEN, stream) != twilio_signature("another token", stream)


def test_the_url_twilio_opened() -> None:
    # Behind a proxy: the public URL, prefix included, then the path and query as received.
    assert twilio_stream_url(ROUTE, ["10.0.0.7:8765"], PUBLIC) == PUBLIC + ROUTE
    assert twilio_stream_url(ROUTE + "?a=1", [], PUBLIC + "/") == PUBLIC + ROUTE + "?a=1"
    # Without one: wss:// and the Host header.
    host = "assistant.example.com"
    assert twilio_stream_url(ROUTE, [host], None) == f"wss://{host}{ROUTE}"
    # No Host, or two: a URL with no host, which nothing Twilio signs matches.
    assert twilio_stream_url(ROUTE, [], None) == f"wss://{ROUTE}"
    assert twilio_stream_url(ROUTE, [host, "evil.example"], None) == f"wss://{ROUTE}"


def test_refusals() -> None:
    url = "wss://assistant.example.com/voice/twilio"
    assert twilio_refusal(TOKEN, url, [sign(url)]) is None
    assert twilio_refusal(TOKEN, url, []) == "signature_missing"
    assert twilio_refusal(TOKEN, url, [sign(url), sign(url)]) == "signature_invalid"
    assert twilio_refusal(TOKEN, url, [sign(url, "another token")]) == "signature_invalid"
    assert twilio_refusal(TOKEN, url, [sign(url + "?a=1")]) == "signature_invalid"
    assert twilio_refusal(TOKEN, url, [sign(url.replace("wss:", "ws:"))]) == "signature_invalid"
    assert twilio_refusal(TOKEN, url, [sign(url)[:-2]]) == "signature_invalid"
    assert twilio_refusal(TOKEN, url, ["\udcff" + sign(url)]) == "signature_invalid"
    # The scheme's default port, written out or not, on either side.
    with_port = "wss://assistant.example.com:443/voice/twilio"
    assert twilio_refusal(TOKEN, url, [sign(with_port)]) is None
    assert twilio_refusal(TOKEN, with_port, [sign(url)]) is None
    assert twilio_refusal(TOKEN, "ws://h:80/x", [sign("ws://h/x")]) is None
    # Another port is another URL.
    other_port = "wss://assistant.example.com:8443/voice/twilio"
    assert twilio_refusal(TOKEN, other_port, [sign(url)]) == "signature_invalid"
    assert twilio_refusal(TOKEN, url, [sign(other_port)]) == "signature_invalid"


def test_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {"ASSISTANT_TWILIO_AUTH_TOKEN": TOKEN, "ASSISTANT_PUBLIC_URL": PUBLIC}
    )
    assert settings.twilio_auth_token == TOKEN
    assert settings.public_url == PUBLIC
    assert TOKEN not in repr(settings)
    unset = Settings.from_env({})
    assert unset.twilio_auth_token is None and unset.public_url is None
    for wrong in ("https://voice.example.com", "voice.example.com", "wss://", f"{PUBLIC}?a=1"):
        with pytest.raises(SettingsError, match="ASSISTANT_PUBLIC_URL"):
            Settings.from_env({"ASSISTANT_PUBLIC_URL": wrong})


# Refused before the WebSocket opens


async def refused(url: str, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    with pytest.raises(InvalidStatus) as refusal:
        await connect(url, additional_headers=headers)
    return refusal.value.response.status_code, bytes(refusal.value.response.body)


async def opens(url: str, headers: list[tuple[str, str]]) -> bool:
    async with connect(url, additional_headers=headers) as ws:
        return ws.protocol.state.name == "OPEN"


async def test_unsigned_and_missigned_upgrades_are_refused(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with start_server(twilio_auth_token=TOKEN) as srv:
        ws_url = srv.url + ROUTE
        here = local_url(srv)
        assert await refused(ws_url, []) == (403, b"signature_missing\n")
        wrong = [
            sign(here, "another token"),  # another account's
            "not a signature",
            sign(local_url(srv, "/voice")),  # replayed from another path
            sign(local_url(srv, ROUTE + "?call=1")),  # from another query string
            sign(here.replace("wss:", "ws:")),  # signed for a URL Twilio would not open
            sign(f"wss://other.example.com{ROUTE}"),  # for another host
        ]
        for signature in wrong:
            assert await refused(ws_url, [("X-Twilio-Signature", signature)]) == (
                403,
                b"signature_invalid\n",
            ), signature
        # The header twice, even both right: which one would count?
        twice = [("X-Twilio-Signature", sign(here))] * 2
        assert await refused(ws_url, twice) == (403, b"signature_invalid\n")
        # Signed for the bare URL, opened with a query string.
        signed_bare = [("X-Twilio-Signature", sign(here))]
        assert await refused(ws_url + "?call=1", signed_bare) == (403, b"signature_invalid\n")

        # The right signature opens it, for the URL as opened, query string and all.
        assert await opens(ws_url, signed_bare)
        with_query = [("x-twilio-signature", sign(here + "?call=1"))]
        assert await opens(ws_url + "?call=1", with_query)
        # The other routes never needed Twilio's signature.
        async with connect(srv.url + "/chat") as ws:
            await Client(ws).hello()

        _, samples = await scrape(srv)
    refusals = {
        dict(labels)["reason"]: n
        for (name, labels), n in samples.items()
        if name == "assistant_upgrades_refused_total" and dict(labels)["route"] == ROUTE
    }
    assert refusals == {"signature_missing": 1, "signature_invalid": len(wrong) + 2}
    assert value(samples, "assistant_connections", {"route": ROUTE}) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "server"]
    assert f"refused a Twilio stream: signature_missing for {here}" in lines
    # The query string stays out of the log, as the token does everywhere.
    assert f"refused a Twilio stream: signature_invalid for {here}" in lines
    assert not any("?call=1" in line for line in lines)
    assert not any("not verified" in line for line in lines)
    assert TOKEN not in caplog.text


async def test_behind_a_proxy_the_public_url_is_what_twilio_signed(
    start_server: ServerFactory,
) -> None:
    async with start_server(twilio_auth_token=TOKEN, public_url=PUBLIC) as srv:
        ws_url = srv.url + ROUTE
        # The server is reached at 127.0.0.1, but Twilio opened the public URL.
        assert await refused(ws_url, [("X-Twilio-Signature", sign(local_url(srv)))]) == (
            403,
            b"signature_invalid\n",
        )
        assert await refused(ws_url, [("X-Twilio-Signature", sign(PUBLIC))]) == (
            403,
            b"signature_invalid\n",
        )
        assert await opens(ws_url, [("X-Twilio-Signature", sign(PUBLIC + ROUTE))])
        default_port = "wss://voice.example.com:443/edge" + ROUTE
        assert await opens(ws_url, [("X-Twilio-Signature", sign(default_port))])


async def test_without_a_token_streams_are_not_checked(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with start_server() as srv:
        # Said once, at start.
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "Twilio streams are not verified" in r.getMessage()
        ]
        assert warnings == [
            "ASSISTANT_TWILIO_AUTH_TOKEN is not set: Twilio streams are not verified"
        ]
        for headers in ([], [("X-Twilio-Signature", "not a signature")]):
            async with connect(srv.url + ROUTE, additional_headers=headers) as ws:
                # The route serves it as before: a stream must start before its keypresses.
                dtmf = {"track": "inbound_track", "digit": "1"}
                await ws.send(
                    json.dumps(
                        {"event": "dtmf", "sequenceNumber": "1", "streamSid": "MZ1", "dtmf": dtmf}
                    )
                )
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                assert ws.close_code == 1008
        _, samples = await scrape(srv)
    assert not [name for name, _ in samples if name == "assistant_upgrades_refused_total"]


async def test_the_signature_is_checked_before_the_connection_limit(
    start_server: ServerFactory,
) -> None:
    async with start_server(twilio_auth_token=TOKEN, max_connections_per_ip=1) as srv:
        signed = [("X-Twilio-Signature", sign(local_url(srv)))]
        async with connect(srv.url + ROUTE, additional_headers=signed):
            assert (await refused(srv.url + ROUTE, []))[0] == 403
            assert (await refused(srv.url + ROUTE, signed))[0] == 429
        _, samples = await scrape(srv)
    for reason in ("signature_missing", "too_many_connections"):
        labels = {"route": ROUTE, "reason": reason}
        assert value(samples, "assistant_upgrades_refused_total", labels) == 1, reason


# docs/voice.md's example: the TwiML, the settings and the refusal it shows

SIGNED_STREAMS = (
    (Path(__file__).resolve().parent.parent / "docs" / "voice.md")
    .read_text(encoding="utf-8")
    .split("### Signed streams", 1)[1]
    .split("\n## ", 1)[0]
)


async def test_the_documented_setup_takes_what_twilio_signs(start_server: ServerFactory) -> None:
    (stream_url,) = re.findall(r'<Stream url="([^"]+)">', SIGNED_STREAMS)
    (public_url,) = re.findall(r"^ASSISTANT_PUBLIC_URL=(\S+)$", SIGNED_STREAMS, re.MULTILINE)
    (refusal,) = re.findall(r"^```\n(HTTP/1.1 403 .*?)^```$", SIGNED_STREAMS, re.M | re.S)
    head, _, body = refusal.partition("\n\n")
    async with start_server(twilio_auth_token=TOKEN, public_url=public_url) as srv:
        # The proxy takes the prefix off: the server is asked for the route itself.
        assert stream_url == public_url + ROUTE
        assert await opens(srv.url + ROUTE, [("X-Twilio-Signature", sign(stream_url))])
        with pytest.raises(InvalidStatus) as refused_here:
            await connect(srv.url + ROUTE, additional_headers=[("X-Twilio-Signature", "x")])
    response = refused_here.value.response
    assert head.splitlines()[0] == f"HTTP/1.1 {response.status_code} {response.reason_phrase}"
    shown = dict(line.split(": ", 1) for line in head.splitlines()[1:])
    assert shown == {name: response.headers[name] for name in shown}
    assert body.encode() == response.body


# Accepted, and the call works


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
async def test_a_signed_stream_is_answered(
    voice_server: ServerFactory,
) -> None:
    line = "I lost my card and I need a new one."
    async with voice_server(twilio_auth_token=TOKEN, public_url=PUBLIC) as srv:
        ws = await connect(
            srv.url + ROUTE,
            additional_headers=[("X-Twilio-Signature", sign(PUBLIC + ROUTE))],
            max_size=None,
        )
        peer = TwilioPeer(ws)
        try:
            await peer.begin({"external_id": "signed-caller"})
            await peer.stream(caller_mulaw(line))
            await peer.silence_until_media(after=0, within=30)
            await peer.stop()
            closed = await peer.closed()
        finally:
            await peer.aclose()
        turns = await user_turns(srv, "signed-caller")
    assert closed.code == 1000
    assert len(turns) == 1 and "card" in turns[0].text.lower(), [t.text for t in turns]
    assert peer.got.media, "the reply was spoken"
