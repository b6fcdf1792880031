"""The handoff policy: each trigger fires, the bot then stays quiet until an operator releases."""

from __future__ import annotations

import pytest

from assistant.replies.handoff import (
    HandoffDecision,
    HandoffPolicy,
    HandoffReason,
    HandoffState,
    TurnSignal,
    asks_for_human,
    decide_handoff,
    near_handoff,
    release,
    step,
    take_over,
    turn_signal,
)
from assistant.replies.understanding import Understanding

CLEAR = TurnSignal(intent="card_arrival", confidence=0.9)
UNSURE = TurnSignal(intent="card_arrival", confidence=0.2)
OOS = TurnSignal(intent="out_of_scope", confidence=0.8, out_of_scope=True)
ANGRY = TurnSignal(intent="card_arrival", confidence=0.9, anger=0.85)
HUMAN = TurnSignal(explicit_request=True)


def _run(signals: list[TurnSignal]) -> tuple[HandoffState, list[HandoffDecision]]:
    state = HandoffState()
    decisions = []
    for signal in signals:
        state, decision = step(state, signal)
        decisions.append(decision)
    return state, decisions


@pytest.mark.parametrize(
    ("turns", "reason"),
    [
        ([CLEAR, HUMAN], HandoffReason.EXPLICIT_REQUEST),
        ([ANGRY, CLEAR, ANGRY], HandoffReason.REPEATED_ANGER),
        ([CLEAR, ANGRY, ANGRY], HandoffReason.REPEATED_ANGER),
        ([CLEAR, UNSURE, UNSURE], HandoffReason.LOW_CONFIDENCE),
        ([CLEAR, OOS, OOS], HandoffReason.OUT_OF_SCOPE),
        ([UNSURE, OOS], HandoffReason.LOW_CONFIDENCE),
    ],
)
def test_each_trigger_fires_and_the_bot_then_stays_quiet(
    turns: list[TurnSignal], reason: HandoffReason
) -> None:
    state, decisions = _run(turns)
    assert [d.handoff for d in decisions] == [False] * (len(turns) - 1) + [True]
    assert decisions[-1] == HandoffDecision(True, reason, answer=True)  # the handoff notice
    assert state.waiting and not state.bot_may_answer and state.reason is reason
    # Whatever the customer says next, the bot does not answer until an operator releases.
    for signal in (CLEAR, HUMAN, ANGRY, UNSURE):
        state, decision = step(state, signal)
        assert decision == HandoffDecision(True, HandoffReason.WAITING_FOR_OPERATOR, False)
    state = release(state)
    assert state.bot_may_answer
    # The streak before the operator is forgotten: one more such turn does not hand off.
    state, decision = step(state, turns[-1] if turns[-1] is not HUMAN else CLEAR)
    assert decision == HandoffDecision(False)


@pytest.mark.parametrize(
    "turns",
    [
        [ANGRY],  # one angry turn
        [ANGRY, CLEAR, CLEAR, ANGRY],  # two angry turns, but not within three turns
        [UNSURE, CLEAR, UNSURE],  # a clear turn breaks the streak
        [OOS],
        [TurnSignal(intent=None, confidence=None)] * 3,  # no intent model: never "unsure"
        [TurnSignal(anger=0.5)] * 3,  # mild anger
    ],
)
def test_no_handoff_without_a_trigger(turns: list[TurnSignal]) -> None:
    state, decisions = _run(turns)
    assert not any(d.handoff for d in decisions) and state.bot_may_answer


def test_policy_thresholds_are_configurable() -> None:
    strict = HandoffPolicy(unresolved_turns=3)
    assert not decide_handoff([UNSURE], UNSURE, strict).handoff
    assert decide_handoff([UNSURE, UNSURE], UNSURE, strict).handoff
    touchy = HandoffPolicy(anger_turns=1)
    assert decide_handoff([], ANGRY, touchy).reason is HandoffReason.REPEATED_ANGER
    impatient = HandoffPolicy(unresolved_turns=1, anger_window=1)
    assert decide_handoff([CLEAR, CLEAR], UNSURE, impatient).handoff
    assert not decide_handoff([ANGRY, ANGRY], ANGRY, impatient).handoff  # window of one turn


def test_near_handoff_warns_one_turn_early() -> None:
    state, _ = step(HandoffState(), CLEAR)
    assert not near_handoff(state)
    state, decision = step(state, UNSURE)
    assert not decision.handoff and near_handoff(state)
    state, decision = step(state, UNSURE)
    assert decision.handoff and not near_handoff(state)


def test_an_operator_can_take_over_without_a_trigger() -> None:
    state = take_over(HandoffState())
    state, decision = step(state, CLEAR)
    assert decision.answer is False and decision.reason is HandoffReason.WAITING_FOR_OPERATOR


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        ("Can I talk to a human?", True),
        ("I want to speak to a real person", True),
        ("connect me to an agent please", True),
        ("transfer me to someone who can help", True),
        ("let me speak with your manager", True),
        ("I need a representative", True),
        ("agent", True),
        ("Human please!", True),
        ("is there a real person there?", True),
        ("I want to transfer money to someone", False),
        ("I need to send money to somebody abroad", False),
        ("Are you a human?", False),
        ("I don't want to talk to a person, just tell me", False),
        ("How do I add a person as a payee?", False),
        ("my card is not working", False),
    ],
)
def test_explicit_requests_for_a_person(text: str, wanted: bool) -> None:
    assert asks_for_human(text) is wanted


def test_turn_signal_from_an_understanding() -> None:
    u = Understanding(
        intent="out_of_scope", confidence=0.7, emotion="angry", emotion_scores={"angry": 0.8}
    )
    signal = turn_signal("what is the meaning of life", u)
    assert signal == TurnSignal(False, "out_of_scope", 0.7, True, 0.8)
    assert turn_signal("human please", Understanding()).explicit_request
    # A bare emotion label without scores counts as certain.
    assert turn_signal("x", Understanding(emotion="angry")).anger == 1.0
