"""Replies that use what is known: the details of the thing in question (merchant, amount, date,
card, transfer) read from behaviour events and messages, named by the composer and the prompt,
and never invented, by the composer or by a chat model (the guard falls back to the composer).

Fakes stand only at the LLM boundary (LangChain's fake chat models).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from websockets.asyncio.client import connect

from assistant import Models, ResponseGenerator, Settings
from assistant.replies.composer import IN_QUESTION, ReplyKind, compose
from assistant.replies.details import (
    EMPTY,
    Details,
    date_keys,
    describe,
    details_from_events,
    details_from_text,
    format_amount,
    gather_details,
    merge,
    parse_number,
)
from assistant.replies.generation import (
    PARAGRAPH,
    FallbackReason,
    GenerationRequest,
    ReplySource,
)
from assistant.replies.grounding import Grounds, SentenceGate, ungrounded
from assistant.replies.knowledge_base import HANDOFF, KnowledgeBaseError, parse_file
from assistant.replies.profile_summary import age_phrase, summarize_profile
from assistant.replies.prompting import describe_details
from assistant.replies.retrieval import passage_text
from assistant.replies.understanding import EMOTIONS, Understanding
from server import RunningServer, running
from tests.conftest import Client, ClientFactory
from tests.test_generation import PromptRecorder, _text, generator
from tests.test_knowledge_base import shared_kb
from tests.test_metrics import scrape, value

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Event:
    user_id: str
    name: str
    occurred_at: datetime
    props: dict[str, Any] = field(default_factory=dict)


def _ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def _failed_at_freshmart(minutes: float = 5) -> Event:
    return Event(
        "u1", "payment_failed", _ago(minutes=minutes), {"merchant": "FreshMart", "amount": 42.5}
    )


def _sure(intent: str, emotion: str = "neutral") -> Understanding:
    return Understanding(intent=intent, confidence=0.93, emotion=emotion)


# Reading the customer's words


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "I paid £42.50 at FreshMart yesterday with my card ending 1234",
            {
                "about": "payment",
                "merchant": "FreshMart",
                "amount": "42.50",
                "currency": "GBP",
                "date": "yesterday",
                "card": "1234",
            },
        ),
        (
            "my payment of 42,50 € from Amazon UK on Monday was declined",
            {
                "about": "payment",
                "merchant": "Amazon UK",
                "amount": "42.50",
                "currency": "EUR",
                "date": "Monday",
            },
        ),
        (
            "I sent 50 EUR to John Smith on 12 March",
            {
                "about": "transfer",
                "amount": "50.00",
                "currency": "EUR",
                "date": "12 March",
                "transfer": "John Smith",
            },
        ),
        (
            "EUR 1,250 on 2025-03-12 at Tesco Express.",
            {
                "about": "payment",
                "merchant": "Tesco Express",
                "amount": "1250.00",
                "currency": "EUR",
                "date": "2025-03-12",
            },
        ),
        (
            "$20 last Friday, the last four digits are 9876",
            {"amount": "20.00", "currency": "USD", "date": "last Friday", "card": "9876"},
        ),
        (
            "20 dollars at Tesco's",
            {"about": "payment", "amount": "20.00", "currency": "USD", "merchant": "Tesco"},
        ),
        (
            "my virtual card was declined at Netflix",
            {"about": "payment", "card": "virtual", "merchant": "Netflix"},
        ),
        ("it happened on March 3rd, 2025", {"date": "March 3rd, 2025"}),
    ],
)
def test_details_a_message_states(text: str, expected: dict[str, str]) -> None:
    assert details_from_text(text).to_dict() == expected


@pytest.mark.parametrize(
    "text",
    [
        "my card payment was declined",
        "I paid 42 at the shop",  # no currency: not an amount
        "I bought something at freshmart",  # lowercase: not taken for a name
        "I was at I think Tesco",  # "I" starts no name
        "declined at ATM",
        "card 4111 1111 1111 1111 was declined",  # a card number is never a detail
        "you may 2x the limit",
        "send it to me",
    ],
)
def test_nothing_is_read_into_a_message_that_states_nothing(text: str) -> None:
    assert not details_from_text(text).known


def test_a_card_number_never_becomes_a_detail() -> None:
    details = details_from_text("declined at Bob 4111111111111111, card ending 4242")
    assert details.merchant == "Bob" and details.card == "4242"
    assert "4111" not in str(details.to_dict())


# Reading behaviour events


def test_the_event_in_question_went_wrong_before_it_is_the_newest() -> None:
    events = [
        Event(
            "u1",
            "card_payment",
            _ago(minutes=1),
            {"status": "completed", "merchant": "Cafe Nero", "amount": 3.2},
        ),
        _failed_at_freshmart(),
        Event(
            "u1",
            "transfer_sent",
            _ago(minutes=2),
            {"status": "failed", "recipient": "John", "amount": 50, "currency": "GBP"},
        ),
        Event("u1", "page_view", _ago(seconds=10), {"page": "help"}),
    ]
    # A failed payment and a failed transfer: the newer problem wins...
    assert details_from_events(events, now=NOW).to_dict() == {
        "about": "transfer",
        "amount": "50.00",
        "currency": "GBP",
        "date": "2025-03-14",
        "transfer": "John",
    }
    # ...unless the answer is about a payment; one event's details, never a mix.
    assert details_from_events(events, about="payment", now=NOW).to_dict() == {
        "about": "payment",
        "merchant": "FreshMart",
        "amount": "42.50",
        "date": "2025-03-14",
    }
    # A card answer takes the card of any event that names one.
    paid = Event(
        "u1", "card_payment", _ago(minutes=4), {"status": "declined", "card_last4": "4242"}
    )
    assert details_from_events([*events, paid], about="card", now=NOW).card == "4242"
    assert details_from_events(events, about="card", now=NOW) == EMPTY
    # Events older than two weeks, or with nothing to say, are not in question.
    old = [Event("u1", "payment_failed", _ago(days=20), {"merchant": "FreshMart"})]
    bare = [Event("u1", "payment_failed", _ago(minutes=1), {"reason": "card_declined"})]
    assert details_from_events(old, now=NOW) == EMPTY
    assert details_from_events(bare, now=NOW) == EMPTY


def test_event_values_pass_the_same_checks() -> None:
    event = Event(
        "u1",
        "card_payment",
        _ago(minutes=3),
        {
            "status": "declined",
            "merchant": "REF 99887766",  # a reference, not a name
            "amount": -12,
            "currency": "home",
            "card_last4": "12345",
            "card_type": "virtual",
        },
    )
    assert details_from_events([event], now=NOW).to_dict() == {
        "about": "payment",
        "card": "virtual",
        "date": "2025-03-14",
    }
    money = Event(
        "u1",
        "atm_withdrawal",
        _ago(hours=1),
        {"status": "declined", "amount": "100", "currency": "eur"},
    )
    assert details_from_events([money], now=NOW).to_dict()["currency"] == "EUR"


def test_merge_lets_the_newer_win_and_never_mixes_two_transactions() -> None:
    event = details_from_events([_failed_at_freshmart()], now=NOW)
    said = details_from_text("it was yesterday, card ending 1234")
    merged = merge(event, said)
    assert merged.to_dict() == {
        "about": "payment",
        "merchant": "FreshMart",
        "amount": "42.50",
        "date": "yesterday",
        "card": "1234",
    }
    other = details_from_text("the £20.00 one at Tesco")
    assert merge(event, other) == other  # another payment: nothing of FreshMart's stays
    assert merge(EMPTY, event) == event and merge(event, EMPTY) == event
    assert (
        gather_details("it was yesterday, card ending 1234", [_failed_at_freshmart()], now=NOW)
        == merged
    )


def test_details_round_trip_through_json_values_and_drop_what_fails_a_check() -> None:
    details = Details(
        "transfer", None, Decimal("50.00"), "GBP", "last Friday", "1234", "John Smith"
    )
    assert Details.from_dict(details.to_dict()) == details
    assert (
        Details.from_dict(
            {
                "about": "rocket",
                "merchant": "1234 5678",
                "amount": "lots",
                "currency": "GBP",
                "date": "soonish",
                "card": "12",
                "extra": "ignored",
            }
        )
        == EMPTY
    )


def test_amounts_and_dates_are_written_as_known_and_no_further() -> None:
    assert format_amount(Decimal("42.50"), None) == "42.50"
    assert format_amount(Decimal("1250"), "GBP") == "£1,250.00"
    assert format_amount(Decimal("42.5"), "CHF") == "42.50 CHF"
    assert format_amount(Decimal("1000"), "JPY") == "¥1,000"
    payment = Details("payment", "FreshMart", Decimal("42.50"), None, "2025-03-12", "virtual")
    assert describe(payment, "payment") == (
        "your payment of 42.50 at FreshMart on 12 March with your virtual card"
    )
    assert describe(payment, "card") == "your virtual card"
    assert describe(payment, "transfer") is None  # about another thing
    assert describe(Details(date="yesterday"), "withdrawal") == "your cash withdrawal yesterday"
    assert describe(EMPTY, "payment") is None


# The profile summary and the composer


def test_the_summary_names_the_merchant_and_amount_of_a_failed_payment() -> None:
    summary = summarize_profile("u1", events=[_failed_at_freshmart()], now=NOW)
    assert [n.text for n in summary.notes] == [
        "a payment of 42.50 at FreshMart failed at checkout 5 minutes ago"
    ]
    transfer = Event(
        "u1",
        "transfer_sent",
        _ago(hours=2),
        {"status": "pending", "recipient": "Ada Lovelace", "amount": 1200, "currency": "EUR"},
    )
    summary = summarize_profile("u1", events=[transfer], now=NOW)
    assert (
        summary.notes[0].text
        == "a transfer of €1,200.00 to Ada Lovelace was marked pending 2 hours ago"
    )


def test_the_declined_payment_answer_names_merchant_and_amount() -> None:
    kb = shared_kb()
    events = [_failed_at_freshmart()]
    summary = summarize_profile("u1", events=events, now=NOW)
    details = gather_details("my card payment was declined", events, now=NOW)
    plan, reply = compose(kb, _sure("declined_card_payment"), summary, [], details=details)
    assert "your payment of 42.50 at FreshMart" not in reply  # said once, by the note:
    assert reply.startswith("I can see that a payment of 42.50 at FreshMart failed at checkout")
    assert "€" not in reply and "£" not in reply and "$" not in reply  # no currency invented
    # With no note (the customer said it), the answer names it itself.
    said = details_from_text("I paid £20 at Tesco yesterday and it was declined")
    plan, reply = compose(
        kb, _sure("declined_card_payment"), summarize_profile("u1", now=NOW), [], details=said
    )
    entry = kb.for_intent("declined_card_payment")
    assert entry is not None
    assert reply == IN_QUESTION.format("your payment of £20.00 at Tesco yesterday") + " " + (
        entry.answer + " " + entry.follow_ups[plan.variant % len(entry.follow_ups)]
    )


def test_details_are_named_only_where_the_answer_is_about_them() -> None:
    kb = shared_kb()
    empty = summarize_profile("u1", now=NOW)
    payment = details_from_text("I paid £20 at Tesco yesterday")
    # A transfer answer does not borrow a payment's merchant; a how-to answer names nothing.
    _, reply = compose(
        kb,
        _sure("failed_transfer"),
        empty,
        [],
        details=Details("payment", "Tesco", Decimal(20), "GBP"),
    )
    assert "Tesco" not in reply and "20" not in reply
    _, reply = compose(kb, _sure("topping_up_by_card"), empty, [], details=payment)
    assert "Tesco" not in reply and "£" not in reply
    # A card answer names the card, whatever the event was about.
    card = Details("payment", "Tesco", Decimal(20), "GBP", card="1234")
    _, reply = compose(kb, _sure("card_not_working"), empty, [], details=card)
    assert reply.startswith("Let's look at your card ending 1234.") and "Tesco" not in reply
    # A clarifying question commits to nothing.
    unsure = Understanding(
        intent="declined_card_payment",
        confidence=0.5,
        top2=(("declined_card_payment", 0.5), ("card_not_working", 0.45)),
    )
    plan, reply = compose(kb, unsure, empty, [], details=payment)
    assert plan.kind is ReplyKind.CLARIFY and "Tesco" not in reply


def test_the_knowledge_base_checks_what_an_answer_is_about() -> None:
    entry = """
