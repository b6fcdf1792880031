"""Which operator role may run which /operator command. Pure policy, no I/O.

viewer: search and view profiles. agent: also the live commands (list, watch, take over,
say, release) and relabelling. admin: also export, erase and managing operators.
"""

from __future__ import annotations

from typing import Literal

Role = Literal["viewer", "agent", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "agent", "admin")

VIEWER_COMMANDS = frozenset({"profiles.search", "profile.get"})
AGENT_COMMANDS = VIEWER_COMMANDS | {
    "sessions.list",
    "session.watch",
    "session.unwatch",
    "session.takeover",
    "session.say",
    "session.release",
    "turn.relabel",
}
ADMIN_COMMANDS = AGENT_COMMANDS | {
    "profile.export",
    "profile.erase",
    "operators.list",
    "operators.create",
    "operators.revoke",
}
COMMANDS: dict[str, frozenset[str]] = {
    "viewer": VIEWER_COMMANDS,
    "agent": AGENT_COMMANDS,
    "admin": ADMIN_COMMANDS,
}
# Commands that read data about users: each allowed call is written to the audit log.
AUDITED_READS = frozenset(
    {"profiles.search", "profile.get", "profile.export", "sessions.list", "session.watch"}
)


def allowed(role: str, command: str) -> bool:
    """Whether `role` may run `command`; unknown roles may run nothing."""
    return command in COMMANDS.get(role, frozenset())


def commands_for(role: str) -> list[str]:
    return sorted(COMMANDS.get(role, frozenset()))
