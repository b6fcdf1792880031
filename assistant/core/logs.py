"""Structured logs: one JSON object per line, tagged with the session and user concerned.

The chat layer binds the ids to context variables for each connection task and each session's
turn worker, so every line written while handling a session carries them without passing
them around. Log calls name ids, types and counts, never message text or other content;
the formatter writes only the fields listed here, never arbitrary `extra` values.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

_session_id: ContextVar[str | None] = ContextVar("session_id", default=None)
_user_id: ContextVar[str | None] = ContextVar("user_id", default=None)

# `extra` keys copied into the JSON object when a log call passes them.
EXTRA_FIELDS = ("session_id", "user_id", "route", "code", "type", "replica", "count", "reason")


def bind_ids(*, session_id: str | None = None, user_id: str | None = None) -> None:
    """Tag the log lines of the current task (and tasks it starts afterwards) with these ids."""
    if session_id is not None:
        _session_id.set(session_id)
    if user_id is not None:
        _user_id.set(user_id)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = {"session_id": _session_id.get(), "user_id": _user_id.get()}
        for key in EXTRA_FIELDS:
            value = getattr(record, key, None)
            if value is None:
                value = context.get(key)
            if value is not None:
                out[key] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str, log_format: Literal["auto", "json", "text"]) -> None:
    """Log to stderr: JSON lines, or plain text when asked or when stderr is a terminal."""
    as_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Python's warnings print straight to stderr: through the handler they are lines of the
    # log, in its format, like everything else there.
    logging.captureWarnings(True)
