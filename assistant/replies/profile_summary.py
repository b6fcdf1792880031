"""A short, prompt-safe summary of one user's profile, built by a pure function.

The store offers the profile (intent histogram, emotion state), the user's recent behaviour
events and recent turns. `summarize_profile` keeps only what helps answer the next message:

- the intents the user asked about most and most recently;
- the emotion trend over the last user turns (rising, easing or steady);
- notes on recent behaviour that a reply may mention, such as a failed payment or a card
  ordered long ago that was never activated, each tied to the intents it is relevant to.

Privacy: records of any other user are dropped, note texts are written from a fixed
vocabulary (property values pass only as short words, never numbers or free text), and no
names, texts or identifiers of the user enter the summary. The one exception is the details
of the event a note describes (the merchant, the amount and its currency, a transfer's
recipient), which pass the checks of `assistant.replies.details`: a short name with no run
of four digits and nothing redaction would hide, a positive number, a three-letter code. So
the summary can go into a prompt whole.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from assistant.replies.details import EMPTY, Details, Subject, event_details, modifiers
from assistant.replies.understanding import EMOTIONS, NEGATIVITY

Trend = Literal["rising", "easing", "steady", "unknown"]

MAX_NOTES = 4
MAX_RECENT_INTENTS = 5
MAX_FREQUENT_INTENTS = 3
TREND_TURNS = 4
# Behaviour older than this is not worth mentioning; orders are followed for longer.
NOTE_WINDOW = timedelta(days=14)
ORDER_WINDOW = timedelta(days=45)
# A card ordered this long ago and still not activated counts as late (standard delivery).
LATE_CARD = timedelta(days=10)
LATE_CARD_EXPRESS = timedelta(days=4)


class EventLike(Protocol):
    """What the summary reads of a behaviour event (profiles.EventRecord fits)."""

    @property
    def user_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def props(self) -> Mapping[str, Any]: ...
    @property
    def occurred_at(self) -> datetime: ...


class TurnLike(Protocol):
    """What the summary reads of a turn (profiles.TurnRecord fits)."""

    @property
    def user_id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def intent(self) -> str | None: ...
    @property
    def emotion(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...


class ProfileLike(Protocol):
    """What the summary reads of a profile (profiles.ProfileRecord fits)."""

    @property
    def user_id(self) -> str: ...
    @property
    def turn_count(self) -> int: ...
    @property
    def emotion_state(self) -> Mapping[str, Any] | None: ...
    @property
    def intent_histogram(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class BehaviourNote:
    """One recent thing the user did or that happened to them, as a reply may mention it."""

    kind: str  # e.g. "card_payment_declined", "card_late"
    text: str  # a clause: "a card payment was declined online 2 hours ago"
    age_s: float
    intents: frozenset[str]  # the intents this note is relevant to
    problem: bool  # something failed, is stuck or went wrong
    details: Details = EMPTY  # what the text names of the event: merchant, amount, recipient


@dataclass(frozen=True, slots=True)
class EmotionTrend:
    recent: tuple[str, ...] = ()  # emotions of the last user turns, oldest first
    direction: Trend = "unknown"
    state: str | None = None  # the profile's smoothed emotion, when the profile keeps one


@dataclass(frozen=True, slots=True)
class ProfileSummary:
    user_id: str
    turn_count: int = 0
    frequent_intents: tuple[str, ...] = ()  # most asked first
    recent_intents: tuple[str, ...] = ()  # oldest first
    emotion: EmotionTrend = field(default_factory=EmotionTrend)
    notes: tuple[BehaviourNote, ...] = ()  # problems first, then newest first

    def notes_for(self, intent: str | None) -> tuple[BehaviourNote, ...]:
        if intent is None:
            return ()
        return tuple(note for note in self.notes if intent in note.intents)

    def lines(self) -> list[str]:
        """The summary as prompt lines; empty parts are left out."""
        out: list[str] = []
        if self.recent_intents:
            out.append("Recent topics (oldest first): " + ", ".join(self.recent_intents))
        if self.frequent_intents:
            out.append("Most frequent topics: " + ", ".join(self.frequent_intents))
        if self.emotion.recent:
            trend = " -> ".join(self.emotion.recent)
            out.append(f"Emotion over the last turns: {trend} ({self.emotion.direction})")
        elif self.emotion.state:
            out.append(f"Usual emotion: {self.emotion.state}")
        out.extend(f"Recent activity: {note.text}" for note in self.notes)
        return out


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes for UTC columns.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def age_phrase(seconds: float) -> str:
    """A rounded, human age: 'just now', '5 minutes ago', '2 hours ago', '3 days ago'."""
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return "just now"
    for unit, size in (("minute", 60), ("hour", 3600), ("day", 86400)):
        limit = {"minute": 3600, "hour": 86400, "day": float("inf")}[unit]
        if seconds < limit:
            count = max(1, round(seconds / size))
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    raise AssertionError("unreachable")


_WORD = re.compile(r"^[a-z][a-z _-]{0,31}$")


def _word(props: Mapping[str, Any], key: str) -> str | None:
    """A property value fit for a sentence: a short lowercase word or phrase, else None.

    Clients fill props freely; only vocabulary-like values (letters, spaces, - and _) pass,
    so numbers, references, names or card digits never reach a prompt.
    """
    value = props.get(key)
    if not isinstance(value, str):
        return None
    value = value.strip().lower()
    if not _WORD.match(value):
        return None
    return value.replace("_", " ")


_CHANNEL = {"online": "online", "contactless": "by contactless", "chip": "in a shop"}
_FEE = {
    "card_payment": ("a card payment fee", "card_payment_fee_charged"),
    "atm": ("a cash withdrawal fee", "cash_withdrawal_charge"),
    "exchange": ("an exchange fee", "exchange_charge"),
    "top_up_transfer": ("a bank transfer top-up fee", "top_up_by_bank_transfer_charge"),
    "top_up_card": ("a card top-up fee", "top_up_by_card_charge"),
    "transfer": ("a transfer fee", "transfer_fee_charged"),
}
_CARD_NOT_WORKING = {"declined_card_payment", "card_not_working"}
_TRANSFER_INTENTS = {
    "failed": ("failed", {"failed_transfer", "transfer_not_received_by_recipient"}),
    "declined": ("was declined", {"declined_transfer", "beneficiary_not_allowed"}),
    "pending": (
        "was marked pending",
        {"pending_transfer", "transfer_timing", "cancel_transfer"},
    ),
    "completed": (
        "was completed",
        {"transfer_not_received_by_recipient", "transfer_timing", "transfer_fee_charged"},
    ),
}
_TOP_UP_INTENTS = {
    "failed": ("failed", {"top_up_failed"}),
    "declined": ("was declined", {"top_up_failed", "top_up_limits"}),
    "pending": ("was marked pending", {"pending_top_up"}),
    "reverted": ("was reverted", {"top_up_reverted"}),
    "verification_required": ("needs verification", {"verify_top_up", "pending_top_up"}),
}
_ATM_INTENTS = {
    "declined": ("was declined", {"declined_cash_withdrawal", "pin_blocked"}),
    "pending": ("was marked pending", {"pending_cash_withdrawal"}),
    "partial": ("paid out less than requested", {"wrong_amount_of_cash_received"}),
}


@dataclass(frozen=True, slots=True)
class _Draft:
    kind: str
    clause: str  # without the age
    intents: frozenset[str]
    problem: bool
    window: timedelta = NOTE_WINDOW
    details: Details = EMPTY


def _named(name: str, props: Mapping[str, Any]) -> Details:
    """The details a note names: those of its event, without the date (the note gives the
    event's age) or the card."""
    found = event_details(name, props, None)
    return Details(
        about=found.about,
        merchant=found.merchant,
        amount=found.amount,
        currency=found.currency,
        transfer=found.transfer,
    )


def _of(details: Details, subject: Subject) -> str:
    """ " of €42.50 at FreshMart": what follows a note's noun."""
    return modifiers(details, subject, when=False, card=False)


def _card_payment(props: Mapping[str, Any]) -> _Draft | None:
    status = _word(props, "status")
    where = _CHANNEL.get(_word(props, "channel") or "", "")
    virtual = _word(props, "card_type") == "virtual"
    details = _named("card_payment", props)
    card = ("virtual card payment" if virtual else "card payment") + _of(details, "payment")
    if status == "declined":
        intents = set(_CARD_NOT_WORKING)
        if where == "by contactless":
            intents.add("contactless_not_working")
        if virtual:
            intents.add("virtual_card_not_working")
        return _Draft(
            "card_payment_declined",
            f"a {card} was declined {where}".rstrip(),
            frozenset(intents),
            True,
            details=details,
        )
    if status == "pending":
        return _Draft(
            "card_payment_pending",
            f"a {card} was marked pending",
            frozenset({"pending_card_payment"}),
            True,
            details=details,
        )
    if status == "reverted":
        return _Draft(
            "card_payment_reverted",
            f"a {card} was reverted",
            frozenset({"reverted_card_payment?"}),
            True,
            details=details,
        )
    return None


def _status_draft(
    name: str,
    subject: str,
    table: Mapping[str, tuple[str, set[str]]],
    props: Mapping[str, Any],
    details: Details = EMPTY,
) -> _Draft | None:
    status = _word(props, "status")
    found = table.get((status or "").replace(" ", "_"))
    if found is None:
        return None
    verb, intents = found
    return _Draft(
        f"{name}_{(status or '').replace(' ', '_')}",
        f"{subject} {verb}",
        frozenset(intents),
        problem=status != "completed",
        details=details,
    )


def _draft(name: str, props: Mapping[str, Any]) -> _Draft | None:
    """What one event says, before its age is known; None for events not worth a mention."""
    details = _named(name, props)
    if name == "payment_failed":
        reason = _word(props, "reason")
        return _Draft(
            "payment_failed",
            f"a payment{_of(details, 'payment')} failed at checkout"
            + (f" ({reason})" if reason else ""),
            frozenset({*_CARD_NOT_WORKING, "virtual_card_not_working"}),
            True,
            details=details,
        )
    if name == "card_payment":
        return _card_payment(props)
    if name == "transfer_sent":
        scope = _word(props, "scope")
        of = _of(details, "transfer")
        subject = (
            f"an {scope} transfer{of}"
            if scope == "international"
            else f"a transfer{of}"
            if of
            else "a transfer you sent"
        )
        return _status_draft(name, subject, _TRANSFER_INTENTS, props, details)
    if name == "top_up":
        method = {"card": "card", "bank transfer": "bank transfer", "cash": "cash"}.get(
            _word(props, "method") or "", ""
        )
        subject = f"a {method} top-up".replace("  ", " ") + _of(details, "top_up")
        draft = _status_draft(name, subject, _TOP_UP_INTENTS, props, details)
        if draft and method == "bank transfer" and draft.kind == "top_up_pending":
            extra = {"balance_not_updated_after_bank_transfer"}
            return replace(draft, intents=draft.intents | extra, problem=True)
        if draft and method == "cash" and draft.kind == "top_up_pending":
            extra = {"balance_not_updated_after_cheque_or_cash_deposit"}
            return replace(draft, intents=draft.intents | extra, problem=True)
        return draft
    if name == "atm_withdrawal":
        return _status_draft(
            name, f"a cash withdrawal{_of(details, 'withdrawal')}", _ATM_INTENTS, props, details
        )
    if name == "atm_card_retained":
        return _Draft(
            "atm_card_retained", "an ATM kept your card", frozenset({"card_swallowed"}), True
        )
    if name == "pin_blocked":
        return _Draft(
            "pin_blocked",
            "your PIN was blocked after wrong attempts",
            frozenset({"pin_blocked", "change_pin", "declined_cash_withdrawal"}),
            True,
        )
    if name == "login_failed":
        return _Draft("login_failed", "a sign-in failed", frozenset({"passcode_forgotten"}), True)
    if name == "identity_verification":
        status = _word(props, "status")
        step = _word(props, "step")
        if status == "failed":
            return _Draft(
                "identity_check_failed",
                "an identity check failed" + (f" at the {step} step" if step else ""),
                frozenset({"unable_to_verify_identity", "verify_my_identity"}),
                True,
            )
        if status == "requested":
            source = step == "source of funds"
            return _Draft(
                "identity_check_requested",
                "we asked you to prove the source of funds"
                if source
                else "we asked you to verify your identity",
                frozenset(
                    {"verify_source_of_funds"}
                    if source
                    else {"why_verify_identity", "verify_my_identity"}
                ),
                False,
            )
        return None
    if name == "card_frozen":
        reason = _word(props, "reason")
        return _Draft(
            "card_frozen",
            "a card was frozen" + (f" ({reason})" if reason else ""),
            frozenset({"lost_or_stolen_card", "compromised_card", "card_not_working"}),
            True,
        )
    if name == "fee_charged":
        label, intent = _FEE.get(
            (_word(props, "fee_type") or "").replace(" ", "_"),
            ("a fee", "extra_charge_on_statement"),
        )
        return _Draft(
            "fee_charged",
            f"{label} was charged",
            frozenset({intent, "extra_charge_on_statement"}),
            False,
        )
    if name == "card_transaction_disputed":
        return _Draft(
            "transaction_flagged",
            f"you flagged a transaction{_of(details, 'payment')}",
            frozenset(
                {
                    "card_payment_not_recognised",
                    "cash_withdrawal_not_recognised",
                    "transaction_charged_twice",
                }
            ),
            True,
            details=details,
        )
    if name == "device_removed":
        return _Draft(
            "device_removed",
            "a device was removed from your account",
            frozenset({"lost_or_stolen_phone"}),
            True,
        )
    if name == "refund_requested":
        status = _word(props, "status")
        refund = f"a refund{_of(details, 'refund')}"
        return _Draft(
            "refund",
            f"{refund} was {status}" if status else f"{refund} was requested",
            frozenset({"Refund_not_showing_up", "request_refund"}),
            False,
            details=details,
        )
    if name == "order_placed":
        return _Draft(
            "order_placed",
            "you placed an order",
            frozenset({"request_refund", "Refund_not_showing_up"}),
            False,
            ORDER_WINDOW,
        )
    if name == "card_shipped":
        return _Draft(
            "card_shipped",
            "a card was sent to you",
            frozenset({"card_arrival", "activate_my_card"}),
            False,
            ORDER_WINDOW,
        )
    if name == "card_expiry_notice":
        return _Draft(
            "card_expiry_notice",
            "we told you that a card expires soon",
            frozenset({"card_about_to_expire"}),
            False,
            ORDER_WINDOW,
        )
    if name == "beneficiary_added" and _word(props, "status") in {"rejected", "declined"}:
        return _Draft(
            "payee_refused",
            "a new payee was refused",
            frozenset({"beneficiary_not_allowed", "declined_transfer"}),
            True,
        )
    if name == "wallet_linked" and _word(props, "status") in {"failed", "declined"}:
        return _Draft(
            "wallet_failed",
            "adding a card to a phone wallet failed",
            frozenset({"apple_pay_or_google_pay"}),
            True,
        )
    if name == "app_error":
        return _Draft("app_error", "the app showed an error", frozenset(), True)
    return None


def _card_order_note(
    event: EventLike, later: Sequence[EventLike], now: datetime
) -> BehaviourNote | None:
    """A card order: late when it is old and no card was activated since."""
    ordered = _aware(event.occurred_at)
    age = now - ordered
    if age > ORDER_WINDOW or age < timedelta(0):
        return None
    activated = any(e.name == "card_activated" for e in later)
    if activated:
        return None
    express = _word(event.props, "delivery") in {"express", "instant"}
    late_after = LATE_CARD_EXPRESS if express else LATE_CARD
    when = age_phrase(age.total_seconds())
    intents = frozenset(
        {"card_arrival", "card_delivery_estimate", "activate_my_card", "order_physical_card"}
    )
    if age >= late_after:
        text = f"the card you ordered {when} has not been activated yet"
        return BehaviourNote("card_late", text, age.total_seconds(), intents, True)
    return BehaviourNote(
        "card_ordered", f"you ordered a card {when}", age.total_seconds(), intents, False
    )


def behaviour_notes(
    events: Iterable[EventLike], now: datetime, *, max_notes: int = MAX_NOTES
) -> tuple[BehaviourNote, ...]:
    """Notes on recent events: one per kind (the newest), problems first, then newest first."""
    now = _aware(now)
    ordered = sorted(events, key=lambda e: _aware(e.occurred_at))
    newest: dict[str, BehaviourNote] = {}
    repeats: Counter[str] = Counter()
    for index, event in enumerate(ordered):
        age = now - _aware(event.occurred_at)
        if age < timedelta(0):
            continue  # clock skew: a future event is not "recent behaviour" to talk about
        if event.name in {"card_ordered", "card_ordered_spare"}:
            note = _card_order_note(event, ordered[index + 1 :], now)
        else:
            draft = _draft(event.name, event.props)
            if draft is None or age > draft.window:
                continue
            text = f"{draft.clause} {age_phrase(age.total_seconds())}"
            note = BehaviourNote(
                draft.kind, text, age.total_seconds(), draft.intents, draft.problem, draft.details
            )
        if note is None:
            continue
        repeats[note.kind] += 1
        newest[note.kind] = note
    notes = []
    for kind, note in newest.items():
        count = repeats[kind]
        if count > 1:
            note = replace(note, text=f"{note.text} ({count} times recently)")
        notes.append(note)
    notes.sort(key=lambda n: (not n.problem, n.age_s, n.kind))
    return tuple(notes[:max_notes])


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def frequent_intents(
    histogram: Mapping[str, Any], limit: int = MAX_FREQUENT_INTENTS
) -> tuple[str, ...]:
    counts = [(label, n) for label, v in histogram.items() if (n := _numeric(v)) and n > 0]
    counts.sort(key=lambda item: (-item[1], item[0]))
    return tuple(label for label, _ in counts[:limit])


def emotion_state_label(state: Mapping[str, Any] | None) -> str | None:
    """The profile's smoothed emotion: {"label": ...}, {"scores": {...}} or {emotion: score}."""
    if not state:
        return None
    label = state.get("label")
    if isinstance(label, str) and label in EMOTIONS:
        return label
    scores = state.get("scores")
    source = scores if isinstance(scores, Mapping) else state
    ranked = [(n, e) for e in EMOTIONS if (n := _numeric(source.get(e))) is not None and n > 0]
    if not ranked:
        return None
    return max(ranked, key=lambda item: (item[0], -EMOTIONS.index(item[1])))[1]


def emotion_direction(recent: Sequence[str]) -> Trend:
    """Rising when the latest turn is more negative than the earlier average, easing if less."""
    if len(recent) < 2:
        return "unknown"
    earlier = [NEGATIVITY[e] for e in recent[:-1]]
    last = NEGATIVITY[recent[-1]]
    mean = sum(earlier) / len(earlier)
    if last > mean + 0.5:
        return "rising"
    if last < mean - 0.5:
        return "easing"
    return "steady"


def summarize_profile(
    user_id: str,
    *,
    profile: ProfileLike | None = None,
    events: Iterable[EventLike] = (),
    turns: Iterable[TurnLike] = (),
    now: datetime,
    max_notes: int = MAX_NOTES,
) -> ProfileSummary:
    """The summary of `user_id`'s data; records of any other user are ignored."""
    if profile is not None and profile.user_id != user_id:
        profile = None
    own_events = [e for e in events if e.user_id == user_id]
    user_turns = sorted(
        (t for t in turns if t.user_id == user_id and t.role == "user"),
        key=lambda t: _aware(t.created_at),
    )
    recent_intents = tuple(t.intent for t in user_turns if t.intent)[-MAX_RECENT_INTENTS:]
    recent_emotions = tuple(
        e for t in user_turns if (e := t.emotion) is not None and e in NEGATIVITY
    )[-TREND_TURNS:]
    trend = EmotionTrend(
        recent=recent_emotions,
        direction=emotion_direction(recent_emotions),
        state=emotion_state_label(profile.emotion_state) if profile else None,
    )
    return ProfileSummary(
        user_id=user_id,
        turn_count=profile.turn_count if profile else len(user_turns),
        frequent_intents=frequent_intents(profile.intent_histogram) if profile else (),
        recent_intents=recent_intents,
        emotion=trend,
        notes=behaviour_notes(own_events, now, max_notes=max_notes),
    )
