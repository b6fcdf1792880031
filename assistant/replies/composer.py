"""The default reply writer: no language model, grounded in the knowledge base, deterministic.

Two pure steps. `plan_reply` decides what to say:

- **handoff** when the policy passes the conversation to a person;
- **small talk** when the best passage is a greeting, thanks or goodbye that the text
  clearly matches, or the turn is labelled one (`assistant.replies.conversation`);
- **clarify** when the two best intents are close, or the one intent is unsure, or (with no
  intent model) the text matches two answers equally;
- **out of scope** when the intent model says so, or nothing matches well enough;
- **answer** otherwise, from the predicted intent's entry (or, with no intent model, from
  the best passage).

`render` writes it: an opening that follows the emotion (acknowledges anger, worry or
sadness; brief with frustration), a line on the customer's own recent behaviour when it
bears on the answer (the declined payment, the card ordered long ago), the thing in question
with its known details when the answer is about one and that line did not name them ("Let's
look at your payment of €42.50 at FreshMart."), the knowledge-base answer, then a follow-up
question or an offer of a person. Variants are picked by a stable hash of the inputs, so the
same inputs always give the same text. No detail is written that the details or the notes do
not hold.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from assistant.replies.details import EMPTY, Details, describe, for_subject
from assistant.replies.knowledge_base import (
    GREETING,
    HANDOFF,
    OUT_OF_SCOPE,
    SMALL_TALK_INTENTS,
    KnowledgeBase,
    KnowledgeEntry,
)
from assistant.replies.profile_summary import BehaviourNote, ProfileSummary
from assistant.replies.retrieval import Passage
from assistant.replies.understanding import Understanding


class ReplyKind(StrEnum):
    ANSWER = "answer"
    CLARIFY = "clarify"
    SMALL_TALK = "small_talk"
    OUT_OF_SCOPE = "out_of_scope"
    HANDOFF = "handoff"


@dataclass(frozen=True, slots=True)
class ComposerPolicy:
    low_confidence: float = 0.4  # below: ask before answering
    close_margin: float = 0.15  # top-two probabilities closer than this: ask which
    # Retrieval alone (no intent model): cosine similarities of MiniLM embeddings.
    answer_similarity: float = 0.45  # the best passage must reach this to be the answer
    sure_similarity: float = 0.7  # at or above, a near tie is still answered
    close_similarity: float = 0.03  # two passages closer than this are a tie
    small_talk_similarity: float = 0.6
    # A problem this recent is worth raising when the customer only says hello.
    greeting_note_age_s: float = 24 * 3600.0


DEFAULT_POLICY = ComposerPolicy()
NEGATIVE_EMOTIONS = frozenset({"angry", "frustrated", "anxious", "sad"})


@dataclass(frozen=True, slots=True)
class ReplyPlan:
    kind: ReplyKind
    entry: KnowledgeEntry  # the answer the reply is grounded in
    choices: tuple[KnowledgeEntry, ...] = ()  # what a clarifying question offers
    emotion: str | None = None
    brief: bool = False
    note: BehaviourNote | None = None
    offer_human: bool = False
    variant: int = 0  # picks among equivalent phrasings
    channel: str = "chat"  # chat | voice: a call hears entries' voice wording
    details: Details = EMPTY  # the details of the thing in question that the reply names

    @property
    def entry_ids(self) -> tuple[str, ...]:
        return (self.entry.id, *(c.id for c in self.choices if c.id != self.entry.id))


def _stable(*parts: str) -> int:
    digest = hashlib.blake2b("|".join(parts).encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def _banking(passages: Sequence[Passage], kb: KnowledgeBase) -> list[Passage]:
    conversational = SMALL_TALK_INTENTS | {OUT_OF_SCOPE, HANDOFF}
    return [p for p in passages if p.entry.intent not in conversational]


def _choose(
    kb: KnowledgeBase,
    u: Understanding,
    passages: Sequence[Passage],
    policy: ComposerPolicy,
) -> tuple[ReplyKind, KnowledgeEntry, tuple[KnowledgeEntry, ...]]:
    """What kind of reply, grounded in which entry, offering which choices."""
    out_of_scope = kb.for_intent(OUT_OF_SCOPE)
    assert out_of_scope is not None  # the loader guarantees every conversation intent
    top = passages[0] if passages else None
    if (
        top is not None
        and top.entry.intent in SMALL_TALK_INTENTS
        and top.similarity >= policy.small_talk_similarity
    ):
        return ReplyKind.SMALL_TALK, top.entry, ()
    talk = kb.for_intent(u.intent) if u.intent in SMALL_TALK_INTENTS else None
    if talk is not None:  # labelled by assistant.replies.conversation
        return ReplyKind.SMALL_TALK, talk, ()
    if u.out_of_scope:
        return ReplyKind.OUT_OF_SCOPE, out_of_scope, ()
    predicted = kb.for_intent(u.intent)
    if predicted is not None and predicted.intent not in SMALL_TALK_INTENTS | {HANDOFF}:
        if u.top2 is not None and (u.margin or 0.0) < policy.close_margin:
            second = kb.for_intent(u.top2[1][0])
            first = kb.for_intent(u.top2[0][0]) or predicted
            if second is not None and second.id != first.id:
                return ReplyKind.CLARIFY, first, (first, second)
        if u.confidence is not None and u.confidence < policy.low_confidence:
            return ReplyKind.CLARIFY, predicted, (predicted,)
        return ReplyKind.ANSWER, predicted, ()
    # No intent model (or a label the knowledge base does not know): the text decides.
    banking = _banking(passages, kb)
    if not banking or banking[0].similarity < policy.answer_similarity:
        return ReplyKind.CLARIFY, out_of_scope, ()
    best = banking[0]
    if (
        len(banking) > 1
        and best.similarity < policy.sure_similarity
        and best.similarity - banking[1].similarity < policy.close_similarity
    ):
        return ReplyKind.CLARIFY, best.entry, (best.entry, banking[1].entry)
    return ReplyKind.ANSWER, best.entry, ()


def _note(
    kind: ReplyKind, entry: KnowledgeEntry, summary: ProfileSummary, policy: ComposerPolicy
) -> BehaviourNote | None:
    if kind in (ReplyKind.ANSWER, ReplyKind.CLARIFY):
        relevant = summary.notes_for(entry.intent)
        return relevant[0] if relevant else None
    if kind is ReplyKind.SMALL_TALK and entry.intent == GREETING:
        recent = [n for n in summary.notes if n.problem and n.intents]
        if recent and recent[0].age_s <= policy.greeting_note_age_s:
            return recent[0]
    return None


def _named(
    kind: ReplyKind, entry: KnowledgeEntry, note: BehaviourNote | None, details: Details
) -> Details:
    """The details an answer names: only an answer about one thing names any, and none when
    the note on the customer's behaviour already did."""
    if kind is not ReplyKind.ANSWER or entry.about is None:
        return EMPTY
    if note is not None and note.details.known:
        return EMPTY
    return for_subject(details, entry.about)


