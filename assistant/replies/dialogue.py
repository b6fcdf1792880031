"""The conversation's dialogue state and how each message is read against it. Pure, no I/O.

A conversation keeps one `DialogueState` (stored as JSON in `conversations.dialogue_state`):
its **topic** (the banking intent it is about, with the confidence it was set with and how
many turns have stayed on it), an **open question** (the intents a clarifying question
offered, each with the suggestion the widget shows as a button) and the **details** gathered
so far (`assistant.replies.details`: merchant, amount, date, card, transfer).

`read_turn` takes the state, the message, the heads' understanding (after the conversation
intents, `assistant.replies.conversation`) and the follow-up detector's score, and says how
the turn is read (`TurnKind`) and which intent the reply is grounded in:

1. a **conversation intent** (greeting, thanks, goodbye, a request for a person) neither sets
   nor clears anything: no kind, the state as it was;
2. an **open question** is resolved by a message that is one of its suggestions, names one
   ("the first one", "the second", "option 2") or that the heads read as one of the offered
   intents: that intent is the answer and the topic. Any other message drops the question
   and is read as below;
3. with a topic open, a message is a **follow-up** (read within the topic) when the heads
   agree with the topic; or when they say out of scope and the detector's score reaches
   `follow_up_oos_score`; or when they are less sure than `switch_confidence` of another
   intent and the score reaches `follow_up_score`; or, whatever the heads say, when the
   score reaches `sure_follow_up_score` (a profile that conditions the heads can make them
   sure of some intent in "how long will that take");
4. otherwise the message is read alone: a **clarification** when the heads are torn between
   banking intents (the best below `clarify_confidence` and within `clarify_margin` of the
   second), else a **new topic** with the heads' intent (out of scope leaves the topic as it
   was: nothing there to follow up on).

Policy and model: whether a message is elliptical ("why would that be", "how much will that
cost me") is learned (`assistant.replies.follow_up_model`), because the heads alone read such
messages as out of scope or as some other intent with middling confidence, exactly as they
read many stand-alone Banking77 requests; no word list separated the two without holding
back about one switch in a hundred (docs/conversation.md). Everything else is policy,
because it is clearer as one: conversation intents, the topic's bookkeeping, the open
question and its answers. The thresholds were calibrated by `assistant/app/follow_up_training.py`
on Banking77 *train* (out-of-fold heads) and development phrasings only; the figures and the
command are in docs/conversation.md.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from assistant.replies.composer import opening
from assistant.replies.details import EMPTY, Details, merge
from assistant.replies.knowledge_base import CONVERSATION_INTENTS, KnowledgeBase
from assistant.replies.understanding import Understanding

STATE_VERSION = 1


class TurnKind(StrEnum):
    """How a user turn was read; sent as the `turn` field of its reply."""

    NEW_TOPIC = "new_topic"  # read alone: a new request (or one out of scope)
    FOLLOW_UP = "follow_up"  # read within the conversation's topic
    CLARIFICATION = "clarification"  # the assistant asks which of a few intents is meant


@dataclass(frozen=True, slots=True)
class DialoguePolicy:
    """Thresholds of `read_turn`; the defaults are calibrated (docs/conversation.md)."""

    # The follow-up detector's score at or above which a message the heads read as another
    # intent, less surely than `switch_confidence`, is read within the topic.
    follow_up_score: float = 0.55
    # The same for a message the heads read as out of scope.
    follow_up_oos_score: float = 0.15
    # The heads at least this sure of another intent: a new request, unless the detector's
    # score reaches `sure_follow_up_score`.
    switch_confidence: float = 0.9
    sure_follow_up_score: float = 0.84
    # Ask which intent is meant when the best is below this and within `clarify_margin` of
    # the second.
    clarify_confidence: float = 0.45
    clarify_margin: float = 0.05

    def __post_init__(self) -> None:
        for name in (
            "follow_up_score",
            "follow_up_oos_score",
            "switch_confidence",
            "sure_follow_up_score",
            "clarify_confidence",
            "clarify_margin",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


DEFAULT_POLICY = DialoguePolicy()


@dataclass(frozen=True, slots=True)
class Choice:
    """One intent a clarifying question offers, and the words of its button."""

    intent: str
    suggestion: str


@dataclass(frozen=True, slots=True)
class OpenQuestion:
    """A clarifying question the customer has not answered yet."""

    choices: tuple[Choice, ...]

    @property
    def suggestions(self) -> tuple[str, ...]:
        return tuple(c.suggestion for c in self.choices)

    @property
    def intents(self) -> tuple[str, ...]:
        return tuple(c.intent for c in self.choices)


@dataclass(frozen=True, slots=True)
class DialogueState:
    topic: str | None = None
    topic_confidence: float | None = None
    turns_on_topic: int = 0
    question: OpenQuestion | None = None
    details: Details = EMPTY

    def to_json(self) -> dict[str, Any]:
        """As stored in `conversations.dialogue_state` and shown to operators."""
        return {
            "version": STATE_VERSION,
            "topic": self.topic,
            "topic_confidence": None
            if self.topic_confidence is None
            else round(self.topic_confidence, 4),
            "turns_on_topic": self.turns_on_topic,
            "open_question": None
            if self.question is None
            else {
                "choices": [
                    {"intent": c.intent, "suggestion": c.suggestion} for c in self.question.choices
                ]
            },
            "details": self.details.to_dict(),
        }

    @classmethod
    def from_json(
        cls, raw: Mapping[str, Any] | None, known: Collection[str] | None = None
    ) -> DialogueState:
        """The inverse of `to_json`. What does not check out is dropped, never guessed: a
        state from another version, or a topic or choice that `known` intents do not hold
        (the knowledge base changed since), reads as no topic or no question."""
        if not isinstance(raw, Mapping) or raw.get("version") != STATE_VERSION:
            return cls()

        def intent(value: Any) -> str | None:
            if not isinstance(value, str) or not value:
                return None
            return value if known is None or value in known else None

        topic = intent(raw.get("topic"))
        confidence = raw.get("topic_confidence")
        if not isinstance(confidence, int | float) or not 0.0 <= confidence <= 1.0:
            confidence = None
        turns = raw.get("turns_on_topic")
        turns = turns if isinstance(turns, int) and not isinstance(turns, bool) else 0
        question: OpenQuestion | None = None
        asked = raw.get("open_question")
        if isinstance(asked, Mapping) and isinstance(asked.get("choices"), list):
            choices = []
            for item in asked["choices"]:
                if not isinstance(item, Mapping):
                    continue
                name, words = intent(item.get("intent")), item.get("suggestion")
                if name is not None and isinstance(words, str) and words.strip():
                    choices.append(Choice(name, words))
            question = OpenQuestion(tuple(choices)) if len(choices) >= 2 else None
        details = raw.get("details")
        return cls(
            topic=topic,
            topic_confidence=float(confidence) if topic is not None and confidence else None,
            turns_on_topic=max(turns, 0) if topic is not None else 0,
            question=question,
            details=Details.from_dict(details) if isinstance(details, Mapping) else EMPTY,
        )

    def noting(self, details: Details, *, fresh: bool) -> DialogueState:
        """The state with a turn's details: `fresh` (a new topic) starts them over, otherwise
        they are merged (`assistant.replies.details.merge`: newer wins, two transactions
        are never mixed)."""
        return replace(self, details=details if fresh else merge(self.details, details))


@dataclass(frozen=True, slots=True)
class DialogueTurn:
    """How a user turn was read.

    `kind` is None for a conversation intent. `understanding` is what the reply is grounded
    in: the topic for a follow-up, the chosen intent for an answered question, the heads'
    own reading otherwise (with a clarification, their best guess, which the question does
    not act on). `question` is set with a clarification; `state` is the state after the turn.
    """

    kind: TurnKind | None
    understanding: Understanding
    state: DialogueState
    question: OpenQuestion | None = None

    @property
    def suggestions(self) -> tuple[str, ...] | None:
        return self.question.suggestions if self.question is not None else None


def suggestion_for(kb: KnowledgeBase, intent: str) -> str:
    """A button's words for `intent`: its answer's title ("a declined card payment") with a
    capital, or the intent's name in words where the knowledge base has no answer."""
    entry = kb.for_intent(intent)
    words = entry.title if entry is not None else intent.replace("_", " ").strip(" ?")
    return words[:1].upper() + words[1:]


