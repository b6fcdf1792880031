"""When the bot hands a conversation to a person: pure policy functions, no I/O.

Triggers, checked on each user turn:

- **explicit request**: the customer asks for a human (`asks_for_human`);
- **anger**: the emotion model hears anger at or above `anger_threshold` on this turn and on
  at least one other of the last `anger_window` turns;
- **not understood**: this turn and the one before were each low-confidence or out-of-scope
  (a turn without an intent model's confidence never counts: nothing measured it, and a
  conversation intent, such as a greeting or thanks (`assistant.replies.conversation`), is
  understood whatever its confidence). With the dialogue state on
  (`assistant.replies.dialogue`), the policy sees the turn as the dialogue read it: a
  follow-up read within the topic carries the topic's confidence, and a turn answered with a
  clarifying question is understood (the bot is doing something about it), whatever the
  heads alone made of the message.

Once handed off, the conversation waits for an operator and the bot stays quiet
(`HandoffDecision.answer` is False) until an operator releases it; the release also forgets
the turns before it, so an old streak cannot hand the conversation straight back.

The session keeps a `HandoffState` per conversation and threads it through `step` and
`release`; everything here is a pure function of its arguments.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from assistant.replies.knowledge_base import CONVERSATION_INTENTS, OUT_OF_SCOPE
from assistant.replies.understanding import Understanding


class HandoffReason(StrEnum):
    EXPLICIT_REQUEST = "explicit_request"
    REPEATED_ANGER = "repeated_anger"
    LOW_CONFIDENCE = "low_confidence_streak"
    OUT_OF_SCOPE = "out_of_scope_streak"
    WAITING_FOR_OPERATOR = "waiting_for_operator"


@dataclass(frozen=True, slots=True)
class HandoffPolicy:
    low_confidence: float = 0.4  # an intent below this confidence is "not understood"
    unresolved_turns: int = 2  # consecutive not-understood turns that hand off
    anger_threshold: float = 0.6
    anger_turns: int = 2  # angry turns, this one included, within the window
    anger_window: int = 3  # the last turns looked at, this one included


DEFAULT_POLICY = HandoffPolicy()
# Greeting, thanks, goodbye, a request for a person: part of talking, never "not understood".
_CONVERSATIONAL = frozenset(CONVERSATION_INTENTS) - {OUT_OF_SCOPE}


@dataclass(frozen=True, slots=True)
class TurnSignal:
    """What the policy needs of one user turn."""

    explicit_request: bool = False
    intent: str | None = None
    confidence: float | None = None
    out_of_scope: bool = False
    anger: float = 0.0  # the emotion model's score for "angry" (0 with no emotion model)
    clarifying: bool = False  # the bot answers with a clarifying question

    def low_confidence(self, policy: HandoffPolicy = DEFAULT_POLICY) -> bool:
        return self.confidence is not None and self.confidence < policy.low_confidence

    def unresolved(self, policy: HandoffPolicy = DEFAULT_POLICY) -> bool:
        if self.intent in _CONVERSATIONAL or self.clarifying:
            return False
        return self.out_of_scope or self.low_confidence(policy)

    def angry(self, policy: HandoffPolicy = DEFAULT_POLICY) -> bool:
        return self.anger >= policy.anger_threshold


@dataclass(frozen=True, slots=True)
class HandoffDecision:
    handoff: bool
    reason: HandoffReason | None = None
    answer: bool = True  # whether the bot replies to this turn at all


_DET = r"(?:(?:a|an|some|the|your|one\s+of\s+your|real|live|actual)\s+)*"
_STAFF = (
    r"(?:human|person|agent|operator|representative|rep|advisor|adviser|someone|somebody|"
    r"staff|employee|manager|supervisor|customer\s+service|support)"
)
# Banking talk is full of "transfer money to someone": only these shapes count as a request.
_TALK = re.compile(r"\b(?:speak|talk|chat)\s+(?:to|with)\s+" + _DET + _STAFF + r"\b", re.I)
_CONNECT = re.compile(
    r"\b(?:connect|transfer|put|pass|escalate)\s+(?:me|this|it|us)\s+(?:through\s+)?"
    r"(?:to|with)\s+" + _DET + _STAFF + r"\b",
    re.I,
)
_WANT = re.compile(
    r"\b(?:want|need|get\s+me|give\s+me|request)\s+"
    + _DET
    + r"(?:human|agent|operator|representative|advisor|adviser)\b",
    re.I,
)
_REAL = re.compile(r"\b(?:real|live|actual)\s+(?:human|person|agent|people)\b", re.I)
_BARE = re.compile(
    r"^\W*(?:an?\s+)?(?:human|agent|operator|representative|real\s+person)"
    r"(?:\s+(?:please|now))?\W*$",
    re.I,
)
_NEGATED = re.compile(
    r"\b(?:don'?t|do\s+not|no\s+need\s+to|never)\s+(?:\w+\s+){0,2}?"
    r"(?:speak|talk|chat|want|need)\b",
    re.I,
)
_ABOUT_BOT = re.compile(r"\bare\s+you\s+(?:an?\s+)?(?:human|real|person|bot|robot)\b", re.I)
_REQUESTS = (_TALK, _CONNECT, _WANT, _BARE)


def asks_for_human(text: str) -> bool:
    """Whether the customer asks to be passed to a person.

    "Are you a human?" is a question about the bot, and "I don't need to talk to anyone"
    declines: neither counts.
    """
    if _NEGATED.search(text):
        return False
    if any(pattern.search(text) for pattern in _REQUESTS):
        return True
    return bool(_REAL.search(text)) and not _ABOUT_BOT.search(text)


def turn_signal(text: str, understanding: Understanding, *, clarifying: bool = False) -> TurnSignal:
    """The policy's view of one user turn (text already redacted or not: only words matter);
    `clarifying`: the bot answers it with a clarifying question."""
    return TurnSignal(
        explicit_request=asks_for_human(text),
        intent=understanding.intent,
        confidence=understanding.confidence,
        out_of_scope=understanding.out_of_scope,
        anger=understanding.emotion_score("angry"),
        clarifying=clarifying,
    )


def _last(signals: Sequence[TurnSignal], n: int) -> Sequence[TurnSignal]:
    # signals[-0:] would be the whole sequence, not none of it.
    return signals[len(signals) - n :] if n > 0 else ()


def decide_handoff(
    history: Sequence[TurnSignal], current: TurnSignal, policy: HandoffPolicy = DEFAULT_POLICY
) -> HandoffDecision:
    """Whether this turn hands the conversation to a person; `history` is oldest first."""
    if current.explicit_request:
        return HandoffDecision(True, HandoffReason.EXPLICIT_REQUEST)
    window = [*_last(history, policy.anger_window - 1), current]
    if current.angry(policy) and sum(s.angry(policy) for s in window) >= policy.anger_turns:
        return HandoffDecision(True, HandoffReason.REPEATED_ANGER)
    streak = [*_last(history, policy.unresolved_turns - 1), current]
    if len(streak) >= policy.unresolved_turns and all(s.unresolved(policy) for s in streak):
        reason = (
            HandoffReason.OUT_OF_SCOPE
            if all(s.out_of_scope for s in streak)
            else HandoffReason.LOW_CONFIDENCE
        )
        return HandoffDecision(True, reason)
    return HandoffDecision(False)


@dataclass(frozen=True, slots=True)
class HandoffState:
    """A conversation's policy state: the turns since the last release, and whether it waits."""

    signals: tuple[TurnSignal, ...] = ()
    waiting: bool = False
    reason: HandoffReason | None = None

    @property
    def bot_may_answer(self) -> bool:
        return not self.waiting