def plan_reply(
    kb: KnowledgeBase,
    understanding: Understanding,
    summary: ProfileSummary,
    passages: Sequence[Passage],
    *,
    handoff: bool = False,
    near_handoff: bool = False,
    policy: ComposerPolicy = DEFAULT_POLICY,
    channel: str = "chat",
    details: Details = EMPTY,
) -> ReplyPlan:
    """Decide the reply; `handoff`: this turn goes to a person; `near_handoff`: one more
    not-understood turn would (see assistant.replies.handoff.near_handoff); `channel`: chat
    or voice; `details`: what is known of the thing in question (assistant.replies.details)."""
    emotion = understanding.emotion
    if handoff:
        entry = kb.for_intent(HANDOFF)
        assert entry is not None
        kind, choices = ReplyKind.HANDOFF, tuple[KnowledgeEntry, ...]()
    else:
        kind, entry, choices = _choose(kb, understanding, passages, policy)
    note = _note(kind, entry, summary, policy)
    rising = summary.emotion.direction == "rising" and emotion in NEGATIVE_EMOTIONS
    offer_human = kind in (ReplyKind.ANSWER, ReplyKind.CLARIFY, ReplyKind.OUT_OF_SCOPE) and (
        emotion == "angry"
        or rising
        or near_handoff
        or (kind is ReplyKind.ANSWER and entry.offer_human)
    )
    return ReplyPlan(
        kind=kind,
        entry=entry,
        choices=choices,
        emotion=emotion,
        brief=emotion in ("frustrated", "angry") and kind is ReplyKind.ANSWER,
        note=note,
        offer_human=offer_human,
        variant=_stable(entry.id, emotion or "", str(summary.turn_count)),
        channel=channel,
        details=_named(kind, entry, note, details),
    )