_NON_WORD = re.compile(r"[^\w]+")


def _plain(text: str) -> str:
    """Lower case, apostrophes dropped ("it's" is "its"), every other mark a space."""
    return _NON_WORD.sub(" ", text.lower().replace("'", "").replace("\u2019", "")).strip()


_FIRST = r"first|1st|former|top"
_SECOND = r"second|2nd|latter"
_THIRD = r"third|3rd"
_NUMBERED = r"(?:option|number|no|choice)\s*(?P<number>1|2|3|one|two|three)"
_PICK = re.compile(
    r"^(?:(?:yes|yeah|ok|okay|well|um|its|it\s+is|i\s+mean|i\s+meant|id\s+say|"
    r"i\s+want|please|the)\s+)*"
    rf"(?:(?P<first>{_FIRST})|(?P<second>{_SECOND})|(?P<third>{_THIRD})|(?P<last>last)|"
    rf"{_NUMBERED}|(?P<digit>[123]))"
    r"(?:\s+(?:one|option|choice|thing|please|then))*$"
)
_NUMBERS = {"1": 0, "one": 0, "2": 1, "two": 1, "3": 2, "three": 2}


def _ordinal(text: str, count: int) -> int | None:
    """The index a message picks by position ("the first one", "option 2", "the last")."""
    m = _PICK.match(_plain(text))
    if m is None:
        return None
    if m["first"]:
        index = 0
    elif m["second"]:
        index = 1
    elif m["third"]:
        index = 2
    elif m["last"]:
        index = count - 1
    else:
        index = _NUMBERS[m["number"] or m["digit"]]
    return index if index < count else None


