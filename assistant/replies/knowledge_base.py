"""The assistant's knowledge base: one written answer per supported intent, loaded and checked.

Answers live as TOML files in `assistant/replies/knowledge/` (shipped with the package). Each
`[[answer]]` table holds:

- `id`: a stable identifier (`kb-...`), unique across files;
- `intent`: the intent it answers (a Banking77 label or one of `CONVERSATION_INTENTS`);
- `title`: a short noun phrase ("card delivery"), used in clarifying questions;
- `answer`: the reply text; its first sentence stands alone, because a brief reply keeps
  only that sentence;
- `facts`: the facts the answer rests on, for prompts and step-by-step replies;
- `follow_ups`: questions the assistant may ask next;
- `questions`: how customers phrase it, embedded for retrieval with the answer;
- `offer_human` (optional, default false): the topic is urgent or sensitive enough that the
  reply always offers a person;
- `voice_answer` (optional): the answer as a phone call says it, where the chat wording would
  not fit a call ("reply here", "this chat"); calls use `answer` without it;
- `about` (optional): the one thing the answer is about (`payment`, `refund`, `transfer`,
  `withdrawal`, `top_up` or `card`, as `assistant.replies.details` names them), so that the
  reply names its known details ("your payment of 42.50 at FreshMart"); how-to answers have
  none.

`load_knowledge_base` validates every field and, by default, that every supported intent has
exactly one answer, so a missing answer fails at start-up and in tests, not in a conversation.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant.replies.details import SUBJECTS, Subject, subject_of

KNOWLEDGE_DIR = Path(__file__).resolve().parent / "knowledge"

# The 77 Banking77 intents, spelled as the data set spells them (two quirks included:
# "Refund_not_showing_up" and "reverted_card_payment?"), in the data set's order.
BANKING77_INTENTS: tuple[str, ...] = (
    "card_arrival",
    "card_linking",
    "exchange_rate",
    "card_payment_wrong_exchange_rate",
    "extra_charge_on_statement",
    "pending_cash_withdrawal",
    "fiat_currency_support",
    "card_delivery_estimate",
    "automatic_top_up",
    "card_not_working",
    "exchange_via_app",
    "lost_or_stolen_card",
    "age_limit",
    "pin_blocked",
    "contactless_not_working",
    "top_up_by_bank_transfer_charge",
    "pending_top_up",
    "cancel_transfer",
    "top_up_limits",
    "wrong_amount_of_cash_received",
    "card_payment_fee_charged",
    "transfer_not_received_by_recipient",
    "supported_cards_and_currencies",
    "getting_virtual_card",
    "card_acceptance",
    "top_up_reverted",
    "balance_not_updated_after_cheque_or_cash_deposit",
    "card_payment_not_recognised",
    "edit_personal_details",
    "why_verify_identity",
    "unable_to_verify_identity",
    "get_physical_card",
    "visa_or_mastercard",
    "topping_up_by_card",
    "disposable_card_limits",
    "compromised_card",
    "atm_support",
    "direct_debit_payment_not_recognised",
    "passcode_forgotten",
    "declined_cash_withdrawal",
    "pending_card_payment",
    "lost_or_stolen_phone",
    "request_refund",
    "declined_transfer",
    "Refund_not_showing_up",
    "declined_card_payment",
    "pending_transfer",
    "terminate_account",
    "card_swallowed",
    "transaction_charged_twice",
    "verify_source_of_funds",
    "transfer_timing",
    "reverted_card_payment?",
    "change_pin",
    "beneficiary_not_allowed",
    "transfer_fee_charged",
    "receiving_money",
    "failed_transfer",
    "transfer_into_account",
    "verify_top_up",
    "getting_spare_card",
    "top_up_by_cash_or_cheque",
    "order_physical_card",
    "virtual_card_not_working",
    "wrong_exchange_rate_for_cash_withdrawal",
    "get_disposable_virtual_card",
    "top_up_failed",
    "balance_not_updated_after_bank_transfer",
    "cash_withdrawal_not_recognised",
    "exchange_charge",
    "top_up_by_card_charge",
    "activate_my_card",
    "cash_withdrawal_charge",
    "card_about_to_expire",
    "apple_pay_or_google_pay",
    "verify_my_identity",
    "country_support",
)

GREETING = "greeting"
THANKS = "thanks"
GOODBYE = "goodbye"
OUT_OF_SCOPE = "out_of_scope"
HANDOFF = "handoff"
# Turns that are not a banking question but still need an answer of the project's own.
CONVERSATION_INTENTS: tuple[str, ...] = (GREETING, THANKS, GOODBYE, OUT_OF_SCOPE, HANDOFF)
# Small talk is recognised by retrieval alone: the intent model only knows Banking77 + oos.
SMALL_TALK_INTENTS: frozenset[str] = frozenset({GREETING, THANKS, GOODBYE})
SUPPORTED_INTENTS: tuple[str, ...] = BANKING77_INTENTS + CONVERSATION_INTENTS
# Labels an intent model may use for "none of the supported intents".
OUT_OF_SCOPE_LABELS: frozenset[str] = frozenset({OUT_OF_SCOPE, "oos", "out-of-scope"})


class KnowledgeBaseError(ValueError):
    """A knowledge-base file is malformed or the answers do not cover the supported intents."""


@dataclass(frozen=True, slots=True)
class KnowledgeEntry:
    id: str
    intent: str
    title: str
    answer: str
    facts: tuple[str, ...]
    follow_ups: tuple[str, ...]
    questions: tuple[str, ...]
    offer_human: bool = False
    voice_answer: str | None = None
    about: Subject | None = None  # what the answer is about, whose details a reply names
    source: str = ""  # file name, for error messages

    def answer_on(self, channel: str) -> str:
        """The answer as `channel` (chat or voice) says it."""
        if channel == "voice" and self.voice_answer is not None:
            return self.voice_answer
        return self.answer

    def retrieval_texts(self) -> tuple[str, ...]:
        """What gets embedded for this entry: how customers ask, the title, and the answer."""
        return (*self.questions, self.title, self.answer)


class KnowledgeBase:
    """Entries by id and by intent; iteration follows file order, so it is deterministic."""

    def __init__(self, entries: Iterable[KnowledgeEntry]) -> None:
        self.entries: tuple[KnowledgeEntry, ...] = tuple(entries)
        self._by_id = {e.id: e for e in self.entries}
        self._by_intent = {e.intent: e for e in self.entries}
        self._position = {e.intent: i for i, e in enumerate(self.entries)}
        if len(self._by_id) != len(self.entries):
            raise KnowledgeBaseError("entry ids must be unique")
        if len(self._by_intent) != len(self.entries):
            raise KnowledgeBaseError("each intent must have exactly one entry")

    def __iter__(self) -> Iterator[KnowledgeEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def intents(self) -> frozenset[str]:
        return frozenset(self._by_intent)

    def get(self, entry_id: str) -> KnowledgeEntry | None:
        return self._by_id.get(entry_id)

    def for_intent(self, intent: str | None) -> KnowledgeEntry | None:
        """The entry answering `intent`; any out-of-scope label maps to the out-of-scope entry."""
        if intent is None:
            return None
        if intent in OUT_OF_SCOPE_LABELS:
            intent = OUT_OF_SCOPE
        return self._by_intent.get(intent)

    def position_for_intent(self, intent: str | None) -> int | None:
        """Where `for_intent`'s entry stands in file order."""
        entry = self.for_intent(intent)
        return None if entry is None else self._position[entry.intent]

    def missing(self, required: Iterable[str] = SUPPORTED_INTENTS) -> list[str]:
        return [intent for intent in required if intent not in self._by_intent]