# Openings by emotion; neutral has none (the answer itself comes first).
OPENINGS: dict[str, tuple[str, ...]] = {
    "angry": (
        "I'm sorry about this, and I understand why you're angry.",
        "I'm really sorry; I understand why this has made you angry.",
        "I understand your anger, and I'm sorry for the trouble.",
    ),
    "frustrated": ("Sorry for the hassle.", "Understood, let's fix this quickly."),
    "anxious": (
        "I understand this is worrying, so let's sort it out together.",
        "I can see why you're concerned, and I'm here to help.",
    ),
    "sad": ("I'm sorry to hear that.", "I'm sorry you're dealing with this."),
    "confused": ("No problem, let me explain.", "Happy to clear this up."),
    "satisfied": ("Glad to help!", "Happy to help!"),
}
HUMAN_OFFER = (
    "If you'd rather talk to a person, just say so and I'll bring in a member of our team."
)
HUMAN_OFFER_ANGRY = "If you'd prefer, I can bring in a member of our team right away; just ask."
# How a reply names the thing in question before answering about it.
IN_QUESTION = "Let's look at {}."
OPEN_CLARIFY = (
    "I want to make sure I help with the right thing: could you tell me a little more about "
    "what you need? I can help with your cards, payments, transfers, top-ups, currency "
    "exchange and account."
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def _first(text: str, n: int) -> str:
    return " ".join(sentences(text)[:n])


def _capitalised(clause: str) -> str:
    return clause[:1].upper() + clause[1:]


def opening(emotion: str | None, variant: int = 0) -> str | None:
    """The emotion's opening sentence (None for neutral or no emotion model)."""
    options = OPENINGS.get(emotion or "")
    return options[variant % len(options)] if options else None


def render(plan: ReplyPlan) -> str:
    """The reply text of a plan."""
    parts: list[str] = []
    entry = plan.entry
    answer = entry.answer_on(plan.channel)
    if plan.kind is ReplyKind.SMALL_TALK:
        if plan.note is not None:
            parts.append(sentences(answer)[0])
            parts.append(f"I can see that {plan.note.text}. Is that what you'd like help with?")
        else:
            parts.append(answer)
        return " ".join(parts)
    first = opening(plan.emotion, plan.variant)
    if first:
        parts.append(first)
    if plan.kind is ReplyKind.HANDOFF:
        parts.append(answer)
        return " ".join(parts)
    if plan.note is not None:
        parts.append(f"I can see that {plan.note.text}.")
    if plan.kind is ReplyKind.CLARIFY:
        if len(plan.choices) >= 2:
            a, b = plan.choices[0], plan.choices[1]
            parts.append(
                f"Just to be sure I help with the right thing: is this about {a.title}, "
                f"or about {b.title}?"
            )
        elif plan.choices:
            parts.append(
                f"Just to check: is your question about {plan.choices[0].title}? If it's "
                "something else, tell me a bit more and I'll point you in the right direction."
            )
        else:
            parts.append(OPEN_CLARIFY)
    elif plan.kind is ReplyKind.OUT_OF_SCOPE:
        parts.append(answer)
        if entry.follow_ups and not plan.offer_human:
            parts.append(entry.follow_ups[0])
    else:
        about = plan.entry.about
        thing = describe(plan.details, about) if about is not None else None
        if thing is not None:
            parts.append(IN_QUESTION.format(thing))
        if plan.emotion == "frustrated":
            parts.append(_first(answer, 1))
        elif plan.emotion == "angry":
            parts.append(_first(answer, 2))
        else:
            parts.append(answer)
        if entry.follow_ups and not plan.brief and not plan.offer_human:
            parts.append(entry.follow_ups[plan.variant % len(entry.follow_ups)])
    if plan.offer_human:
        parts.append(HUMAN_OFFER_ANGRY if plan.emotion == "angry" else HUMAN_OFFER)
    return " ".join(_capitalised(p) for p in parts)


def compose(
    kb: KnowledgeBase,
    understanding: Understanding,
    summary: ProfileSummary,
    passages: Sequence[Passage],
    *,
    handoff: bool = False,
    near_handoff: bool = False,
    policy: ComposerPolicy = DEFAULT_POLICY,
    channel: str = "chat",
    details: Details = EMPTY,
) -> tuple[ReplyPlan, str]:
    """Plan and render in one call."""
    plan = plan_reply(
        kb,
        understanding,
        summary,
        passages,
        handoff=handoff,
        near_handoff=near_handoff,
        policy=policy,
        channel=channel,
        details=details,
    )
    return plan, render(plan)
