"""Twilio's signature on a Media Stream's WebSocket upgrade (`X-Twilio-Signature`): pure, no I/O.

Twilio signs every request it makes with the account's auth token: the signature is the base64
of the HMAC-SHA1 of the full URL it requested, followed by the request's POST parameters sorted
by name; an upgrade has none, so the URL alone is signed. The server sees its own side of a
proxy, not that URL: it rebuilds it from `ASSISTANT_PUBLIC_URL` and the request's path and
query, or else from `wss://` (Twilio opens nothing else) and the request's `Host`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "TWILIO_SIGNATURE_HEADER",
    "SignatureRefusal",
    "twilio_refusal",
    "twilio_signature",
    "twilio_stream_url",
]

TWILIO_SIGNATURE_HEADER = "X-Twilio-Signature"

# Why an upgrade was refused: the metrics' `reason` label and the 403's body.
SignatureRefusal = Literal["signature_missing", "signature_invalid"]

_DEFAULT_PORTS = {"wss": 443, "ws": 80}


def twilio_signature(auth_token: str, url: str) -> str:
    """What Twilio sends in `X-Twilio-Signature` for a request of `url` without a body."""
    digest = hmac.new(auth_token.encode(), url.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def twilio_stream_url(target: str, hosts: Sequence[str], public_url: str | None) -> str:
    """The URL Twilio opened, for a request of `target` (path and query, as on the request
    line) with these `Host` headers. `public_url`: the scheme, host and any path prefix in
    front of the server. A request without exactly one `Host` gets a URL that no signature
    matches."""
    if public_url is not None:
        return public_url.rstrip("/") + target
    host = hosts[0] if len(hosts) == 1 else ""
    return f"wss://{host}{target}"


def _with_and_without_default_port(url: str) -> list[str]:
    """`url`, and `url` with its scheme's default port written out or left out: whether the
    port appears depends on who wrote the URL (the TwiML, a proxy's `Host`), so Twilio's own
    validators accept both."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        return [url]
    if default is None or parts.hostname is None:
        return [url]
    if port is None:
        other = parts._replace(netloc=f"{parts.netloc}:{default}")
    elif port == default:
        other = parts._replace(netloc=parts.netloc.rpartition(":")[0])
    else:
        return [url]
    return [url, urlunsplit(other)]


def twilio_refusal(auth_token: str, url: str, signatures: Sequence[str]) -> SignatureRefusal | None:
    """Why an upgrade of `url` carrying these `X-Twilio-Signature` headers is refused; None
    when it carries exactly one and it is Twilio's for `url`."""
    if not signatures:
        return "signature_missing"
    if len(signatures) > 1:
        return "signature_invalid"
    # Header values arrive as ASCII with undecodable bytes escaped; compare_digest takes bytes.
    given = signatures[0].encode("utf-8", "surrogateescape")
    for candidate in _with_and_without_default_port(url):
        expected = twilio_signature(auth_token, candidate).encode("ascii")
        if hmac.compare_digest(expected, given):
            return None
    return "signature_invalid"
