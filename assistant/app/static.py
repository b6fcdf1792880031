"""The pages server.py serves over HTTP: the operator console and the chat widget demo.

Plain HTML, CSS and JavaScript modules under assistant/app/web/, committed as they are served:
there is no build step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

WEB = Path(__file__).resolve().parent / "web"
PAGES = {"/console": "console.html", "/widget": "widget.html"}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# Same-origin scripts and styles only; the pages talk to this server's WebSockets.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)


@dataclass(frozen=True, slots=True)
class Asset:
    content_type: str
    body: bytes


@cache
def _files() -> dict[str, str]:
    """URL path -> file name, for every file shipped under web/ (fixed at first use)."""
    files = {f"/static/{p.name}": p.name for p in WEB.iterdir() if p.suffix in TYPES}
    files.update(PAGES)
    return files


def static_asset(path: str) -> Asset | None:
    """The page or static file at URL `path`, or None. Only files listed in web/ are served."""
    name = _files().get(path)
    if name is None:
        return None
    file = WEB / name
    return Asset(TYPES[file.suffix], file.read_bytes())