def chosen(question: OpenQuestion, text: str, understanding: Understanding) -> Choice | None:
    """The choice a message makes, or None when it answers something else."""
    said = _plain(text)
    for choice in question.choices:
        words = _plain(choice.suggestion)
        if said == words or said == _plain(choice.intent) or (words and words in said):
            return choice
    index = _ordinal(text, len(question.choices))
    if index is not None:
        return question.choices[index]
    best = understanding.top2[0][0] if understanding.top2 is not None else understanding.intent
    if not understanding.out_of_scope and best in question.intents:
        return question.choices[question.intents.index(best)]
    return None


_CONVERSATIONAL = frozenset(CONVERSATION_INTENTS) - {"out_of_scope"}


def _grounded(u: Understanding, intent: str, confidence: float | None) -> Understanding:
    """`u` grounded in `intent`: its emotion kept, no second guess, so that the reply writer
    answers it rather than asking again (the dialogue decides when to ask)."""
    return replace(u, intent=intent, confidence=confidence, top2=None)


def _on_topic(state: DialogueState, intent: str, confidence: float | None) -> DialogueState:
    if intent == state.topic:
        best = max(confidence or 0.0, state.topic_confidence or 0.0)
        return replace(state, topic_confidence=best, turns_on_topic=state.turns_on_topic + 1)
    return replace(state, topic=intent, topic_confidence=confidence, turns_on_topic=1)


