"""Redaction of card numbers, IBANs, emails and phone numbers before text is stored or logged."""

from __future__ import annotations

import re
from collections.abc import Callable

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b", re.IGNORECASE)
# Digits in groups separated by spaces, dashes or dots; the Luhn check decides.
_CARD = re.compile(r"(?<!\d)\d(?:[ .-]?\d){12,18}(?!\d)")
# International (+ or 00), national with a trunk 0, or ten-digit North American numbers (with
# or without their leading 1); dates and short amounts do not match.
_PHONE = re.compile(
    r"(?<![\w+])(?:(?:\+|00)\d(?:[ ().-]{0,2}\d){6,14}"
    r"|0\d(?:[ ().-]{0,2}\d){8,10}"
    r"|(?:1[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4})(?!\d)"
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    compact = candidate.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _redact_longest(found: str, valid: Callable[[str], bool], label: str, shortest: int) -> str:
    """Redact the longest valid prefix of `found` that ends at a group boundary.

    The patterns are greedy, so a card number followed by an expiry date or CVV, or an IBAN
    followed by a word, matches as one longer invalid candidate; the identifier is its prefix.
    """
    for end in range(len(found), shortest - 1, -1):
        if not found[end - 1].isalnum() or (end < len(found) and found[end].isalnum()):
            continue
        if valid(found[:end]):
            return label + found[end:]
    return found


def _card_valid(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _card(match: re.Match[str]) -> str:
    return _redact_longest(match.group(), _card_valid, "[CARD]", 13)


def _iban(match: re.Match[str]) -> str:
    return _redact_longest(match.group(), iban_valid, "[IBAN]", 15)


def redact(text: str) -> str:
    """The text with personal identifiers replaced by [EMAIL], [IBAN], [CARD] and [PHONE]."""
    text = _EMAIL.sub("[EMAIL]", text)
    text = _IBAN.sub(_iban, text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub("[PHONE]", text)