_REQUIRED = ("id", "intent", "title", "answer", "facts", "follow_ups", "questions")
_OPTIONAL = ("offer_human", "voice_answer", "about")


def _text(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise KnowledgeBaseError(f"{where}: '{key}' must be a non-empty string")
    return " ".join(value.split())  # TOML multi-line strings: one paragraph, single spaces


def _texts(raw: Mapping[str, Any], key: str, where: str, *, at_least: int) -> tuple[str, ...]:
    value = raw.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise KnowledgeBaseError(f"{where}: '{key}' must be a list of non-empty strings")
    if len(value) < at_least:
        raise KnowledgeBaseError(f"{where}: '{key}' needs at least {at_least} item(s)")
    return tuple(" ".join(v.split()) for v in value)


def parse_entry(raw: Mapping[str, Any], source: str) -> KnowledgeEntry:
    """One `[[answer]]` table as an entry, or a KnowledgeBaseError naming the file and field."""
    where = f"{source}: answer {raw.get('id', '?')!r}"
    unknown = set(raw) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise KnowledgeBaseError(f"{where}: unknown field(s) {sorted(unknown)}")
    offer_human = raw.get("offer_human", False)
    if not isinstance(offer_human, bool):
        raise KnowledgeBaseError(f"{where}: 'offer_human' must be true or false")
    about = raw.get("about")
    if about is not None and subject_of(about) is None:
        raise KnowledgeBaseError(f"{where}: 'about' must be one of {', '.join(SUBJECTS)}")
    entry = KnowledgeEntry(
        id=_text(raw, "id", where),
        intent=_text(raw, "intent", where),
        title=_text(raw, "title", where),
        answer=_text(raw, "answer", where),
        facts=_texts(raw, "facts", where, at_least=1),
        follow_ups=_texts(raw, "follow_ups", where, at_least=0),
        questions=_texts(raw, "questions", where, at_least=1),
        offer_human=offer_human,
        voice_answer=_text(raw, "voice_answer", where) if "voice_answer" in raw else None,
        about=subject_of(about),
        source=source,
    )
    if not entry.id.startswith("kb-"):
        raise KnowledgeBaseError(f"{where}: ids start with 'kb-'")
    if any(not q.endswith("?") for q in entry.follow_ups):
        raise KnowledgeBaseError(f"{where}: follow-ups must be questions ending with '?'")
    return entry


def parse_file(text: str, source: str) -> list[KnowledgeEntry]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KnowledgeBaseError(f"{source}: not valid TOML: {exc}") from None
    answers = document.get("answer")
    if set(document) != {"answer"} or not isinstance(answers, list):
        raise KnowledgeBaseError(f"{source}: expected only [[answer]] tables")
    return [parse_entry(raw, source) for raw in answers]


def load_knowledge_base(
    directory: Path = KNOWLEDGE_DIR, *, required: Sequence[str] | None = SUPPORTED_INTENTS
) -> KnowledgeBase:
    """Every `*.toml` file in `directory`, validated; `required` intents must all be answered."""
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise KnowledgeBaseError(f"no knowledge files in {directory}")
    entries: list[KnowledgeEntry] = []
    for path in files:
        entries.extend(parse_file(path.read_text(encoding="utf-8"), path.name))
    seen_ids: dict[str, str] = {}
    seen_intents: dict[str, str] = {}
    for entry in entries:
        for seen, key in ((seen_ids, entry.id), (seen_intents, entry.intent)):
            if key in seen:
                raise KnowledgeBaseError(f"{key!r} appears in both {seen[key]} and {entry.source}")
            seen[key] = entry.source
    kb = KnowledgeBase(entries)
    if required is not None:
        missing = kb.missing(required)
        if missing:
            raise KnowledgeBaseError(f"no answer for intent(s): {', '.join(missing)}")
        extra = sorted(kb.intents - set(required))
        if extra:
            raise KnowledgeBaseError(f"answers for unknown intent(s): {', '.join(extra)}")
    return kb