def read_turn(
    state: DialogueState,
    text: str,
    understanding: Understanding,
    follow_up_score: float,
    kb: KnowledgeBase,
    policy: DialoguePolicy = DEFAULT_POLICY,
) -> DialogueTurn:
    """How one user message is read against the conversation's state (see the module's
    docstring); `follow_up_score` is `FollowUpModel.score` of the message's embedding."""
    u = understanding
    if u.intent is None:  # no intent model: nothing to read the message against
        return DialogueTurn(TurnKind.NEW_TOPIC, u, state)
    if u.intent in _CONVERSATIONAL:
        return DialogueTurn(None, u, state)
    if state.question is not None:
        choice = chosen(state.question, text, u)
        state = replace(state, question=None)
        if choice is not None:
            kind = TurnKind.FOLLOW_UP if choice.intent == state.topic else TurnKind.NEW_TOPIC
            return DialogueTurn(
                kind, _grounded(u, choice.intent, 1.0), _on_topic(state, choice.intent, 1.0)
            )
    best, p1 = u.top2[0] if u.top2 is not None else (u.intent, u.confidence or 0.0)
    topic = state.topic
    if topic is not None:
        agrees = not u.out_of_scope and best == topic
        if u.out_of_scope:
            follows = follow_up_score >= policy.follow_up_oos_score
        else:
            follows = follow_up_score >= policy.sure_follow_up_score or (
                p1 < policy.switch_confidence and follow_up_score >= policy.follow_up_score
            )
        if agrees or follows:
            confidence = state.topic_confidence
            if agrees:
                confidence = max(p1, confidence or 0.0)
            return DialogueTurn(
                TurnKind.FOLLOW_UP,
                _grounded(u, topic, confidence),
                _on_topic(state, topic, confidence),
            )
    if u.out_of_scope:
        return DialogueTurn(TurnKind.NEW_TOPIC, replace(u, top2=None), state)
    torn = _torn(u, kb, policy)
    if torn:
        if topic is not None and topic in torn:
            return DialogueTurn(
                TurnKind.FOLLOW_UP,
                _grounded(u, topic, state.topic_confidence),
                _on_topic(state, topic, state.topic_confidence),
            )
        question = OpenQuestion(tuple(Choice(i, suggestion_for(kb, i)) for i in torn))
        return DialogueTurn(TurnKind.CLARIFICATION, u, replace(state, question=question), question)
    return DialogueTurn(
        TurnKind.NEW_TOPIC,
        _grounded(u, u.intent, u.confidence),
        _on_topic(state, u.intent, u.confidence),
    )


def _torn(u: Understanding, kb: KnowledgeBase, policy: DialoguePolicy) -> tuple[str, ...]:
    """The banking intents the heads are torn between (none when they are not)."""
    if u.top2 is None:
        return ()
    (first, p1), (second, p2) = u.top2
    if p1 >= policy.clarify_confidence or p1 - p2 >= policy.clarify_margin:
        return ()
    if kb.for_intent(first) is None or kb.for_intent(second) is None:
        return ()
    return (first, second)


def _listed(titles: Sequence[str]) -> str:
    if len(titles) == 2:
        return f"{titles[0]}, or about {titles[1]}"
    return ", ".join(titles[:-1]) + f", or {titles[-1]}"


def clarifying_question(
    question: OpenQuestion, kb: KnowledgeBase, *, emotion: str | None = None, channel: str = "chat"
) -> str:
    """The question's words, from the knowledge base's titles; the widget shows the choices
    as buttons beside it, a caller answers in words."""
    titles = []
    for choice in question.choices:
        entry = kb.for_intent(choice.intent)
        titles.append(entry.title if entry is not None else choice.suggestion.lower())
    ask = f"Just to be sure I help with the right thing: is this about {_listed(titles)}?"
    invite = (
        "You can say which one, or tell me a little more."
        if channel == "voice"
        else "Choose one, or tell me a little more."
    )
    first = opening(emotion, zlib.crc32("|".join(question.intents).encode("utf-8")))
    return " ".join(part for part in (first, ask, invite) if part)


@dataclass(frozen=True, slots=True)
class DialogueConfig:
    """Whether conversations keep a dialogue state (`ASSISTANT_DIALOGUE`); off, every message
    is read alone and nothing is stored, as before there was a dialogue state: the only
    questions are the composer's own checks on a torn or unsure reading, without
    suggestions."""

    enabled: bool = True
    policy: DialoguePolicy = field(default_factory=DialoguePolicy)