# The policy looks back at most this many turns; older signals are dropped.
_KEEP = max(DEFAULT_POLICY.anger_window, DEFAULT_POLICY.unresolved_turns) + 1


def step(
    state: HandoffState, current: TurnSignal, policy: HandoffPolicy = DEFAULT_POLICY
) -> tuple[HandoffState, HandoffDecision]:
    """Fold one user turn into the state and say what the bot does with it."""
    keep = max(policy.anger_window, policy.unresolved_turns, _KEEP)
    signals = (*state.signals, current)[-keep:]
    if state.waiting:
        waiting = HandoffDecision(True, HandoffReason.WAITING_FOR_OPERATOR, answer=False)
        return replace(state, signals=signals), waiting
    decision = decide_handoff(state.signals, current, policy)
    if decision.handoff:
        return HandoffState(signals, waiting=True, reason=decision.reason), decision
    return replace(state, signals=signals), decision


def take_over(state: HandoffState) -> HandoffState:
    """An operator took the conversation without a trigger: the bot stays quiet too."""
    return replace(state, waiting=True, reason=state.reason or HandoffReason.WAITING_FOR_OPERATOR)


def release(state: HandoffState) -> HandoffState:
    """The operator hands the conversation back: the bot answers again, from a clean slate."""
    del state  # nothing carries over: a streak before the operator must not re-trigger
    return HandoffState()


def near_handoff(state: HandoffState, policy: HandoffPolicy = DEFAULT_POLICY) -> bool:
    """Whether the turn just stepped was not understood, so one more such turn hands off.

    The reply to such a turn offers a person before the policy has to hand off.
    """
    return bool(state.signals) and not state.waiting and state.signals[-1].unresolved(policy)
