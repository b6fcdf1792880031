"""The details of what a customer asks about (merchant, amount, date, card, transfer), read from
behaviour events and from the customer's words by pure functions.

    details = gather_details(text, events, about="payment", now=now)
    details.to_dict()        # {"about": "payment", "merchant": "FreshMart", "amount": "42.50"}
    merge(older, newer)      # newer wins; two different transactions are never mixed
    describe(details, "payment")   # "your payment of €42.50 at FreshMart yesterday"

Nothing is guessed. A value is kept only when an event property or the customer's message
states it in a form recognised here:

- amounts with a currency sign, code or word ("£42.50", "42,50 €", "EUR 42.50", "20 dollars");
  from events, a positive `amount` and a three-letter `currency`;
- dates as said ("yesterday", "last Monday", "12 March", "March 12", "2025-03-12",
  "12/03/2025"); from events, the day the event happened, as an ISO date;
- merchants: a capitalised name after "at" or "from" ("at FreshMart"); lowercase names and
  names after other words are left alone;
- cards: the last four digits after "ending" or "last four" ("card ending 1234"), or a
  virtual or disposable card;
- transfers: the recipient, a capitalised name after "to" in a message about sending money.

Names and digits pass the same checks whatever their source: a name of at most four words
and 40 characters, no run of four digits and nothing the redaction would hide; so a card
number or an account reference never becomes a detail.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal, Protocol

from assistant.core.redaction import redact

Subject = Literal["payment", "refund", "transfer", "withdrawal", "top_up", "card"]
SUBJECTS: tuple[Subject, ...] = ("payment", "refund", "transfer", "withdrawal", "top_up", "card")

# Behaviour events whose properties describe one thing a customer may ask about.
EVENT_SUBJECTS: dict[str, Subject] = {
    "payment_failed": "payment",
    "card_payment": "payment",
    "card_transaction_disputed": "payment",
    "refund_requested": "refund",
    "transfer_sent": "transfer",
    "atm_withdrawal": "withdrawal",
    "top_up": "top_up",
    "card_ordered": "card",
    "card_shipped": "card",
    "card_activated": "card",
    "card_frozen": "card",
    "card_expiry_notice": "card",
    "atm_card_retained": "card",
}
# Where an event keeps each detail; the first key present wins.
MERCHANT_KEYS = ("merchant", "merchant_name")
RECIPIENT_KEYS = ("recipient", "beneficiary", "payee")
CARD_KEYS = ("card_last4", "last4", "card_last_four")
# Events that went wrong are what a customer asks about first.
PROBLEM_EVENTS = frozenset({"payment_failed", "card_transaction_disputed", "card_frozen"})
PROBLEM_STATUSES = frozenset(
    {"declined", "failed", "pending", "reverted", "partial", "rejected", "verification_required"}
)
# Older events are not "the one in question" any more.
EVENT_WINDOW = timedelta(days=14)

CURRENCY_SIGNS = {"£": "GBP", "€": "EUR", "$": "USD", "¥": "JPY"}
SIGN_FOR = {"GBP": "£", "EUR": "€", "USD": "$", "JPY": "¥"}
CURRENCY_WORDS = {
    "eur": "EUR",
    "euro": "EUR",
    "euros": "EUR",
    "gbp": "GBP",
    "pound": "GBP",
    "pounds": "GBP",
    "quid": "GBP",
    "usd": "USD",
    "dollar": "USD",
    "dollars": "USD",
    "bucks": "USD",
    "franc": "CHF",
    "francs": "CHF",
}
# Codes written in capitals; a lowercase three-letter word is too often an English one.
CURRENCY_CODES = (
    "EUR", "GBP", "USD", "CHF", "JPY", "PLN", "SEK", "NOK", "DKK", "CZK", "HUF", "RON", "BGN",
    "AUD", "CAD", "NZD", "CNY", "HKD", "SGD", "INR", "ZAR", "TRY", "MXN", "BRL", "AED", "ILS",
)  # fmt: skip
# Currencies written without minor units.
ZERO_DECIMAL = frozenset({"JPY", "KRW", "VND", "CLP", "ISK"})
CARD_KINDS = ("virtual", "disposable")
MAX_NAME_CHARS = 40
MAX_NAME_WORDS = 4
MAX_AMOUNT = Decimal(1_000_000_000)

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sept", "sep"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
MONTH_NAMES = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
# Relative dates, as a customer says them; "today" is one too, but a reply's "today" ("how
# can I help today?") states nothing, so the guard (assistant.replies.grounding) skips it.
RELATIVE_DATES = (
    "the day before yesterday",
    "yesterday",
    "today",
    "tonight",
    "tomorrow",
    "this morning",
    "last night",
    "last week",
    "next week",
)
# Capitalised words that start a sentence part rather than name a merchant or a person.
NOT_NAMES = frozenset(
    {
        "i", "a", "an", "the", "my", "your", "our", "his", "her", "their", "this", "that", "it",
        "me", "we", "you", "they", "he", "she", "home", "work", "atm", "atms", "pin", "app",
        "today", "yesterday", "tomorrow", "tonight",
        *WEEKDAYS,
        *(name.lower() for name in MONTH_NAMES),
    }
)  # fmt: skip


class EventLike(Protocol):
    """What the details read of a behaviour event (profiles.EventRecord fits)."""

    @property
    def name(self) -> str: ...
    @property
    def props(self) -> Mapping[str, Any]: ...
    @property
    def occurred_at(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class Details:
    """What is known about the thing in question; every field optional. `about`: the subject
    an event described (None when only the customer's words told us)."""

    about: Subject | None = None
    merchant: str | None = None
    amount: Decimal | None = None
    currency: str | None = None  # ISO 4217 code
    date: str | None = None  # an ISO date, or as said: "yesterday", "last Monday", "12 March"
    card: str | None = None  # the last four digits, or "virtual" / "disposable"
    transfer: str | None = None  # the transfer's recipient

    @property
    def known(self) -> bool:
        """Whether anything is known besides the subject."""
        values = (self.merchant, self.amount, self.date, self.card, self.transfer)
        return any(value is not None for value in values)

    def to_dict(self) -> dict[str, str]:
        """The known fields as JSON-ready strings (the amount as "42.50")."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = str(value)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Details:
        """The inverse of `to_dict`; a value that fails its check is left out, unknown keys
        are ignored."""
        about = raw.get("about")
        amount = clean_amount(raw.get("amount"))
        said = raw.get("date")
        return cls(
            about=about if about in SUBJECTS else None,
            merchant=clean_name(raw.get("merchant")),
            amount=amount,
            currency=clean_currency(raw.get("currency")) if amount is not None else None,
            date=clean_date(said) if isinstance(said, str) else None,
            card=clean_card(raw.get("card")),
            transfer=clean_name(raw.get("transfer")),
        )


EMPTY = Details()


# Checks shared by every source


_NAME_CHARS = re.compile(r"^[^\W_][\w&'.\- ]*$")
_DIGIT_RUN = re.compile(r"\d{4}")


def clean_name(value: Any) -> str | None:
    """A merchant's or recipient's name fit to repeat: short, letters and digits with & ' . -
    between, no run of four digits (card numbers, references), nothing redaction hides."""
    if not isinstance(value, str):
        return None
    name = " ".join(value.split())
    if not name or len(name) > MAX_NAME_CHARS or len(name.split()) > MAX_NAME_WORDS:
        return None
    if not _NAME_CHARS.match(name) or _DIGIT_RUN.search(name) or redact(name) != name:
        return None
    return name


_PLAIN_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")


def clean_amount(value: Any) -> Decimal | None:
    """A positive amount below a billion, to the cent; numbers or numeric strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        text = repr(value) if isinstance(value, float) else str(value)
    elif isinstance(value, str) and _PLAIN_NUMBER.match(value.strip()):
        text = value.strip()
    elif isinstance(value, Decimal):
        text = str(value)
    else:
        return None
    try:
        amount = Decimal(text)
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount <= 0 or amount >= MAX_AMOUNT:
        return None
    return amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def clean_currency(value: Any) -> str | None:
    """A three-letter currency code, in capitals ("eur" -> "EUR")."""
    if not isinstance(value, str):
        return None
    code = value.strip()
    if len(code) != 3 or not code.isascii() or not code.isalpha():
        return None
    return code.upper()


def clean_card(value: Any) -> str | None:
    """The last four digits of a card, or a card kind that changes the answer."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9999:
        return f"{value:04d}"
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if re.fullmatch(r"\d{4}", text) or text in CARD_KINDS:
        return text
    return None


def clean_date(value: str) -> str | None:
    """A date as one of the recognised forms states it, else None."""
    found = find_dates(value)
    if len(found) != 1 or found[0].said.lower() != value.strip().lower():
        return None
    return found[0].said


# Reading the customer's words

_NUMBER = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d{1,2})?|\d+(?:[.,]\d{1,2})?)"
_NUMBER_END = r"(?!\d)(?![.,]\d)"
_CODE = "|".join(CURRENCY_CODES)
_WORDS = "|".join(sorted(CURRENCY_WORDS, key=len, reverse=True))
_SIGNS = re.escape("".join(CURRENCY_SIGNS))
_AMOUNT = re.compile(
    rf"(?P<s1>[{_SIGNS}])\s?(?P<n1>{_NUMBER}){_NUMBER_END}"
    rf"|(?<![\w.,])(?P<c2>{_CODE})\s?(?P<n2>{_NUMBER}){_NUMBER_END}"
    rf"|(?<![\w.,])(?P<n3>{_NUMBER})\s?"
    rf"(?:(?P<s3>[{_SIGNS}])|(?P<c3>{_CODE})(?![A-Za-z])|(?i:(?P<w3>{_WORDS}))(?![A-Za-z]))"
)
# A number with exactly two decimals reads as an amount even without a currency.
_BARE_AMOUNT = re.compile(rf"(?<![\w.,])(?P<n>\d{{1,3}}(?:,\d{{3}})*\.\d{{2}}){_NUMBER_END}")
_ANY_NUMBER = re.compile(rf"(?<![\w.,])(?P<n>{_NUMBER}){_NUMBER_END}")


@dataclass(frozen=True, slots=True)
class FoundAmount:
    value: Decimal
    currency: str | None
    start: int
    end: int


def parse_number(text: str) -> Decimal | None:
    """ "1,250.00" -> 1250.00, "42,50" -> 42.50 (a comma before two digits is a decimal one)."""
    if re.fullmatch(r"\d+,\d{1,2}", text):
        text = text.replace(",", ".")
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def find_amounts(text: str, *, bare: bool = False) -> list[FoundAmount]:
    """Amounts with a currency, in order; with `bare`, also numbers with two decimals."""
    found: list[FoundAmount] = []
    for m in _AMOUNT.finditer(text):
        number = m.group("n1") or m.group("n2") or m.group("n3")
        sign = m.group("s1") or m.group("s3")
        word = m.group("w3")
        currency = (
            CURRENCY_SIGNS[sign]
            if sign
            else CURRENCY_WORDS[word.lower()]
            if word
            else m.group("c2") or m.group("c3")
        )
        value = parse_number(number)
        if value is not None:
            found.append(FoundAmount(value, currency, m.start(), m.end()))
    if bare:
        taken = [(a.start, a.end) for a in found]
        for m in _BARE_AMOUNT.finditer(text):
            if any(s <= m.start() < e for s, e in taken):
                continue
            value = parse_number(m.group("n"))
            if value is not None:
                found.append(FoundAmount(value, None, m.start(), m.end()))
        found.sort(key=lambda a: a.start)
    return found


def numbers_in(text: str) -> set[Decimal]:
    """Every number written in `text`, as a value."""
    values = (parse_number(m.group("n")) for m in _ANY_NUMBER.finditer(text))
    return {v for v in values if v is not None}


_MONTH = "|".join(sorted(MONTHS, key=len, reverse=True))
_WEEKDAY = "|".join(WEEKDAYS)
_RELATIVE = "|".join(r.replace(" ", r"\s+") for r in RELATIVE_DATES)
_ORDINAL = r"(?:st|nd|rd|th)?"
_DATE = re.compile(
    rf"\b(?P<iso>\d{{4}}-\d{{2}}-\d{{2}})\b"
    rf"|\b(?P<dm_day>\d{{1,2}}){_ORDINAL}\s+(?:of\s+)?(?P<dm_month>{_MONTH})\b\.?"
    rf"(?:,?\s+(?P<dm_year>\d{{4}})\b)?"
    rf"|\b(?P<md_month>{_MONTH})\.?\s+(?P<md_day>\d{{1,2}}){_ORDINAL}\b"
    rf"(?:,?\s+(?P<md_year>\d{{4}})\b)?"
    rf"|\b(?P<numeric>\d{{1,2}}/\d{{1,2}}/(?:\d{{4}}|\d{{2}}))\b"
    rf"|\b(?P<weekday>(?:(?:last|this|next|on)\s+)?(?:{_WEEKDAY}))\b"
    rf"|\b(?P<relative>{_RELATIVE})\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class FoundDate:
    """A date in a text: `said` as written (without a leading "on"), `key` what it means for
    comparison ("day:03-12", "weekday:monday", "relative:yesterday", "numeric:12/3/2025")."""

    said: str
    key: str


def _day_key(month: int, day: int) -> str | None:
    if not 1 <= month <= 12 or not 1 <= day <= 31:
        return None
    return f"day:{month:02d}-{day:02d}"


def date_keys(said: str) -> set[str]:
    """What a stored date means, for comparison; an ISO date also names its weekday."""
    keys = {d.key for d in find_dates(said)}
    try:
        day = date.fromisoformat(said)
    except ValueError:
        return keys
    return keys | {f"weekday:{WEEKDAYS[day.weekday()]}"}


def find_dates(text: str) -> list[FoundDate]:
    found: list[FoundDate] = []
    for m in _DATE.finditer(text):
        said = " ".join(m.group().split())
        key: str | None
        if m.group("iso"):
            try:
                day = date.fromisoformat(m.group("iso"))
            except ValueError:
                continue
            key = _day_key(day.month, day.day)
        elif m.group("dm_day"):
            key = _day_key(MONTHS[m.group("dm_month").lower()], int(m.group("dm_day")))
        elif m.group("md_day"):
            key = _day_key(MONTHS[m.group("md_month").lower()], int(m.group("md_day")))
        elif m.group("numeric"):
            parts = [int(p) for p in m.group("numeric").split("/")]
            key = "numeric:" + "/".join(str(p) for p in parts)
        elif m.group("weekday"):
            words = said.lower().split()
            if words[0] == "on":
                said = said.split(" ", 1)[1]
            key = f"weekday:{words[-1]}"
        else:
            key = f"relative:{said.lower()}"
            said = said.lower()
        if key is not None:
            found.append(FoundDate(said, key))
    return found


_NAME_TOKEN = r"[A-Z][\w&'\-]*(?:\.\w+)*"
_NAME = rf"{_NAME_TOKEN}(?:[ \t]+(?:{_NAME_TOKEN}|&))*"
_MERCHANT = re.compile(rf"\b(?i:at|from)\s+(?P<name>{_NAME})")
_RECIPIENT = re.compile(rf"\b(?i:to)\s+(?P<name>{_NAME})")
_SENDING = re.compile(r"\b(?:transfer\w*|sent|send|sending|wired?)\b", re.IGNORECASE)
_CARD_DIGITS = re.compile(
    r"\b(?:ending|ends)(?:\s+(?:in|with))?\s+(?P<a>\d{4})\b"
    r"|\blast\s+(?:four|4)(?:\s+digits)?(?:\s+(?:are|is|of))?\s+(?P<b>\d{4})\b",
    re.IGNORECASE,
)
_CARD_KIND = re.compile(rf"\b(?P<kind>{'|'.join(CARD_KINDS)})\s+card\b", re.IGNORECASE)


def _name(found: str) -> str | None:
    """The name in a capitalised run of words, cut at the first word that is not a name."""
    words: list[str] = []
    for word in found.split():
        word = word.removesuffix("'s")
        if word.lower() in NOT_NAMES:
            break
        words.append(word)
    while words and words[-1] == "&":
        words.pop()
    return clean_name(" ".join(words)) if words else None


def find_merchants(text: str) -> list[str]:
    """Capitalised names after "at" or "from", in order."""
    return [n for m in _MERCHANT.finditer(text) if (n := _name(m.group("name"))) is not None]


def find_recipients(text: str) -> list[str]:
    """Capitalised names after "to", in a text about sending money."""
    if not _SENDING.search(text):
        return []
    return [n for m in _RECIPIENT.finditer(text) if (n := _name(m.group("name"))) is not None]


def details_from_text(text: str) -> Details:
    """The details a customer's message states; the first of each kind wins. A recipient makes
    them a transfer's, a merchant a payment's; otherwise they are about no subject in
    particular."""
    text = redact(text)
    amounts = find_amounts(text)
    dates = find_dates(text)
    merchants = find_merchants(text)
    recipients = find_recipients(text)
    card: str | None = None
    if (digits := _CARD_DIGITS.search(text)) is not None:
        card = digits.group("a") or digits.group("b")
    elif (kind := _CARD_KIND.search(text)) is not None:
        card = kind.group("kind").lower()
    amount = amounts[0] if amounts else None
    about: Subject | None = "transfer" if recipients else "payment" if merchants else None
    return Details(
        about=about,
        merchant=merchants[0] if merchants else None,
        amount=clean_amount(amount.value) if amount else None,
        currency=amount.currency if amount else None,
        date=dates[0].said if dates else None,
        card=card,
        transfer=recipients[0] if recipients else None,
    )


# Reading behaviour events


def _first(props: Mapping[str, Any], keys: Iterable[str]) -> Any:
    return next((props[k] for k in keys if k in props), None)


def event_details(name: str, props: Mapping[str, Any], occurred_at: datetime | None) -> Details:
    """What one event states about its subject (empty for events not in EVENT_SUBJECTS)."""
    subject = EVENT_SUBJECTS.get(name)
    if subject is None:
        return EMPTY
    amount = clean_amount(props.get("amount"))
    card = clean_card(_first(props, CARD_KEYS))
    if card is None:
        kind = props.get("card_type")
        card = kind.lower() if isinstance(kind, str) and kind.lower() in CARD_KINDS else None
    details = Details(
        about=subject,
        merchant=clean_name(_first(props, MERCHANT_KEYS)) if subject != "transfer" else None,
        amount=amount,
        currency=clean_currency(props.get("currency")) if amount is not None else None,
        card=card,
        transfer=clean_name(_first(props, RECIPIENT_KEYS)) if subject == "transfer" else None,
    )
    if not details.known or occurred_at is None:
        return details
    when = occurred_at if occurred_at.tzinfo is not None else occurred_at.replace(tzinfo=UTC)
    return replace(details, date=when.astimezone(UTC).date().isoformat())


def _problem(name: str, props: Mapping[str, Any]) -> bool:
    status = props.get("status")
    return name in PROBLEM_EVENTS or (
        isinstance(status, str) and status.strip().lower() in PROBLEM_STATUSES
    )


def details_from_events(
    events: Iterable[EventLike], *, about: Subject | None = None, now: datetime | None = None
) -> Details:
    """The details of the one event in question: among recent events that state any (about
    `about` when given; for a card, any event that names one), one that went wrong before one
    that did not, then the newest. One event's details only: two events are never mixed."""
    best: tuple[bool, datetime] | None = None
    chosen = EMPTY
    for event in events:
        subject = EVENT_SUBJECTS.get(event.name)
        if subject is None or about not in (None, "card", subject):
            continue
        when = event.occurred_at
        when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
        if now is not None and not (timedelta(0) <= now - when <= EVENT_WINDOW):
            continue
        details = event_details(event.name, event.props, when)
        if not details.known or (about == "card" and details.card is None):
            continue
        rank = (_problem(event.name, event.props), when)
        if best is None or rank > best:
            best, chosen = rank, details
    return chosen


def _same(older: Any, newer: Any) -> bool:
    return older is None or newer is None or older == newer


def merge(older: Details, newer: Details) -> Details:
    """Newer values win and older ones fill the gaps, unless the two describe different
    things (another subject, merchant, amount, currency, card or recipient): then the newer
    details replace the older whole, so that no mix of two transactions is ever stated."""
    conflict = not all(
        _same(getattr(older, name), getattr(newer, name))
        for name in ("about", "merchant", "amount", "currency", "card", "transfer")
    )
    if conflict:
        return newer
    return Details(
        **{
            f.name: getattr(newer, f.name)
            if getattr(newer, f.name) is not None
            else getattr(older, f.name)
            for f in fields(Details)
        }
    )


def gather_details(
    text: str,
    events: Iterable[EventLike],
    *,
    about: Subject | None = None,
    now: datetime | None = None,
) -> Details:
    """The details of a turn: the event in question (`details_from_events`), then what the
    message says, which wins."""
    return merge(details_from_events(events, about=about, now=now), details_from_text(text))


# Saying them


def format_amount(amount: Decimal, currency: str | None) -> str:
    """ "€42.50", "£1,250.00", "42.50 CHF", or "42.50" when the currency is not known."""
    places = "{:,.0f}" if currency in ZERO_DECIMAL else "{:,.2f}"
    number = places.format(amount)
    if currency is None:
        return number
    sign = SIGN_FOR.get(currency)
    return f"{sign}{number}" if sign else f"{number} {currency}"


def format_date(said: str) -> str:
    """A date as a reply says it: "yesterday", "last Monday", "on Monday", "on 12 March"."""
    try:
        day = date.fromisoformat(said)
    except ValueError:
        pass
    else:
        return f"on {day.day} {MONTH_NAMES[day.month - 1]}"
    lowered = said.lower()
    if lowered in RELATIVE_DATES or lowered.split()[0] in ("last", "this", "next"):
        return said
    return f"on {said}"


def format_card(card: str) -> str:
    return f"your card ending {card}" if card.isdigit() else f"your {card} card"


# Details of one subject that bear on an answer about another: a refund is of a payment.
BEARS_ON: dict[Subject, frozenset[Subject]] = {"refund": frozenset({"payment"})}
# The fields a subject's phrase names.
SUBJECT_FIELDS: dict[Subject, frozenset[str]] = {
    "payment": frozenset({"merchant", "amount", "currency", "date", "card"}),
    "refund": frozenset({"merchant", "amount", "currency", "date", "card"}),
    "transfer": frozenset({"amount", "currency", "date", "transfer"}),
    "withdrawal": frozenset({"amount", "currency", "date", "card"}),
    "top_up": frozenset({"amount", "currency", "date", "card"}),
    "card": frozenset({"card"}),
}
NOUNS: dict[Subject, str] = {
    "payment": "payment",
    "refund": "refund",
    "transfer": "transfer",
    "withdrawal": "cash withdrawal",
    "top_up": "top-up",
    "card": "card",
}


def for_subject(details: Details, subject: Subject) -> Details:
    """The details that bear on an answer about `subject`: those of the same subject (or of
    none, or of one in BEARS_ON), limited to what the subject's phrase names. A card is the
    card whatever the details were about."""
    related = details.about in (None, subject) or details.about in BEARS_ON.get(subject, ())
    if subject != "card" and not related:
        return EMPTY
    keep = SUBJECT_FIELDS[subject]
    values = {f.name: getattr(details, f.name) for f in fields(Details) if f.name in keep}
    if "amount" in keep and values.get("amount") is None:
        values["currency"] = None
    return Details(about=subject, **values)


def modifiers(details: Details, subject: Subject, *, when: bool = True, card: bool = True) -> str:
    """What follows the subject's noun: " of €42.50 at FreshMart yesterday"."""
    parts: list[str] = []
    if details.amount is not None:
        parts.append(f"of {format_amount(details.amount, details.currency)}")
    if details.merchant is not None and subject in ("payment", "refund"):
        parts.append(f"{'from' if subject == 'refund' else 'at'} {details.merchant}")
    if details.transfer is not None and subject == "transfer":
        parts.append(f"to {details.transfer}")
    if when and details.date is not None:
        parts.append(format_date(details.date))
    if card and details.card is not None and subject != "card":
        parts.append(f"with {format_card(details.card)}")
    return "".join(f" {p}" for p in parts)


def describe(details: Details, subject: Subject) -> str | None:
    """The thing in question as a reply names it ("your payment of 42.50 at FreshMart"), or
    None when the details name nothing about `subject`."""
    own = for_subject(details, subject)
    if subject == "card":
        return format_card(own.card) if own.card is not None else None
    extra = modifiers(own, subject)
    return f"your {NOUNS[subject]}{extra}" if extra else None


def prompt_lines(details: Details) -> list[str]:
    """The details as prompt lines, each value as it may be written."""
    lines: list[str] = []
    if details.about is not None:
        lines.append(f"about: a {NOUNS[details.about]}")
    if details.merchant is not None:
        lines.append(f"merchant: {details.merchant}")
    if details.amount is not None:
        amount = format_amount(details.amount, details.currency)
        lines.append(
            f"amount: {amount}"
            if details.currency is not None
            else f"amount: {amount} (currency not known: write none)"
        )
    if details.date is not None:
        lines.append(f"date: {details.date}")
    if details.card is not None:
        lines.append(f"card: {format_card(details.card).removeprefix('your ')}")
    if details.transfer is not None:
        lines.append(f"transfer recipient: {details.transfer}")
    return lines


def subject_of(value: str | None) -> Subject | None:
    """`value` as a subject, or None when it is not one."""
    return value if value in SUBJECTS else None
