"""The guard on a chat model's reply: it may state an amount, a date or a merchant only when
the conversation already did. Pure functions and one small streaming filter, no I/O.

    grounds = Grounds.of(details=(known,), texts=(utterance, *window, *profile_lines))
    ungrounded("Your payment of £99.00 failed.", grounds)   # -> "amount"

What a reply states, as `assistant.replies.details` reads it: amounts with a currency or with
two decimals ("42.50"); dates ("yesterday", "on Monday", "12 March", ISO; "today" states
nothing); capitalised names after "at" or "from". What grounds them: the known details, the
customer's message and the conversation window, the profile summary the prompt holds (its
notes name the events' merchants and amounts) and the knowledge-base passages. An amount must
match a grounded value, and its currency a grounded currency for that value (a currency the
conversation never gave is invented too); a date must mean a grounded date; a merchant must
appear in the grounds' text.

`SentenceGate` lets a streamed reply through piece by piece while nothing in it can state a
detail, and holds a sentence from its first digit, currency sign, capital (after the first
word) or date word until the sentence ends and passes; so an invented detail is never sent
(the words of its sentence before it may have been).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from assistant.replies.details import (
    WEEKDAYS,
    Details,
    date_keys,
    find_amounts,
    find_dates,
    find_merchants,
    format_amount,
    numbers_in,
)

Kind = Literal["amount", "date", "merchant"]

# "today" in a reply is small talk ("how can I help today?"), not a claim about a transaction.
UNSTATED_DATES = frozenset({"relative:today"})


@dataclass(frozen=True, slots=True)
class Grounds:
    """What a reply may state: amounts as (value, currency or None), date keys, and the
    grounding text (lowercased) that merchants are looked up in."""

    amounts: frozenset[tuple[Decimal, str | None]]
    dates: frozenset[str]
    text: str

    @classmethod
    def of(cls, *, details: Iterable[Details] = (), texts: Iterable[str] = ()) -> Grounds:
        amounts: set[tuple[Decimal, str | None]] = set()
        dates: set[str] = set()
        corpus: list[str] = []
        for d in details:
            if d.amount is not None:
                amounts.add((d.amount, d.currency))
                corpus.append(format_amount(d.amount, d.currency))
            if d.date is not None:
                dates |= date_keys(d.date)
            corpus.extend(v for v in (d.merchant, d.transfer) if v is not None)
        for text in texts:
            amounts.update((a.value, a.currency) for a in find_amounts(text))
            amounts.update((value, None) for value in numbers_in(text))
            dates.update(d.key for d in find_dates(text))
            corpus.append(text)
        return cls(frozenset(amounts), frozenset(dates), "\n".join(corpus).lower())

    def has_amount(self, value: Decimal, currency: str | None) -> bool:
        if currency is not None:
            return (value, currency) in self.amounts
        return any(v == value for v, _ in self.amounts)


def ungrounded(text: str, grounds: Grounds) -> Kind | None:
    """The first kind of detail `text` states without grounds, or None."""
    if any(not grounds.has_amount(a.value, a.currency) for a in find_amounts(text, bare=True)):
        return "amount"
    if any(d.key not in grounds.dates for d in find_dates(text) if d.key not in UNSTATED_DATES):
        return "date"
    if any(name.lower() not in grounds.text for name in find_merchants(text)):
        return "merchant"
    return None


_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+|\n+")
# Words that may begin a stated date, written in any case.
DATE_WORDS = ("yesterday", "tomorrow", "tonight", "morning", "night", "week", *WEEKDAYS)
# What may begin a stated detail; a capital counts only after the sentence's first word.
_MAY_STATE = re.compile(r"\d|[£€$¥]|\b(?:" + "|".join(DATE_WORDS) + r")\b", re.IGNORECASE)
_CAPITAL = re.compile(r"[A-Z]")
_FIRST_WORD = re.compile(r"\s*\S*")
_LAST_WORD = re.compile(r"\S+$")


def _may_become_date_word(word: str) -> bool:
    lowered = word.lower()
    return any(w.startswith(lowered) for w in DATE_WORDS)


class SentenceGate:
    """Streams a reply through the guard: `feed` each piece and send what it returns, then
    `close` for the rest. From the first sentence that states an ungrounded detail on,
    `failure` says which kind and nothing more is returned; the sound text before it was."""

    def __init__(self, grounds: Grounds) -> None:
        self._grounds = grounds
        self._sent = ""  # the current sentence's text already let through
        self._held = ""
        self.failure: Kind | None = None

    def feed(self, piece: str) -> str:
        if self.failure is not None:
            return ""
        self._held += piece
        out: list[str] = []
        # A sentence may end where the text let through meets the held text ("paid." + " It").
        while (end := _SENTENCE_END.search(self._sent + self._held)) is not None:
            cut = end.end() - len(self._sent)
            if not self._sound(self._sent + self._held[:cut]):
                return "".join(out)
            out.append(self._held[:cut])
            self._held = self._held[cut:]
            self._sent = ""
        free = self._free()
        if free:
            out.append(self._held[:free])
            self._sent += self._held[:free]
            self._held = self._held[free:]
        return "".join(out)

    def close(self) -> str:
        """The held rest, if it is sound (also after the model failed mid-reply)."""
        rest, sentence = self._held, self._sent + self._held
        self._held = self._sent = ""
        if self.failure is not None or not self._sound(sentence):
            return ""
        return rest

    def _sound(self, sentence: str) -> bool:
        self.failure = ungrounded(sentence, self._grounds)
        if self.failure is not None:
            self._held = self._sent = ""
        return self.failure is None

    def _free(self) -> int:
        """How much of the held text may go now: not from what may begin a detail, nor a last
        word still being written that may become a date word ("yester")."""
        held = self._held
        first = _FIRST_WORD.match(held) if not self._sent.strip() else None
        skip = first.end() if first is not None else 0
        marks = [m.start() for m in (_MAY_STATE.search(held), _CAPITAL.search(held, skip)) if m]
        if marks:
            return min(marks)
        last = _LAST_WORD.search(held)
        if last is not None and _may_become_date_word(last.group()):
            return last.start()
        return len(held)
