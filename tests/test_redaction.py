"""Redaction of emails, IBANs, card numbers and phone numbers."""

from __future__ import annotations

import pytest

from assistant.core.redaction import iban_valid, luhn_valid, redact

# emails


@pytest.mark.parametrize(
    "email",
    [
        "jane.doe@example.com",
        "jane.doe+cs@example.co.uk",
        "J_Doe-99%x@Mail.Example.ORG",
        "a@b.io",
    ],
)
def test_email(email: str) -> None:
    assert redact(f"write to {email} please") == "write to [EMAIL] please"
    assert redact(f"<{email}>") == "<[EMAIL]>"


def test_several_emails() -> None:
    assert redact("a@example.com, b@example.org") == "[EMAIL], [EMAIL]"


@pytest.mark.parametrize("text", ["user at example dot com", "@handle", "x@y", "name@"])
def test_not_an_email(text: str) -> None:
    assert redact(text) == text


# IBANs


@pytest.mark.parametrize(
    "iban",
    [
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "GB82 WEST 1234 5698 7654 32",
        "NL91ABNA0417164300",
        "FR14 2004 1010 0505 0001 3M02 606",
    ],
)
def test_valid_iban(iban: str) -> None:
    assert iban_valid(iban)
    assert redact(f"My IBAN is {iban}.") == "My IBAN is [IBAN]."
    assert redact(f"IBAN:{iban}") == "IBAN:[IBAN]"


@pytest.mark.parametrize(
    "iban",
    [
        "DE89370400440532013001",
        "GB83 WEST 1234 5698 7654 32",
        "GB82 WEST 1234 5698 7654 33",
        "NL91ABNA0417164301",
    ],
)
def test_iban_with_bad_checksum_is_kept(iban: str) -> None:
    assert not iban_valid(iban)
    assert redact(f"ref {iban} ok") == f"ref {iban} ok"


def test_iban_valid_length_bounds() -> None:
    assert not iban_valid("DE89")
    assert not iban_valid("NO938601111794")  # 14 characters: shorter than any IBAN allowed
    assert not iban_valid("DE89" + "0" * 31)


def test_lower_case_iban() -> None:
    assert redact("iban de89 3704 0044 0532 0130 00") == "iban [IBAN]"


# card numbers


@pytest.mark.parametrize(
    "card",
    [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5500 0000 0000 0004",
        "5555 5555 5555 4444",
        "3782 822463 10005",
        "378282246310005",
        "6011111111111117",
        "4012888888881881",
    ],
)
def test_luhn_valid_card(card: str) -> None:
    assert luhn_valid("".join(c for c in card if c.isdigit()))
    assert redact(f"card {card} exp") == "card [CARD] exp"
    assert redact(f"card:{card}.") == "card:[CARD]."


@pytest.mark.parametrize(
    "number",
    [
        "4111111111111112",
        "4111 1111 1111 1112",
        "4111-1111-1111-1112",
        "5555 5555 5555 4445",
        "3782 822463 10006",
        "378282246310006",
    ],
)
def test_luhn_invalid_number_is_kept(number: str) -> None:
    assert not luhn_valid("".join(c for c in number if c.isdigit()))
    assert redact(f"ref {number} ok") == f"ref {number} ok"


def test_several_cards() -> None:
    assert redact("4111 1111 1111 1111,4012888888881881") == "[CARD],[CARD]"


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert luhn_valid("0")


@pytest.mark.parametrize("tail", ["12/26", "123"])
def test_card_followed_by_digits(tail: str) -> None:
    assert redact(f"card 4111 1111 1111 1111 {tail}") == f"card [CARD] {tail}"


# phone numbers


@pytest.mark.parametrize(
    "phone",
    [
        "+44 20 7946 0958",
        "0044 20 7946 0958",
        "020 7946 0958",
        "+33 6 12 34 56 78",
        "06 12 34 56 78",
        "+49 (0) 30 1234567",
        "+1 (555) 123-4567",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "+14155550123",
    ],
)
def test_phone(phone: str) -> None:
    assert redact(f"call {phone} now") == "call [PHONE] now"


# no PII


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Hello, I need help with my order.",
        "order 12345 on 2024-05-01 costs 49.99",
        "Meeting at 10:30 on 12/05/2024",
        "version 1.2.3, ZIP 90210, room 1234567",
        "30 days, 2 items, 100%",
        "Ünïcödé text 😀 — ¿qué tal?",
        "tracking 1Z999AA10123456784",
        "[EMAIL] [IBAN] [CARD] [PHONE]",
    ],
)
def test_text_without_pii_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_mixed_text() -> None:
    text = (
        "I'm jane@example.com, card 4111-1111-1111-1111, "
        "IBAN GB82 WEST 1234 5698 7654 32, phone +44 20 7946 0958, order 48213."
    )
    assert redact(text) == ("I'm [EMAIL], card [CARD], IBAN [IBAN], phone [PHONE], order 48213.")


def test_redact_is_idempotent() -> None:
    text = "je@x.fr et +33 6 12 34 56 78, 4111 1111 1111 1111, DE89370400440532013000"
    once = redact(text)
    assert once == "[EMAIL] et [PHONE], [CARD], [IBAN]"
    assert redact(once) == once
