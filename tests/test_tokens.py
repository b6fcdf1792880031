"""Widget identity tokens: issue_token and verify_token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from assistant.chat.widget_tokens import Claims, TokenProblem, issue_token, verify_token

SECRET = "s3cret-for-tests"
NOW = 1_750_000_000.0


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signed(payload: str, secret: str = SECRET) -> str:
    """A token with any payload, signed the documented way (independent of tokens.py)."""
    signature = hmac.new(secret.encode(), payload.encode("ascii"), hashlib.sha256).digest()
    return f"{payload}.{b64url(signature)}"


def signed_claims(claims: Any, secret: str = SECRET) -> str:
    return signed(b64url(json.dumps(claims).encode()), secret)


def valid_claims(**overrides: Any) -> dict[str, Any]:
    return {"sub": "cust-1", "tenant": "acme", "exp": int(NOW) + 60, **overrides}


# valid tokens


def test_issued_token_verifies() -> None:
    token = issue_token(SECRET, "cust-1", tenant="acme", ttl_s=600, name="Dana", now=NOW)
    assert verify_token(SECRET, token, now=NOW) == Claims(
        external_id="cust-1", tenant="acme", expires_at=int(NOW) + 600, name="Dana"
    )


def test_defaults() -> None:
    token = issue_token(SECRET, "cust-1", now=NOW)
    claims = verify_token(SECRET, token, now=NOW)
    assert isinstance(claims, Claims)
    assert claims.tenant == "default"
    assert claims.name is None
    assert claims.expires_at == int(NOW) + 3600


def test_token_format() -> None:
    token = issue_token(SECRET, "cust-1", tenant="acme", ttl_s=60, name="Dana", now=NOW)
    payload, signature = token.split(".")
    assert "=" not in token
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert json.loads(unb64url(payload)) == {
        "sub": "cust-1",
        "tenant": "acme",
        "exp": int(NOW) + 60,
        "name": "Dana",
    }
    expected = hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).digest()
    assert unb64url(signature) == expected


def test_token_made_by_another_implementation_verifies() -> None:
    """A customer's backend signs with its own code: key order and spacing do not matter."""
    payload = b64url(
        b'{"exp": 1750000060, "name": "Zo\xc3\xab", "tenant": "t", "sub": "\xc3\xbc1"}'
    )
    claims = verify_token(SECRET, signed(payload), now=NOW)
    assert claims == Claims(external_id="ü1", tenant="t", expires_at=1750000060, name="Zoë")


def test_non_ascii_claims_round_trip() -> None:
    token = issue_token(SECRET, "kunde-ü", tenant="café", name="Zoë 😀", now=NOW)
    claims = verify_token(SECRET, token, now=NOW)
    assert isinstance(claims, Claims)
    assert (claims.external_id, claims.tenant, claims.name) == ("kunde-ü", "café", "Zoë 😀")


def test_unicode_secret() -> None:
    token = issue_token("géheim-🔑", "cust-1", now=NOW)
    assert isinstance(verify_token("géheim-🔑", token, now=NOW), Claims)
    assert verify_token("geheim-🔑", token, now=NOW) is TokenProblem.FORGED


def test_claim_length_limits_are_inclusive() -> None:
    token = signed_claims(valid_claims(sub="s" * 128, tenant="t" * 64))
    claims = verify_token(SECRET, token, now=NOW)
    assert isinstance(claims, Claims)
    assert len(claims.external_id) == 128 and len(claims.tenant) == 64


# forged


def test_other_secret_is_forged() -> None:
    token = issue_token("another-secret", "cust-1", now=NOW)
    assert verify_token(SECRET, token, now=NOW) is TokenProblem.FORGED


def test_forged_signature() -> None:
    token = issue_token(SECRET, "cust-1", now=NOW)
    payload, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert verify_token(SECRET, f"{payload}.{flipped}", now=NOW) is TokenProblem.FORGED
    assert verify_token(SECRET, f"{payload}.{signature[:-1]}", now=NOW) is TokenProblem.FORGED
    assert verify_token(SECRET, f"{payload}.{signature}A", now=NOW) is TokenProblem.FORGED
    assert verify_token(SECRET, f"{payload}.{b64url(b'x' * 32)}", now=NOW) is TokenProblem.FORGED


@pytest.mark.parametrize(
    "change",
    [{"sub": "admin"}, {"tenant": "other"}, {"exp": 4_000_000_000}, {"name": "Mallory"}],
)
def test_tampered_claims_are_forged(change: dict[str, Any]) -> None:
    token = issue_token(SECRET, "cust-1", tenant="acme", now=NOW)
    payload, signature = token.split(".")
    claims = json.loads(unb64url(payload))
    claims.update(change)
    tampered = b64url(json.dumps(claims, separators=(",", ":")).encode())
    assert verify_token(SECRET, f"{tampered}.{signature}", now=NOW) is TokenProblem.FORGED


