"""Authentication and isolation on a real server: widget tokens, other users' and other
tenants' sessions, operator key guessing, browser origins.

The role matrix over every operator command is tests/test_operator_roles.py.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from assistant import issue_token
from assistant.operators.sign_in_throttle import AuthThrottle, AuthThrottleConfig
from server import RunningServer
from tests.conftest import Client, ServerFactory
from tests.support.operator_helpers import OperatorClient, make_operator

SECRET = "isolation-secret"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def tampered(token: str, **claims: Any) -> str:
    """The token with its claims changed and its original signature kept."""
    payload, _, signature = token.partition(".")
    raw = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"{_b64(json.dumps({**raw, **claims}).encode())}.{signature}"


async def refused_hello(srv: RunningServer, **hello: Any) -> tuple[dict[str, Any], int]:
    """The error answering `hello` and the close code that follows it."""
    async with connect(srv.url + "/chat") as ws:
        client = Client(ws)
        await client.send({"type": "hello", **hello})
        error = await client.recv()
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.rcvd is not None
        return error, closed.value.rcvd.code


async def test_bad_widget_tokens_are_refused(start_server: ServerFactory) -> None:
    good = issue_token(SECRET, "alice", tenant="acme", ttl_s=600)
    payload, _, signature = good.partition(".")
    bad = {
        "signed with another secret": issue_token("not-the-secret", "alice", tenant="acme"),
        "expired a second ago": issue_token(SECRET, "alice", tenant="acme", ttl_s=-1),
        "someone else's subject": tampered(good, sub="bob"),
        "another tenant": tampered(good, tenant="globex"),
        "expiry pushed back": tampered(good, exp=int(time.time()) + 10**6),
        "no signature": f"{payload}.",
        "truncated signature": f"{payload}.{signature[:-2]}",
        "signature of nothing": f".{signature}",
        "three parts": f"{good}.{signature}",
    }
    async with start_server(widget_secret=SECRET) as srv:
        for case, token in bad.items():
            error, code = await refused_hello(srv, token=token)
            assert (error["type"], error["code"], code) == ("error", "unauthorized", 1008), case
        # A user object cannot stand in for a token.
        error, code = await refused_hello(srv, user={"external_id": "alice"})
        assert (error["code"], code) == ("unauthorized", 1008)
        async with connect(srv.url + "/chat") as ws:
            assert (await Client(ws).hello(token=good))["resumed"] is False


async def test_sessions_are_isolated_between_users_and_tenants(
    start_server: ServerFactory,
) -> None:
    async with start_server(widget_secret=SECRET) as srv:
        owner_token = issue_token(SECRET, "alice", tenant="acme", ttl_s=600)
        async with connect(srv.url + "/chat") as ws:
            owner = Client(ws)
            welcome = await owner.hello(token=owner_token)
            await owner.send({"type": "message", "id": "o1", "text": "My card was stolen"})
            await owner.recv_until("reply")
        session_id = welcome["session_id"]
        # The same external id in another tenant is another user, and so is another subject.
        for intruder in (
            issue_token(SECRET, "alice", tenant="globex", ttl_s=600),
            issue_token(SECRET, "mallory", tenant="acme", ttl_s=600),
        ):
            error, code = await refused_hello(
                srv, token=intruder, session_id=session_id, last_seq=0
            )
            assert (error["code"], code) == ("forbidden", 1008)
            assert error["seq"] == 0 and "turn_id" not in error, "nothing of the session leaks"
        globex = await srv.runtime.store.upsert_user("globex", "alice")
        assert globex.id != welcome["user_id"]
        # The owner resumes and gets the whole stream; no one else's frames are in it.
        async with connect(srv.url + "/chat") as ws:
            owner = Client(ws)
            again = await owner.hello(token=owner_token, session_id=session_id, last_seq=0)
            assert again["resumed"] is True and again["user_id"] == welcome["user_id"]
            frames = [await owner.recv() for _ in range(again["last_seq"])]
            assert [f["seq"] for f in frames] == list(range(1, again["last_seq"] + 1))
        turns = await srv.runtime.store.list_turns(session_id)
        assert {t.user_id for t in turns} == {welcome["user_id"]}


async def _auth(srv: RunningServer, key: str, source: str = "127.0.0.1") -> tuple[str, int]:
    """Sign in from `source`: the answer's type or error code, and the close code (0: open)."""
    async with connect(srv.url + "/operator", local_addr=(source, 0)) as ws:
        client = OperatorClient(ws)
        answer = await client.call("auth", token=key)
        outcome = answer["type"] if answer["type"] == "result" else answer["code"]
        try:
            await client.recv(within=5)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return outcome, closed.rcvd.code
        except TimeoutError:
            return outcome, 0
        raise AssertionError("nothing else is sent after auth")


async def test_operator_key_guessing_is_throttled(start_server: ServerFactory) -> None:
    throttle = AuthThrottleConfig(max_failures=3, window_s=60, failure_delay_s=0.3)
    async with start_server(auth=throttle) as srv:
        key = await make_operator(srv, "guarded", "viewer")
        prefix, operator_id, secret = key.split("_", 2)
        # The right operator with a wrong secret (a scrypt check), garbage, one character off.
        guesses = [
            f"{prefix}_{operator_id}_{'x' * len(secret)}",
            "not-a-key",
            key[:-1] + ("A" if key[-1] != "A" else "B"),
        ]
        for guess in guesses:
            started = time.monotonic()
            assert await _auth(srv, guess) == ("unauthorized", 1008)
            assert time.monotonic() - started >= 0.3, "each failure is answered late"
        # Locked out: even the right key is refused now, from this address only.
        assert await _auth(srv, key) == ("rate_limited", 1013)
        assert await _auth(srv, key, source="127.0.0.2") == ("result", 0)


def test_throttle_window_and_reset() -> None:
    now = [0.0]
    throttle = AuthThrottle(
        AuthThrottleConfig(max_failures=2, window_s=10, max_addresses=2), clock=lambda: now[0]
    )
    throttle.failed("a")
    assert throttle.retry_after("a") == 0
    now[0] = 4.0
    throttle.failed("a")
    assert throttle.retry_after("a") == pytest.approx(6.0)
    now[0] = 10.5  # the first failure has aged out
    assert throttle.retry_after("a") == 0
    throttle.failed("a")
    assert throttle.retry_after("a") == pytest.approx(3.5)
    throttle.succeeded("a")
    assert throttle.retry_after("a") == 0
    # Memory is bounded: the longest-quiet addresses are forgotten first.
    for address in ("b", "c", "d"):
        throttle.failed(address)
        throttle.failed(address)
    assert throttle.retry_after("b") == 0 and throttle.retry_after("d") > 0


async def test_origin_allowlist(start_server: ServerFactory) -> None:
    allowed = "https://shop.example"
    async with start_server(allowed_origins=(allowed,)) as srv:
        url = srv.url + "/chat"
        async with connect(url, origin=allowed) as ws:  # type: ignore[arg-type]
            await Client(ws).hello()
        for origin in ("https://evil.example", "https://shop.example.evil.example", "null"):
            with pytest.raises(InvalidStatus) as refused:
                await connect(url, origin=origin)  # type: ignore[arg-type]
            assert refused.value.response.status_code == 403, origin
        # Clients that are not browsers send no Origin and pass: they carry tokens instead.
        async with connect(url) as ws:
            await Client(ws).hello()
