"""The default composer (no LLM) and the profile summary it draws personal details from."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from assistant.replies.composer import (
    HUMAN_OFFER,
    HUMAN_OFFER_ANGRY,
    OPENINGS,
    ReplyKind,
    compose,
    plan_reply,
    render,
    sentences,
)
from assistant.replies.knowledge_base import BANKING77_INTENTS, KnowledgeEntry
from assistant.replies.profile_summary import (
    ProfileSummary,
    age_phrase,
    emotion_direction,
    emotion_state_label,
    summarize_profile,
)
from assistant.replies.retrieval import Passage, embed_in_batches
from assistant.replies.understanding import EMOTIONS, Understanding
from tests.test_knowledge_base import shared_embed, shared_kb, shared_retriever

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Event:
    user_id: str
    name: str
    occurred_at: datetime
    props: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Turn:
    user_id: str
    role: str
    intent: str | None
    emotion: str | None
    created_at: datetime


@dataclass(frozen=True)
class Profile:
    user_id: str
    turn_count: int = 0
    emotion_state: dict[str, Any] | None = None
    intent_histogram: dict[str, Any] = field(default_factory=dict)


def _ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def _passages(
    text: str, u: Understanding, vector: npt.NDArray[np.float32] | None = None
) -> list[Passage]:
    return shared_retriever().passages(text, understanding=u, query_vector=vector)


def _reply(
    text: str,
    u: Understanding,
    summary: ProfileSummary | None = None,
    **kwargs: Any,
) -> tuple[ReplyKind, str, KnowledgeEntry]:
    plan, reply = compose(
        shared_kb(), u, summary or ProfileSummary("u1"), _passages(text, u), **kwargs
    )
    return plan.kind, reply, plan.entry


def _sure(intent: str, emotion: str | None = "neutral") -> Understanding:
    return Understanding(
        intent=intent,
        confidence=0.9,
        top2=((intent, 0.9), ("age_limit" if intent != "age_limit" else "atm_support", 0.03)),
        emotion=emotion,
    )


def test_every_intent_is_answered_from_its_knowledge_base_answer() -> None:
    kb = shared_kb()
    entries = [kb.for_intent(intent) for intent in BANKING77_INTENTS]
    assert all(entries)
    questions = [e.questions[0] for e in entries if e]
    vectors = embed_in_batches(shared_embed(), questions)
    for entry, question, vector in zip(entries, questions, vectors, strict=True):
        assert entry is not None
        u = _sure(entry.intent)
        plan, text = compose(kb, u, ProfileSummary("u1"), _passages(question, u, vector))
        assert plan.kind is ReplyKind.ANSWER and plan.entry is entry
        assert text.startswith(entry.answer), entry.id
    # The conversation intents: small talk from the text, out-of-scope and handoff by label.
    for text, intent in (("hello", "greeting"), ("thanks!", "thanks"), ("bye", "goodbye")):
        kind, reply, entry = _reply(text, Understanding())
        assert (kind, entry.intent, reply) == (ReplyKind.SMALL_TALK, intent, entry.answer)
    kind, reply, entry = _reply("what's the weather", Understanding("out_of_scope", 0.8))
    assert kind is ReplyKind.OUT_OF_SCOPE and reply.startswith(entry.answer)
    kind, reply, entry = _reply("get me a human", Understanding(), handoff=True)
    assert kind is ReplyKind.HANDOFF and entry.intent == "handoff" and reply == entry.answer


def test_a_call_hears_the_handoff_worded_for_a_phone() -> None:
    entry = shared_kb().for_intent("handoff")
    assert entry is not None and entry.voice_answer is not None
    _, chat, _ = _reply("get me a human", Understanding(), handoff=True)
    _, call, _ = _reply("get me a human", Understanding(), handoff=True, channel="voice")
    assert chat == entry.answer and "this conversation" in chat
    assert call == entry.voice_answer and "this call" in call
    assert not re.search(r"\b(here|chat|write|read)\b", call), call
    _, angry_call, _ = _reply(
        "get me a human", Understanding(emotion="angry"), handoff=True, channel="voice"
    )
    assert angry_call.endswith(entry.voice_answer) and angry_call != entry.voice_answer
    # An entry without voice wording says the same on a call as in a chat.
    u = _sure("topping_up_by_card")
    assert _reply("how do I top up", u)[1] == _reply("how do I top up", u, channel="voice")[1]


def test_angry_and_neutral_get_different_openings_for_the_same_intent() -> None:
    text = "my card payment was declined"
    _, neutral, entry = _reply(text, _sure("declined_card_payment", "neutral"))
    _, angry, _ = _reply(text, _sure("declined_card_payment", "angry"))
    assert neutral.startswith(sentences(entry.answer)[0])
    assert any(angry.startswith(o) for o in OPENINGS["angry"])
    assert sentences(angry)[0] != sentences(neutral)[0]
    # Anger: the key facts, then a person is offered; neutral: the answer and a follow-up.
    assert sentences(entry.answer)[0] in angry and angry.endswith(HUMAN_OFFER_ANGRY)
    assert neutral.endswith(entry.follow_ups[0]) or neutral.endswith(entry.follow_ups[-1])


def test_tone_follows_each_emotion() -> None:
    text = "my card payment was declined"
    replies = {e: _reply(text, _sure("declined_card_payment", e))[1] for e in EMOTIONS}
    replies["none"] = _reply(text, _sure("declined_card_payment", None))[1]
    for emotion, options in OPENINGS.items():
        assert any(replies[emotion].startswith(o) for o in options), emotion
    assert replies["none"] == replies["neutral"]  # no emotion model: no claimed emotion
    # Frustration gets the shortest reply: one sentence of the answer, no follow-up.
    assert len(replies["frustrated"]) < len(replies["neutral"])
    assert len(sentences(replies["frustrated"])) == 2


def test_close_top_two_intents_get_a_clarifying_question() -> None:
    kb = shared_kb()
    u = Understanding(
        intent="card_arrival",
        confidence=0.46,
        top2=(("card_arrival", 0.46), ("card_delivery_estimate", 0.41)),
        emotion="neutral",
    )
    kind, text, _ = _reply("where is my card", u)
    arrival, estimate = kb.for_intent("card_arrival"), kb.for_intent("card_delivery_estimate")
    assert arrival and estimate
    assert kind is ReplyKind.CLARIFY
    assert arrival.title in text and estimate.title in text and text.endswith("?")
    assert arrival.answer not in text  # ask first, answer after


def test_low_confidence_asks_to_confirm_the_best_guess() -> None:
    u = Understanding(intent="top_up_failed", confidence=0.25, emotion="neutral")
    kind, text, entry = _reply("it did not work", u)
    assert kind is ReplyKind.CLARIFY and entry.intent == "top_up_failed"
    assert f"is your question about {entry.title}?" in text


def test_without_an_intent_model_the_answer_comes_from_retrieval_alone() -> None:
    text = "how do I change my PIN"
    plan, reply = compose(
        shared_kb(), Understanding(), ProfileSummary("u1"), _passages(text, Understanding())
    )
    assert plan.kind is ReplyKind.ANSWER and plan.entry.intent == "change_pin"
    assert reply.startswith(plan.entry.answer)
    # Nothing that claims an intent: no label, no "you are asking about".
    assert "change_pin" not in reply and "asking about" not in reply
    kind, reply, _ = _reply("purple elephants dance", Understanding())
    assert kind is ReplyKind.CLARIFY and "tell me a little more" in reply


def test_personal_details_from_the_profile_summary() -> None:
    failed = summarize_profile(
        "u1",
        events=[
            Event("u1", "payment_failed", _ago(minutes=5), {"reason": "card_declined"}),
            Event("u1", "page_view", _ago(minutes=6), {"page": "help"}),
        ],
        now=NOW,
    )
    _, text, _ = _reply("why was my payment declined", _sure("declined_card_payment"), failed)
    assert "I can see that a payment failed at checkout (card declined) 5 minutes ago." in text
    late = summarize_profile(
        "u1",
        events=[Event("u1", "card_ordered", _ago(days=12), {"delivery": "standard"})],
        now=NOW,
    )
    _, text, _ = _reply("my card hasn't come", _sure("card_arrival"), late)
    assert "the card you ordered 12 days ago has not been activated yet" in text
    # A note about something else is not dragged into an unrelated answer.
    _, text, _ = _reply("how old must I be", _sure("age_limit"), failed)
    assert "payment failed" not in text


def test_a_greeting_raises_a_fresh_problem() -> None:
    summary = summarize_profile(
        "u1",
        events=[Event("u1", "atm_withdrawal", _ago(minutes=20), {"status": "declined"})],
        now=NOW,
    )
    kind, text, _ = _reply("hi", Understanding(), summary)
    assert kind is ReplyKind.SMALL_TALK
    assert text == (
        "Hello! I can see that a cash withdrawal was declined 20 minutes ago. "
        "Is that what you'd like help with?"
    )


def test_a_person_is_offered_when_appropriate() -> None:
    text = "someone used my card details"
    _, reply, _ = _reply(text, _sure("compromised_card"))
    assert reply.endswith(HUMAN_OFFER)  # urgent topic
    _, reply, _ = _reply("how do I top up", _sure("topping_up_by_card"))
    assert HUMAN_OFFER not in reply
    _, reply, _ = _reply("how do I top up", _sure("topping_up_by_card"), near_handoff=True)
    assert reply.endswith(HUMAN_OFFER)
    rising = ProfileSummary(
        "u1",
        emotion=summarize_profile(
            "u1",
            turns=[
                Turn("u1", "user", None, "neutral", _ago(minutes=3)),
                Turn("u1", "user", None, "frustrated", _ago(minutes=1)),
            ],
            now=NOW,
        ).emotion,
    )
    assert rising.emotion.direction == "rising"
    _, reply, _ = _reply("how do I top up", _sure("topping_up_by_card", "frustrated"), rising)
    assert reply.endswith(HUMAN_OFFER)


def test_composer_is_deterministic() -> None:
    u = _sure("lost_or_stolen_card", "anxious")
    passages = _passages("I lost my card", u)
    first = render(plan_reply(shared_kb(), u, ProfileSummary("u1"), passages))
    for _ in range(3):
        assert render(plan_reply(shared_kb(), u, ProfileSummary("u1"), passages)) == first


# The profile summary


def test_summary_keeps_only_the_users_own_records_and_safe_words() -> None:
    summary = summarize_profile(
        "u1",
        profile=Profile("u1", 7, {"label": "anxious"}, {"card_arrival": 3, "pin_blocked": 1}),
        events=[
            Event("u2", "payment_failed", _ago(minutes=1), {"reason": "card_declined"}),
            Event("u1", "card_frozen", _ago(hours=2), {"reason": "4111 1111 1111 1111"}),
            Event("u1", "login_failed", _ago(days=30)),  # too old to mention
        ],
        turns=[
            Turn("u2", "user", "terminate_account", "angry", _ago(minutes=2)),
            Turn("u1", "user", "card_arrival", "neutral", _ago(minutes=9)),
            Turn("u1", "assistant", None, None, _ago(minutes=8)),
            Turn("u1", "user", "lost_or_stolen_card", "anxious", _ago(minutes=4)),
        ],
        now=NOW,
    )
    assert summary.user_id == "u1" and summary.turn_count == 7
    assert [n.text for n in summary.notes] == ["a card was frozen 2 hours ago"]
    assert summary.recent_intents == ("card_arrival", "lost_or_stolen_card")
    assert summary.frequent_intents == ("card_arrival", "pin_blocked")
    assert summary.emotion.recent == ("neutral", "anxious")
    assert summary.emotion.direction == "rising" and summary.emotion.state == "anxious"
    prompt = "\n".join(summary.lines())
    assert "payment failed" not in prompt and "terminate_account" not in prompt
    assert "4111" not in prompt
    # A profile record of another user is ignored too.
    assert summarize_profile("u1", profile=Profile("u2", 5), now=NOW).turn_count == 0


def test_summary_notes_repeats_and_problems_first() -> None:
    summary = summarize_profile(
        "u1",
        events=[
            Event("u1", "order_placed", _ago(days=3)),
            Event("u1", "atm_withdrawal", _ago(minutes=50), {"status": "declined"}),
            Event("u1", "atm_withdrawal", _ago(minutes=30), {"status": "declined"}),
            Event("u1", "card_ordered", _ago(days=2), {"delivery": "standard"}),
            Event("u1", "card_ordered", _ago(days=20)),
            Event("u1", "card_activated", _ago(days=15)),
        ],
        now=NOW,
    )
    assert [n.text for n in summary.notes] == [
        "a cash withdrawal was declined 30 minutes ago (2 times recently)",
        "you ordered a card 2 days ago",
        "you placed an order 3 days ago",
    ]
    assert summary.notes_for("declined_cash_withdrawal")[0].problem


@pytest.mark.parametrize(
    ("seconds", "phrase"),
    [(10, "just now"), (60 * 5, "5 minutes ago"), (3600, "1 hour ago"), (86400 * 3, "3 days ago")],
)
def test_age_phrases(seconds: float, phrase: str) -> None:
    assert age_phrase(seconds) == phrase


def test_emotion_helpers() -> None:
    assert emotion_direction(("neutral", "angry")) == "rising"
    assert emotion_direction(("angry", "angry", "neutral")) == "easing"
    assert emotion_direction(("sad", "anxious")) == "steady"
    assert emotion_direction(("sad",)) == "unknown"
    assert emotion_state_label({"scores": {"angry": 0.2, "sad": 0.7}}) == "sad"
    assert emotion_state_label({"neutral": 0.6, "angry": 0.4}) == "neutral"
    assert emotion_state_label(None) is None and emotion_state_label({"label": "bored"}) is None


def test_understanding_refuses_unknown_emotions_and_bad_probabilities() -> None:
    with pytest.raises(ValueError, match="unknown emotion"):
        Understanding(emotion="bored")
    with pytest.raises(ValueError, match="confidence"):
        Understanding(intent="card_arrival", confidence=1.5)
