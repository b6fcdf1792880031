"""What the three wire protocols share: close codes (RFC 6455, 7.4.1) and the closed transport."""

from __future__ import annotations

__all__ = [
    "CLOSE_INTERNAL",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_SERVICE_RESTART",
    "CLOSE_TRY_AGAIN",
    "CLOSE_UNSUPPORTED",
    "TransportClosed",
]

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
# The server is restarting (draining): reconnect, to any replica, and resume.
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013


class TransportClosed(Exception):
    """The peer is gone: a send or close found the connection already closed.

    The network edge raises it in place of its WebSocket library's own error, so that the
    conversation side can tell a vanished peer (routine) from a fault (logged).
    """
