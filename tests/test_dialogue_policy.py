"""The dialogue policy on its own (assistant/replies/dialogue.py, follow_up_model.py): pure
functions over the shipped knowledge base, the shipped follow-up detector and the real
sentence encoder; no server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, replace
from decimal import Decimal

import pytest
import torch

from assistant.app.settings import Settings
from assistant.core.settings import SettingsError
from assistant.replies.details import Details
from assistant.replies.dialogue import (
    DEFAULT_POLICY,
    Choice,
    DialogueConfig,
    DialoguePolicy,
    DialogueState,
    OpenQuestion,
    TurnKind,
    chosen,
    clarifying_question,
    read_turn,
    suggestion_for,
)
from assistant.replies.follow_up_model import (
    CUES,
    FollowUpModelError,
    load_follow_up_model,
    parse_follow_up_model,
)
from assistant.replies.handoff import turn_signal
from assistant.replies.knowledge_base import load_knowledge_base
from assistant.replies.understanding import Understanding
from fusion import TextEncoder

KB = load_knowledge_base()
DECLINED = "declined_card_payment"
TWICE = "transaction_charged_twice"
PIN = "change_pin"
HIGH, LOW = 0.99, 0.01  # follow-up detector scores either side of every threshold


def heads(
    best: str, p1: float, second: str = "edit_personal_details", p2: float = 0.01
) -> Understanding:
    """What the heads read: `best` in scope with `p1`, `second` with `p2`."""
    return Understanding(best, p1, ((best, p1), (second, p2)), "neutral", {"neutral": 1.0})


def out_of_scope(best: str = "card_not_working", p1: float = 0.12) -> Understanding:
    return Understanding("out_of_scope", 1 - p1, ((best, p1), ("pending_transfer", 0.05)), None)


ON_DECLINED = DialogueState(topic=DECLINED, topic_confidence=0.98, turns_on_topic=1)
QUESTION = OpenQuestion(
    (
        Choice("card_payment_fee_charged", suggestion_for(KB, "card_payment_fee_charged")),
        Choice("extra_charge_on_statement", suggestion_for(KB, "extra_charge_on_statement")),
    )
)


def test_a_clear_first_message_sets_the_topic() -> None:
    turn = read_turn(DialogueState(), "my card was declined", heads(DECLINED, 0.99), LOW, KB)
    assert turn.kind is TurnKind.NEW_TOPIC
    assert turn.understanding.intent == DECLINED and turn.understanding.top2 is None
    assert (turn.state.topic, turn.state.topic_confidence, turn.state.turns_on_topic) == (
        DECLINED,
        0.99,
        1,
    )
    assert turn.question is None and turn.suggestions is None


def test_an_elliptical_message_out_of_scope_to_the_heads_is_read_within_the_topic() -> None:
    turn = read_turn(ON_DECLINED, "why would that be", out_of_scope(), HIGH, KB)
    assert turn.kind is TurnKind.FOLLOW_UP
    assert (turn.understanding.intent, turn.understanding.confidence) == (DECLINED, 0.98)
    assert turn.understanding.emotion is None  # the heads' emotion, not the topic's
    assert turn.state.topic == DECLINED and turn.state.turns_on_topic == 2


def test_a_stand_alone_out_of_scope_message_leaves_the_topic_alone() -> None:
    turn = read_turn(ON_DECLINED, "what's the weather in Paris", out_of_scope(), LOW, KB)
    assert turn.kind is TurnKind.NEW_TOPIC
    assert turn.understanding.out_of_scope
    assert turn.state == ON_DECLINED


def test_a_follow_up_the_heads_read_as_another_intent_unsurely_stays_on_the_topic() -> None:
    unsure = heads(TWICE, DEFAULT_POLICY.switch_confidence - 0.3)
    turn = read_turn(ON_DECLINED, "and what if it happens again?", unsure, HIGH, KB)
    assert (turn.kind, turn.understanding.intent) == (TurnKind.FOLLOW_UP, DECLINED)


def test_the_heads_sure_of_another_intent_switch_the_topic_unless_the_detector_is_surer() -> None:
    sure = heads(PIN, DEFAULT_POLICY.switch_confidence)
    leaning = (DEFAULT_POLICY.follow_up_score + DEFAULT_POLICY.sure_follow_up_score) / 2
    turn = read_turn(ON_DECLINED, "I want to change my PIN", sure, leaning, KB)
    assert (turn.kind, turn.understanding.intent) == (TurnKind.NEW_TOPIC, PIN)
    assert (turn.state.topic, turn.state.turns_on_topic) == (PIN, 1)
    # A profile can make the heads sure of something in a message that only makes sense
    # after the one before: the detector, surer still, keeps it on the topic.
    elliptical = heads("card_delivery_estimate", 0.99)
    follow = read_turn(ON_DECLINED, "how long will that take", elliptical, HIGH, KB)
    assert (follow.kind, follow.understanding.intent) == (TurnKind.FOLLOW_UP, DECLINED)


def test_a_message_the_heads_read_as_the_topic_is_a_follow_up() -> None:
    turn = read_turn(ON_DECLINED, "declined again at the shop", heads(DECLINED, 0.995), LOW, KB)
    assert turn.kind is TurnKind.FOLLOW_UP
    assert turn.understanding.confidence == 0.995  # the surer of the heads and the topic


def test_conversation_intents_neither_set_nor_clear_the_topic_nor_the_question() -> None:
    state = replace(ON_DECLINED, question=QUESTION)
    thanks = Understanding("thanks", 0.9, None, "satisfied", {"satisfied": 1.0})
    turn = read_turn(state, "thank you", thanks, HIGH, KB)
    assert turn.kind is None
    assert turn.understanding == thanks
    assert turn.state == state


def torn_pair(first: str, second: str) -> Understanding:
    """The heads torn between two intents by the calibrated policy's measure: the best
    below `clarify_confidence`, the second within `clarify_margin` of it."""
    p1 = DEFAULT_POLICY.clarify_confidence - 0.03
    return heads(first, p1, second, p1 - DEFAULT_POLICY.clarify_margin / 2)


def test_torn_heads_get_a_clarifying_question_worded_from_the_knowledge_base() -> None:
    torn = torn_pair("card_payment_fee_charged", "extra_charge_on_statement")
    turn = read_turn(DialogueState(), "I was charged extra", torn, LOW, KB)
    assert turn.kind is TurnKind.CLARIFICATION
    assert turn.question == QUESTION
    assert turn.suggestions == ("A fee on a card payment", "An unexpected charge on your statement")
    assert turn.understanding == torn  # the best guess, not acted on
    assert turn.state.question == QUESTION and turn.state.topic is None
    text = clarifying_question(QUESTION, KB)
    assert "a fee on a card payment" in text and "an unexpected charge on your statement" in text
    assert text.endswith("?") or text.endswith(".")


def test_heads_torn_between_the_topic_and_another_intent_stay_on_the_topic() -> None:
    torn = torn_pair(TWICE, DECLINED)
    turn = read_turn(ON_DECLINED, "the payment went wrong", torn, LOW, KB)
    assert (turn.kind, turn.understanding.intent) == (TurnKind.FOLLOW_UP, DECLINED)


def test_a_clear_margin_is_answered_not_asked() -> None:
    margin, p1 = DEFAULT_POLICY.clarify_margin, DEFAULT_POLICY.clarify_confidence - 0.03
    clear = heads("card_payment_fee_charged", p1, "extra_charge_on_statement", p1 - margin - 0.005)
    turn = read_turn(DialogueState(), "a fee on my card payment", clear, LOW, KB)
    assert turn.kind is TurnKind.NEW_TOPIC


@pytest.mark.parametrize(
    ("text", "index"),
    [
        ("A fee on a card payment", 0),
        ("an unexpected charge on your statement", 1),
        ("An unexpected charge on your statement, please", 1),
        ("the first one", 0),
        ("The second one please", 1),
        ("second", 1),
        ("option 2", 1),
        ("number one", 0),
        ("2", 1),
        ("the last one", 1),
        ("it's the first", 0),
    ],
)
def test_a_choice_is_made_by_its_words_or_its_place(text: str, index: int) -> None:
    assert chosen(QUESTION, text, out_of_scope()) == QUESTION.choices[index]


def test_a_choice_is_made_by_what_the_heads_read_in_scope_only() -> None:
    reads_second = heads("extra_charge_on_statement", 0.8)
    assert chosen(QUESTION, "the one I don't recognise", reads_second) == QUESTION.choices[1]
    assert chosen(QUESTION, "the third", out_of_scope()) is None
    assert chosen(QUESTION, "how do I top up", heads("top_up_failed", 0.9)) is None
    assert chosen(QUESTION, "whatever", out_of_scope("extra_charge_on_statement", 0.3)) is None


def test_an_answered_question_sets_the_topic_and_is_closed() -> None:
    state = DialogueState(question=QUESTION)
    turn = read_turn(state, "the second one", out_of_scope(), HIGH, KB)
    assert turn.kind is TurnKind.NEW_TOPIC
    assert (turn.understanding.intent, turn.understanding.confidence) == (
        "extra_charge_on_statement",
        1.0,
    )
    assert turn.state.question is None
    assert (turn.state.topic, turn.state.topic_confidence) == ("extra_charge_on_statement", 1.0)


def test_an_unanswered_question_is_dropped_and_the_message_read_as_usual() -> None:
    state = replace(ON_DECLINED, question=QUESTION)
    turn = read_turn(state, "I want to change my PIN", heads(PIN, 0.99), LOW, KB)
    assert (turn.kind, turn.understanding.intent) == (TurnKind.NEW_TOPIC, PIN)
    assert turn.state.question is None
    follow = read_turn(state, "why would that be", out_of_scope(), HIGH, KB)
    assert (follow.kind, follow.understanding.intent) == (TurnKind.FOLLOW_UP, DECLINED)
    assert follow.state.question is None


def test_without_an_intent_model_the_message_is_read_alone() -> None:
    turn = read_turn(ON_DECLINED, "why would that be", Understanding(), HIGH, KB)
    assert turn.kind is TurnKind.NEW_TOPIC and turn.understanding.intent is None
    assert turn.state == ON_DECLINED


def test_the_state_round_trips_through_its_stored_form() -> None:
    details = Details(
        about="payment", merchant="FreshMart", amount=Decimal("42.50"), currency="EUR"
    )
    state = DialogueState(DECLINED, 0.98765, 3, QUESTION, details)
    stored = state.to_json()
    assert stored["topic"] == DECLINED and stored["topic_confidence"] == 0.9877
    assert stored["open_question"]["choices"][0] == {
        "intent": "card_payment_fee_charged",
        "suggestion": "A fee on a card payment",
    }
    assert stored["details"]["merchant"] == "FreshMart"
    back = DialogueState.from_json(stored, KB.intents)
    assert back == replace(state, topic_confidence=0.9877)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {},
        {"version": 99, "topic": DECLINED},
        {"version": 1, "topic": "no_such_intent", "turns_on_topic": 4},
        {"version": 1, "topic": 7},
    ],
)
def test_a_state_that_does_not_check_out_reads_as_none(raw: object) -> None:
    assert DialogueState.from_json(raw, KB.intents) == DialogueState()  # type: ignore[arg-type]


def test_a_question_left_with_fewer_than_two_known_choices_is_dropped() -> None:
    raw = DialogueState(question=QUESTION).to_json()
    raw["open_question"]["choices"][1]["intent"] = "gone_from_the_knowledge_base"
    assert DialogueState.from_json(raw, KB.intents).question is None


def test_details_merge_on_the_topic_and_start_over_with_a_new_one() -> None:
    state = replace(ON_DECLINED, details=Details(about="payment", merchant="FreshMart"))
    more = Details(about="payment", amount=Decimal("42.50"), currency="EUR")
    merged = state.noting(more, fresh=False).details
    assert (merged.merchant, merged.amount) == ("FreshMart", Decimal("42.50"))
    assert state.noting(more, fresh=True).details == more


def test_the_policy_refuses_thresholds_outside_0_1() -> None:
    with pytest.raises(ValueError, match="clarify_margin"):
        DialoguePolicy(clarify_margin=1.5)


def test_a_clarification_is_never_a_turn_not_understood() -> None:
    unsure = heads("card_payment_fee_charged", 0.38, "extra_charge_on_statement", 0.37)
    assert turn_signal("I was charged extra", unsure).unresolved()
    assert not turn_signal("I was charged extra", unsure, clarifying=True).unresolved()


def test_a_call_hears_the_question_with_an_invitation_to_say_which() -> None:
    text = clarifying_question(QUESTION, KB, emotion="angry", channel="voice")
    assert "You can say which one" in text and "Choose one" not in text
    assert text.split(".")[0].lower().startswith(("i'm", "i understand"))


# The detector


@pytest.fixture(scope="module")
def encoder() -> Iterator[TextEncoder]:
    yield TextEncoder(torch.device("cpu"))


def test_the_shipped_detector_matches_the_policy_calibrated_with_it() -> None:
    model = load_follow_up_model()
    assert model.dim == 384
    assert model.about["policy"] == asdict(DEFAULT_POLICY)
    assert model.about["command"].startswith(".venv/bin/assistant train follow-ups")


def test_the_detector_tells_follow_ups_from_stand_alone_requests(encoder: TextEncoder) -> None:
    """The issue's own examples, which the detector never trained on, against stand-alone
    requests."""
    model = load_follow_up_model()
    follow_ups = [
        "why would that be",
        "This is the second time today, I'm getting really annoyed",
        "and what if it happens again?",
        "how long will that take",
    ]
    alone = ["I want to change my PIN", "How do I top up my account with a bank transfer?"]
    vectors = encoder.encode(follow_ups + alone)
    scores = [model.score(v, t) for v, t in zip(vectors, follow_ups + alone, strict=True)]
    policy = DEFAULT_POLICY
    assert all(s >= policy.follow_up_score for s in scores[: len(follow_ups)]), scores
    assert all(s < policy.follow_up_oos_score for s in scores[len(follow_ups) :]), scores


def test_a_malformed_detector_file_is_refused() -> None:
    good = load_follow_up_model().to_json()
    with pytest.raises(FollowUpModelError):
        parse_follow_up_model({**good, "weights": []})
    with pytest.raises(FollowUpModelError):
        parse_follow_up_model({**good, "bias": "0"})
    with pytest.raises(FollowUpModelError):
        parse_follow_up_model({**good, "cues": list(CUES)[:-1]})
    with pytest.raises(FollowUpModelError):
        parse_follow_up_model({**good, "weights": [float("nan")] * len(good["weights"])})
    with pytest.raises(ValueError, match="384"):
        load_follow_up_model().score([0.0] * 10, "hello")


def test_the_environment_switch_turns_the_dialogue_off() -> None:
    assert Settings.from_env({}).dialogue.enabled
    assert Settings.from_env({"ASSISTANT_DIALOGUE": "on"}).dialogue == DialogueConfig()
    assert not Settings.from_env({"ASSISTANT_DIALOGUE": "OFF"}).dialogue.enabled
    with pytest.raises(SettingsError, match="ASSISTANT_DIALOGUE"):
        Settings.from_env({"ASSISTANT_DIALOGUE": "maybe"})