def test_re_padded_payload_is_forged() -> None:
    """The signature covers the payload text exactly as sent."""
    token = issue_token(SECRET, "cust-1", now=NOW)
    payload, signature = token.split(".")
    assert verify_token(SECRET, f"{payload}==.{signature}", now=NOW) is TokenProblem.FORGED


def test_signature_is_checked_before_claims() -> None:
    """A bad signature is reported as forged even when the payload would be malformed."""
    bogus = signed_claims(["not", "an", "object"], secret="wrong")
    assert verify_token(SECRET, bogus, now=NOW) is TokenProblem.FORGED


# expired


def test_expired() -> None:
    token = issue_token(SECRET, "cust-1", ttl_s=60, now=NOW)
    assert isinstance(verify_token(SECRET, token, now=NOW + 59), Claims)
    assert verify_token(SECRET, token, now=NOW + 60) is TokenProblem.EXPIRED
    assert verify_token(SECRET, token, now=NOW + 86_400) is TokenProblem.EXPIRED


def test_zero_and_negative_ttl_are_expired() -> None:
    assert verify_token(SECRET, issue_token(SECRET, "c", ttl_s=0, now=NOW), now=NOW) is (
        TokenProblem.EXPIRED
    )
    assert verify_token(SECRET, issue_token(SECRET, "c", ttl_s=-5, now=NOW), now=NOW) is (
        TokenProblem.EXPIRED
    )


def test_default_clock_is_the_current_time() -> None:
    assert isinstance(verify_token(SECRET, issue_token(SECRET, "c", ttl_s=600)), Claims)
    assert verify_token(SECRET, issue_token(SECRET, "c", ttl_s=-600)) is TokenProblem.EXPIRED


def test_forged_wins_over_expired() -> None:
    token = issue_token("another-secret", "cust-1", ttl_s=-10, now=NOW)
    assert verify_token(SECRET, token, now=NOW) is TokenProblem.FORGED


# malformed


@pytest.mark.parametrize(
    "token",
    ["", ".", "abc", "abc.", ".abc", "..", "é.abc", "ü" * 10 + "." + "x" * 43, " "],
)
def test_malformed_shapes(token: str) -> None:
    assert verify_token(SECRET, token, now=NOW) is TokenProblem.MALFORMED


def test_payload_without_signature_is_malformed() -> None:
    payload = issue_token(SECRET, "cust-1", now=NOW).split(".")[0]
    assert verify_token(SECRET, payload, now=NOW) is TokenProblem.MALFORMED
    assert verify_token(SECRET, payload + ".", now=NOW) is TokenProblem.MALFORMED


@pytest.mark.parametrize(
    "claims",
    [
        ["cust-1"],
        "cust-1",
        None,
        42,
        {},
        {"tenant": "acme", "exp": int(NOW) + 60},
        valid_claims(sub=""),
        valid_claims(sub="s" * 129),
        valid_claims(sub=7),
        valid_claims(tenant=""),
        valid_claims(tenant="t" * 65),
        valid_claims(tenant=None),
        valid_claims(exp="1750000060"),
        valid_claims(exp=1750000060.5),
        valid_claims(exp=None),
        valid_claims(name=7),
        valid_claims(name=["Dana"]),
    ],
    ids=repr,
)
def test_correctly_signed_but_malformed_claims(claims: Any) -> None:
    assert verify_token(SECRET, signed_claims(claims), now=NOW) is TokenProblem.MALFORMED


@pytest.mark.parametrize(
    "payload",
    [
        b64url(b"not json"),
        b64url(b"\xff\xfe\x00garbage"),
        b64url(b'{"sub": "c", '),
        "!!!!",
        "a",
        "eyJ",
    ],
)
def test_correctly_signed_but_undecodable_payload(payload: str) -> None:
    assert verify_token(SECRET, signed(payload), now=NOW) is TokenProblem.MALFORMED


def test_never_raises_on_ascii_garbage() -> None:
    token = issue_token(SECRET, "cust-1", now=NOW)
    payload, signature = token.split(".")
    garbage = [
        "a.b.c",
        f"{token}.{signature}",
        f"{payload}.{payload}",
        "." * 1000,
        "A" * 10_000 + "." + "B" * 10_000,
        "\x00.\x00",
        "%%%.%%%",
        f"{payload}\n.{signature}",
    ]
    for candidate in garbage:
        result = verify_token(SECRET, candidate, now=NOW)
        assert result in (TokenProblem.MALFORMED, TokenProblem.FORGED), candidate


@pytest.mark.parametrize("signature", ["é", "sig-ü", "😀"])
def test_non_ascii_signature_is_refused_not_raised(signature: str) -> None:
    payload = issue_token(SECRET, "cust-1", now=NOW).split(".")[0]
    result = verify_token(SECRET, f"{payload}.{signature}", now=NOW)
    assert result in (TokenProblem.MALFORMED, TokenProblem.FORGED)
