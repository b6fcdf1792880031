"""What the three wire protocols share: WebSocket close codes (RFC 6455, section 7.4.1)."""

from __future__ import annotations

__all__ = [
    "CLOSE_INTERNAL",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_SERVICE_RESTART",
    "CLOSE_TRY_AGAIN",
    "CLOSE_UNSUPPORTED",
]

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
# The server is restarting (draining): reconnect, to any replica, and resume.
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013
