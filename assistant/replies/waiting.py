"""What a customer waiting for a person is told: pure policy, no I/O.

Once the handoff policy (assistant.replies.handoff) has passed a conversation to a person,
the bot no longer answers questions, but it never leaves a message unanswered either:

- the handoff reply ends with where the customer stands (`handoff_notice`): a member of the
  team is online and will join, or nobody is online now and what the customer can do;
- every later message, until an operator takes the conversation over, gets a reply from
  `waiting_reply`: the full status again only when it changed since the customer was last
  told it, otherwise a short acknowledgement;
- the customer can go back to the bot by saying so (`asks_for_bot`: "back to the bot",
  "talk to the assistant", "never mind"...), which ends the wait.

Calls hear the same, worded for a phone: a caller cannot "keep writing".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class WaitStatus(StrEnum):
    """Where a waiting customer stands; sent as the `waiting` field of their replies."""

    OPERATOR_COMING = "operator_coming"  # an operator who can take the conversation is online
    NOBODY_ONLINE = "nobody_online"


@dataclass(frozen=True, slots=True)
class WaitingState:
    """What the customer has been told since the handoff."""

    told: WaitStatus | None = None  # the status last said in full
    acknowledged: int = 0  # short acknowledgements since


@dataclass(frozen=True, slots=True)
class WaitingReply:
    text: str
    status: WaitStatus


def status_of(operators_online: bool) -> WaitStatus:
    return WaitStatus.OPERATOR_COMING if operators_online else WaitStatus.NOBODY_ONLINE


_FULL: dict[tuple[str, WaitStatus], str] = {
    ("chat", WaitStatus.OPERATOR_COMING): (
        "A member of our team is online and will join this chat shortly; they will see "
        "everything you write here."
    ),
    ("chat", WaitStatus.NOBODY_ONLINE): (
        "Nobody from our team is online right now. You can keep writing here and a member of "
        'the team will read it when they are back, or say "back to the bot" to carry on '
        "with me."
    ),
    ("voice", WaitStatus.OPERATOR_COMING): (
        "A member of our team is available and will pick up this call shortly; please stay "
        "on the line."
    ),
    ("voice", WaitStatus.NOBODY_ONLINE): (
        "Nobody from our team is available right now. You can call back later, or say "
        '"back to the assistant" to carry on with me.'
    ),
}

# Said in turn, so that a customer who writes several times does not read one line again
# and again.
_SHORT: dict[tuple[str, WaitStatus], tuple[str, ...]] = {
    ("chat", WaitStatus.OPERATOR_COMING): (
        "Got it: the person who joins will see that.",
        "Noted; it will be there for them when they join.",
    ),
    ("chat", WaitStatus.NOBODY_ONLINE): (
        "Got it: it's saved for our team.",
        "Noted; our team will read it when they are back.",
    ),
    ("voice", WaitStatus.OPERATOR_COMING): (
        "Thanks, a member of our team will be with you shortly.",
        "Still connecting you; please stay on the line.",
    ),
    ("voice", WaitStatus.NOBODY_ONLINE): (
        "Nobody from our team is free yet.",
        'Still nobody free; say "back to the assistant" to carry on with me.',
    ),
}

# The reply to `asks_for_bot`, on a chat or a call alike.
BACK_TO_BOT = "Sure, you're back with the assistant. What can I help you with?"


def _channel(channel: str) -> str:
    return "voice" if channel == "voice" else "chat"


def handoff_notice(operators_online: bool, channel: str) -> tuple[WaitingState, WaitingReply]:
    """The sentence that ends the handoff reply, and the state it leaves."""
    status = status_of(operators_online)
    return WaitingState(told=status), WaitingReply(_FULL[_channel(channel), status], status)


def waiting_reply(
    state: WaitingState, operators_online: bool, channel: str
) -> tuple[WaitingState, WaitingReply]:
    """The reply to a message sent while the conversation waits for a person."""
    status = status_of(operators_online)
    key = (_channel(channel), status)
    if state.told is not status:
        return WaitingState(told=status), WaitingReply(_FULL[key], status)
    choices = _SHORT[key]
    text = choices[state.acknowledged % len(choices)]
    return WaitingState(status, state.acknowledged + 1), WaitingReply(text, status)


_BOT = r"(?:the\s+|your\s+)?(?:bot|chat\s*bot|assistant|virtual\s+assistant|ai)"
_BACK_TO = re.compile(
    r"\b(?:go|going|get|switch|take\s+me|put\s+me|send\s+me)?\s*back\s+to\s+" + _BOT + r"\b",
    re.I,
)
_WITH_BOT = re.compile(
    r"\b(?:talk|speak|chat|continue|carry\s+on|stay)\s+(?:to|with)\s+" + _BOT + r"\b", re.I
)
_BARE = re.compile(
    r"^\W*(?:never\s*mind|forget\s+it|no\s+need|(?:the\s+)?(?:bot|assistant)(?:\s+please)?)"
    r"\W*$",
    re.I,
)
_NEGATED = re.compile(r"\b(?:don'?t|do\s+not|not|no\s+more|never)\s+(?:\w+\s+){0,3}?" + _BOT, re.I)


def asks_for_bot(text: str) -> bool:
    """Whether a waiting customer asks to carry on with the bot instead of a person.

    "I don't want the bot" refuses it; "back to the bot" or a bare "never mind" asks for it.
    """
    if _BARE.search(text):
        return True
    if _NEGATED.search(text):
        return False
    return bool(_BACK_TO.search(text) or _WITH_BOT.search(text))