[[answer]]
id = "kb-x"
intent = "declined_card_payment"
about = "{about}"
title = "t"
answer = "A."
facts = ["f"]
follow_ups = []
questions = ["q"]
"""
    assert parse_file(entry.format(about="payment"), "x.toml")[0].about == "payment"
    with pytest.raises(KnowledgeBaseError, match="'about' must be one of"):
        parse_file(entry.format(about="rocket"), "x.toml")


# Property: the composer states no merchant, amount or date that the events and messages do not


NAMES = ("FreshMart", "Tesco Express", "Amazon", "Corner Cafe", "Blue Bottle", "Ada Lovelace")
CURRENCIES = (None, "EUR", "GBP", "USD", "CHF", "home")
EVENT_NAMES = (
    "payment_failed",
    "card_payment",
    "card_transaction_disputed",
    "refund_requested",
    "transfer_sent",
    "atm_withdrawal",
    "top_up",
    "card_frozen",
    "page_view",
)
STATUSES = ("declined", "failed", "pending", "completed", "reverted", "approved")
DATES = ("", "yesterday", "on Monday", "on 12 March", "last Friday", "on 2025-03-10")
SIGNS = {"EUR": "€", "GBP": "£", "USD": "$"}

amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(99999), places=2)


@st.composite
def events(draw: st.DrawFn) -> Event:
    props: dict[str, Any] = {"status": draw(st.sampled_from(STATUSES))}
    if draw(st.booleans()):
        props["merchant"] = draw(st.sampled_from(NAMES))
    if draw(st.booleans()):
        props["recipient"] = draw(st.sampled_from(NAMES))
    if draw(st.booleans()):
        amount = draw(amounts)
        props["amount"] = float(amount) if draw(st.booleans()) else str(amount)
        if (currency := draw(st.sampled_from(CURRENCIES))) is not None:
            props["currency"] = currency
    if draw(st.booleans()):
        props["card_last4"] = draw(st.from_regex(r"\d{4}", fullmatch=True))
    minutes = draw(st.integers(min_value=1, max_value=30 * 24 * 60))
    return Event("u1", draw(st.sampled_from(EVENT_NAMES)), _ago(minutes=minutes), props)


@st.composite
def messages(draw: st.DrawFn) -> str:
    amount = draw(amounts)
    written = draw(
        st.sampled_from(
            (f"£{amount}", f"{amount} EUR", f"{amount} dollars", f"${amount}", f"{amount}")
        )
    )
    name = draw(st.sampled_from(NAMES))
    when = draw(st.sampled_from(DATES))
    template = draw(
        st.sampled_from(
            (
                "my card payment was declined",
                "I paid {amount} at {name} {when}",
                "I sent {amount} to {name} {when}",
                "why was I charged {amount} {when}?",
                "my card ending 4321 stopped working {when}",
                "hi",
            )
        )
    )
    return template.format(amount=written, name=name, when=when).strip()


def _numbers(text: str) -> set[Decimal]:
    return {
        n
        for m in re.finditer(r"\d[\d,]*(?:\.\d+)?", text)
        if (n := parse_number(m.group())) is not None
    }


def _given_numbers(text: str, given: Sequence[Event], kb_text: str) -> set[Decimal]:
    """Every number the inputs hold, as they hold it: the message, the events' property values,
    ages and dates, and the knowledge base."""
    found = _numbers(text) | _numbers(kb_text)
    for event in given:
        found |= _numbers(" ".join(str(v) for v in event.props.values()))
        found |= _numbers(age_phrase((NOW - event.occurred_at).total_seconds()))
        found |= {Decimal(event.occurred_at.day), Decimal(event.occurred_at.year)}
    # A note counts repeats: "(2 times recently)".
    return found | {Decimal(n) for n in range(len(given) + 1)}


KB_TEXT = " ".join(passage_text(entry) for entry in shared_kb())
INTENTS = sorted(entry.intent for entry in shared_kb() if entry.intent != HANDOFF)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=messages(),
    given_events=st.lists(events(), max_size=3),
    intent=st.sampled_from(INTENTS),
    emotion=st.sampled_from((None, *EMOTIONS)),
)
def test_the_composer_states_nothing_the_events_and_messages_do_not(
    text: str, given_events: list[Event], intent: str, emotion: str | None
) -> None:
    kb = shared_kb()
    entry = kb.for_intent(intent)
    assert entry is not None
    summary = summarize_profile("u1", events=given_events, now=NOW)
    details = gather_details(text, given_events, about=entry.about, now=NOW)
    understanding = Understanding(intent=intent, confidence=0.9, emotion=emotion)
    plan, reply = compose(kb, understanding, summary, [], details=details)
    # Every number in the reply is one the inputs hold...
    assert _numbers(reply) <= _given_numbers(text, given_events, KB_TEXT), reply
    # ...every currency sign one they name...
    named = {c for e in given_events if isinstance(c := e.props.get("currency"), str)}
    for code, sign in SIGNS.items():
        if sign in reply:
            said = sign in text or code in text or (code == "USD" and "dollars" in text)
            assert said or code in {c.upper() for c in named}, reply
    # ...every name one they hold (the other names are canaries)...
    held = text + " ".join(str(v) for e in given_events for v in e.props.values())
    for name in NAMES:
        if name in reply:
            assert name in held, reply
    # ...and the guard on model replies finds nothing ungrounded in it.
    grounds = Grounds.of(
        details=(details,),
        texts=(text, *summary.lines(), *(passage_text(e) for e in (plan.entry, *plan.choices))),
    )
    assert ungrounded(reply, grounds) is None, reply


# The guard on model replies


GROUNDS = Grounds.of(
    details=(Details("payment", "FreshMart", Decimal("42.50"), None, "2025-03-12"),),
    texts=("my card payment was declined yesterday",),
)


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("Your payment of 42.50 at FreshMart was declined yesterday.", None),
        ("The payment on 12 March was declined. It was a Wednesday.", None),
        ("How can I help you today?", None),
        ("It usually clears within 3 working days.", None),
        ("Your payment of €42.50 was declined.", "amount"),  # a currency nobody gave
        ("The charge of £99.00 will be refunded.", "amount"),
        ("Your payment of 99.99 failed.", "amount"),
        ("It was declined on Monday.", "date"),
        ("It will be back by tomorrow.", "date"),
        ("Your payment on 13 March failed.", "date"),
        ("Your payment at Tesco was declined.", "merchant"),
        ("A refund from Amazon is on its way.", "merchant"),
    ],
)
def test_the_guard_finds_what_a_reply_states_without_grounds(reply: str, kind: str | None) -> None:
    assert ungrounded(reply, GROUNDS) == kind
    assert "weekday:wednesday" in date_keys("2025-03-12")


def _stream(text: str, cuts: Sequence[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in itertools.pairwise([0, *points, len(text)])]


@settings(max_examples=200, deadline=None)
@given(
    invented=st.one_of(
        amounts.filter(lambda a: a != Decimal("42.50")).map(lambda a: f"£{a}"),
        st.sampled_from(("on Friday", "on 3 April", "tomorrow", "at Tesco", "from Amazon")),
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_a_streamed_reply_never_lets_an_invented_detail_through(
    invented: str, cuts: list[int]
) -> None:
    text = (
        "I'm sorry about that. Your payment of 42.50 at FreshMart was declined yesterday. "
        f"It was the one {invented}, I believe. Anything else?"
    )
    gate = SentenceGate(GROUNDS)
    sent = "".join(gate.feed(piece) for piece in _stream(text, cuts)) + gate.close()
    assert gate.failure is not None
    # The sound sentences went out, and of the unsound one at most the words before the detail.
    assert sent.startswith("I'm sorry about that. Your payment of 42.50 at FreshMart")
    assert invented not in sent and text.startswith(sent) and "Anything" not in sent
    # Grounded, the same reply goes through whole, however it was cut.
    honest = text.replace(invented, "at FreshMart")
    gate = SentenceGate(GROUNDS)
    pieces = [gate.feed(piece) for piece in _stream(honest, cuts)]
    assert "".join(pieces) + gate.close() == honest


# The prompt and the generator


def test_the_prompt_lists_the_known_details() -> None:
    assert describe_details(Details("payment", "FreshMart", Decimal("42.50"))) == (
        "- about: a payment\n- merchant: FreshMart\n"
        "- amount: 42.50 (currency not known: write none)"
    )
    assert describe_details(EMPTY).startswith("- none: state no merchant, amount or date")


def _declined(details: Details = EMPTY) -> GenerationRequest:
    return GenerationRequest(
        user_id="u1",
        utterance="my card payment was declined",
        understanding=_sure("declined_card_payment"),
        profile=summarize_profile("u1", events=[_failed_at_freshmart()], now=NOW),
        details=details,
    )


async def test_a_model_that_invents_an_amount_is_replaced_by_the_composer() -> None:
    invented = "Sorry about that. Your payment of £99.00 at FreshMart was declined."
    gen = generator(GenericFakeChatModel(messages=iter([invented])))
    composed = (await generator().generate(_declined())).text
    reply = gen.stream(_declined())
    pieces = [piece async for piece in reply]
    result = reply.result
    assert result.source is ReplySource.COMPOSER
    assert result.fallback_reason is FallbackReason.UNGROUNDED
    # The first sentence was sound and had gone out, and the second's words before the amount;
    # the amount never did. The composer's reply follows after a paragraph break.
    assert result.text == "Sorry about that. Your payment of " + PARAGRAPH + composed
    assert result.text == "".join(pieces)
    assert "99" not in result.text and "42.50 at FreshMart" in result.text
    assert gen.stats.fallbacks == gen.stats.fallback_ungrounded == 1
    assert gen.stats.fallbacks_by_reason()["ungrounded"] == 1


async def test_a_model_that_names_the_known_details_is_sent_as_written() -> None:
    recorder = PromptRecorder()
    honest = "Your payment of 42.50 at FreshMart was declined yesterday. Try it again later."
    model = GenericFakeChatModel(messages=iter([honest]), callbacks=[recorder])
    gen = generator(model)
    details = gather_details("it was yesterday", [_failed_at_freshmart()], now=NOW)
    result = await gen.generate(_declined(details))
    assert result.source is ReplySource.MODEL and result.text == honest
    prompt = _text(recorder.prompts[0])
    assert "Known details of what the customer is asking about:\n- about: a payment\n" in prompt
    assert "- merchant: FreshMart\n- amount: 42.50 (currency not known: write none)\n" in prompt
    assert "- date: yesterday" in prompt and "never state one that is not there" in prompt


# End to end: a real server, a real client


def _at(minutes: float) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat()


async def _declined_after_freshmart(client: Client, user: str) -> dict[str, Any]:
    await client.hello(user={"external_id": user})
    event = {
        "type": "event",
        "id": "ev-1",
        "name": "payment_failed",
        "at": _at(3),
        "props": {"merchant": "FreshMart", "amount": 42.5},
    }
    await client.send(event)
    assert (await client.recv())["stored"] == 1
    await client.send({"type": "message", "id": "m1", "text": "my card payment was declined"})
    return (await client.recv_until("reply"))[-1]


async def test_a_reply_after_a_failed_payment_names_merchant_and_amount(
    server: RunningServer, open_client: ClientFactory
) -> None:
    reply = await _declined_after_freshmart(await open_client(), "details-freshmart")
    assert "FreshMart" in reply["text"] and "42.50" in reply["text"], reply["text"]
    for currency in ("€", "£", "$", "EUR", "GBP", "USD"):
        assert currency not in reply["text"]
    # Without the event, the same message gets no merchant and no amount.
    other = await open_client()
    await other.hello(user={"external_id": "details-nothing"})
    await other.send({"type": "message", "id": "m1", "text": "my card payment was declined"})
    text = (await other.recv_until("reply"))[-1]["text"]
    assert "FreshMart" not in text and not re.search(r"\d+\.\d{2}", text), text


async def test_a_model_reply_with_an_invented_amount_reaches_nobody(
    models: Models, generator: ResponseGenerator, sqlite_url: str
) -> None:
    model = GenericFakeChatModel(
        messages=itertools.cycle([AIMessage(content="Your payment of £999.00 was declined.")])
    )
    inventing = ResponseGenerator(generator.kb, generator.retriever, chat_model=model)
    settings = Settings(host="127.0.0.1", port=0, db_url=sqlite_url, device="cpu")
    async with running(settings, models=models, generator=inventing) as srv:
        async with connect(srv.url + "/chat") as ws:
            reply = await _declined_after_freshmart(Client(ws), "details-guarded")
        _, samples = await scrape(srv)
    assert "999" not in reply["text"] and "FreshMart" in reply["text"], reply["text"]
    assert value(samples, "assistant_llm_fallbacks_total", {"reason": "ungrounded"}) == 1
