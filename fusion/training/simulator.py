"""A seeded, documented simulator of multimodal service sessions (every figure from it: simulated).

No public data set pairs behaviour logs with service intents, so the benchmark is built here.
docs/fusion.md describes it for readers; this docstring is the reference.

Each session draws:

1. **An intent** (one of the 77 Banking77 labels). With probability `ambiguous_share` it comes
   from `AMBIGUOUS_GROUPS` (a group uniformly, then an intent of the group uniformly) and the
   session is flagged *ambiguous*; otherwise it comes uniformly from the intents outside every
   group. So "ambiguous" means exactly: the intent belongs to a group that a text-only
   classifier confuses. The groups were measured once, before any fusion result existed, from
   out-of-fold predictions of logistic regression (C=10) on MiniLM embeddings of Banking77
   train (5 folds): pairs whose symmetric confusion `C[i,j] + C[j,i]` reaches 3% were merged,
   strongest first, into groups of at most 4 (`measure_confusion_groups`), then frozen here.
2. **An emotion** from `EMOTIONS`, with a prior that depends on the intent: intents in
   `PROBLEM_INTENTS` (something failed, was lost or is wrong) lean angry/anxious, the others
   lean neutral/satisfied (`EMOTION_PRIOR`).
3. **Text**: a Banking77 *train* utterance of the intent, from the session's fold's share of
   the utterances (utterances are dealt to folds per intent, so no utterance is in two folds).
4. **Speech**: with probability `speech_absent_p` none; otherwise a RAVDESS clip of the
   session's emotion, from the actors assigned to the session's fold (actors are dealt to
   folds by gender, so no actor's voice is in two folds). Speech carries emotion, not intent.
   RAVDESS labels map to service emotions by `RAVDESS_TO_EMOTION`; "surprised" has no
   service counterpart and is not used.
5. **Behaviour**: with probability `behaviour_absent_p` no events (a user the widget never
   saw); otherwise
   - the intent's signature steps (`INTENT_PATTERNS`), each kept with probability
     `signature_keep_p`, at an age drawn log-uniformly from the step's range, each key
     property replaced with probability `prop_noise_p` by a value that property takes
     elsewhere in the catalogue of patterns;
   - `background_events` generic events (browsing, searches, logins, shopping) from the last
     30 days;
   - with probability `foreign_step_p`, one signature step of a random other intent, and for
     ambiguous sessions, with probability `group_foreign_p`, one signature step of another
     intent of the same group (a hard distractor);
   - an emotion cue with probability `emotion_cue_p` (angry: a burst of repeated help/contact
     page views in the last minutes; anxious: security page and balance checks within the
     hour), and a random cue in any session with probability `cue_noise_p`.

Sessions are assigned to folds round-robin (`index % n_folds`); each fold draws its text and
speech only from its own utterances and actors, so cross-validation over folds never shows a
test utterance or a test actor's voice in training. Everything is a function of
`SimulatorConfig` (seed included): the same config gives the same sessions, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from fusion.behaviour import Event

EMOTIONS: tuple[str, ...] = ("neutral", "satisfied", "sad", "angry", "anxious")
RAVDESS_TO_EMOTION: dict[str, str] = {
    "neutral": "neutral",
    "calm": "neutral",
    "happy": "satisfied",
    "sad": "sad",
    "angry": "angry",
    "disgust": "angry",
    "fearful": "anxious",
}

# Frozen output of `measure_confusion_groups` (see the module docstring); docs/fusion.md lists
# the measured confusion rates.
AMBIGUOUS_GROUPS: tuple[tuple[str, ...], ...] = (
    ("pending_top_up", "top_up_failed", "top_up_reverted", "topping_up_by_card"),
    ("card_arrival", "card_delivery_estimate", "contactless_not_working", "order_physical_card"),
    ("beneficiary_not_allowed", "declined_transfer", "failed_transfer"),
    (
        "card_payment_not_recognised",
        "compromised_card",
        "direct_debit_payment_not_recognised",
        "lost_or_stolen_card",
    ),
    ("card_payment_wrong_exchange_rate", "wrong_exchange_rate_for_cash_withdrawal"),
    (
        "balance_not_updated_after_bank_transfer",
        "pending_transfer",
        "transfer_not_received_by_recipient",
        "transfer_timing",
    ),
    ("unable_to_verify_identity", "verify_my_identity", "why_verify_identity"),
    (
        "card_payment_fee_charged",
        "extra_charge_on_statement",
        "top_up_by_bank_transfer_charge",
        "transfer_fee_charged",
    ),
    ("exchange_via_app", "fiat_currency_support", "supported_cards_and_currencies"),
    ("card_not_working", "declined_card_payment", "pending_card_payment", "reverted_card_payment?"),
    (
        "disposable_card_limits",
        "get_disposable_virtual_card",
        "getting_virtual_card",
        "virtual_card_not_working",
    ),
    ("change_pin", "get_physical_card", "pin_blocked"),
    ("Refund_not_showing_up", "request_refund"),
    ("card_acceptance", "country_support"),
)

PROBLEM_INTENTS: frozenset[str] = frozenset(
    {
        "Refund_not_showing_up",
        "balance_not_updated_after_bank_transfer",
        "balance_not_updated_after_cheque_or_cash_deposit",
        "beneficiary_not_allowed",
        "card_arrival",
        "card_not_working",
        "card_payment_fee_charged",
        "card_payment_not_recognised",
        "card_payment_wrong_exchange_rate",
        "card_swallowed",
        "cash_withdrawal_charge",
        "cash_withdrawal_not_recognised",
        "compromised_card",
        "contactless_not_working",
        "declined_card_payment",
        "declined_cash_withdrawal",
        "declined_transfer",
        "direct_debit_payment_not_recognised",
        "extra_charge_on_statement",
        "failed_transfer",
        "lost_or_stolen_card",
        "lost_or_stolen_phone",
        "passcode_forgotten",
        "pending_card_payment",
        "pending_cash_withdrawal",
        "pending_top_up",
        "pending_transfer",
        "pin_blocked",
        "reverted_card_payment?",
        "top_up_failed",
        "top_up_reverted",
        "transaction_charged_twice",
        "transfer_fee_charged",
        "transfer_not_received_by_recipient",
        "unable_to_verify_identity",
        "virtual_card_not_working",
        "wrong_amount_of_cash_received",
        "wrong_exchange_rate_for_cash_withdrawal",
    }
)

# P(emotion | intent is a problem), P(emotion | routine intent), in EMOTIONS order.
EMOTION_PRIOR: dict[bool, tuple[float, ...]] = {
    True: (0.25, 0.05, 0.15, 0.35, 0.20),
    False: (0.45, 0.25, 0.10, 0.10, 0.10),
}


@dataclass(frozen=True, slots=True)
class Step:
    """One signature event: name, key props, and the age range (hours) it happens in."""

    name: str
    props: Mapping[str, Any] = field(default_factory=dict)
    hours: tuple[float, float] = (0.02, 2.0)


def _s(name: str, hours: tuple[float, float] = (0.02, 2.0), **props: Any) -> Step:
    return Step(name, props, hours)


_DAY = 24.0
_RECENT = (0.02, 2.0)
_DAYS = (1.0, 3 * _DAY)

# What a customer with each intent typically did before writing. Several intents share
# events and differ only in a property or an age, as real histories do.
INTENT_PATTERNS: dict[str, tuple[Step, ...]] = {
    "activate_my_card": (
        _s("card_shipped", (2 * _DAY, 8 * _DAY), card_type="physical"),
        _s("page_view", page="card_activation"),
    ),
    "age_limit": (_s("help_article_viewed", article="eligibility"), _s("search", topic="age")),
    "apple_pay_or_google_pay": (
        _s("wallet_linked", wallet="apple_pay", status="started"),
        _s("page_view", page="wallets"),
    ),
    "atm_support": (_s("help_article_viewed", article="atm"), _s("search", topic="atm")),
    "automatic_top_up": (
        _s("page_view", page="auto_top_up"),
        _s("top_up", _DAYS, method="card", status="completed", auto=True),
    ),
    "balance_not_updated_after_bank_transfer": (
        _s("top_up", (1.0, 72.0), method="bank_transfer", status="pending"),
        _s("balance_viewed"),
    ),
    "balance_not_updated_after_cheque_or_cash_deposit": (
        _s("top_up", (1.0, 72.0), method="cash", status="pending"),
        _s("balance_viewed"),
    ),
    "beneficiary_not_allowed": (
        _s("beneficiary_added", status="rejected"),
        _s("transfer_sent", status="declined", scope="international"),
    ),
    "cancel_transfer": (
        _s("transfer_sent", (0.01, 0.5), status="pending", scope="domestic"),
        _s("transfer_cancel_requested", status="started"),
    ),
    "card_about_to_expire": (
        _s("card_expiry_notice", (_DAY, 20 * _DAY)),
        _s("page_view", page="card_renewal"),
    ),
    "card_acceptance": (
        _s("search", topic="merchant_acceptance"),
        _s("help_article_viewed", article="where_accepted"),
    ),
    "card_arrival": (
        _s("card_ordered", (8 * _DAY, 21 * _DAY), card_type="physical", delivery="standard"),
        _s("page_view", page="card_tracking"),
    ),
    "card_delivery_estimate": (
        _s("card_ordered", (0.05, 24.0), card_type="physical", delivery="standard"),
        _s("page_view", page="delivery_options"),
    ),
    "card_linking": (_s("card_link_started", status="started"), _s("page_view", page="link_card")),
    "card_not_working": (
        _s("card_payment", status="declined", channel="chip", card_type="physical"),
        _s("card_activated", (_DAY, 60 * _DAY), card_type="physical"),
    ),
    "card_payment_fee_charged": (
        _s("card_payment", _DAYS, status="completed", channel="online", currency="home"),
        _s("fee_charged", (1.0, 48.0), fee_type="card_payment"),
    ),
    "card_payment_not_recognised": (
        _s("card_payment", _DAYS, status="completed", channel="online", currency="home"),
        _s("statement_viewed"),
        _s("card_transaction_disputed"),
    ),
    "card_payment_wrong_exchange_rate": (
        _s("card_payment", _DAYS, status="completed", channel="chip", currency="foreign"),
        _s("exchange_rate_viewed", currency="foreign"),
    ),
    "card_swallowed": (
        _s("atm_card_retained"),
        _s("atm_withdrawal", status="declined", currency="home"),
    ),
    "cash_withdrawal_charge": (
        _s("atm_withdrawal", _DAYS, status="completed", currency="home"),
        _s("fee_charged", (1.0, 48.0), fee_type="atm"),
    ),
    "cash_withdrawal_not_recognised": (
        _s("atm_withdrawal", _DAYS, status="completed", currency="foreign"),
        _s("statement_viewed"),
        _s("card_transaction_disputed"),
    ),
    "change_pin": (_s("pin_change_started"), _s("page_view", page="pin_settings")),
    "compromised_card": (
        _s("card_frozen", reason="compromised"),
        _s("page_view", page="security"),
    ),
    "contactless_not_working": (
        _s("card_payment", status="declined", channel="contactless", card_type="physical"),
    ),
    "country_support": (
        _s("page_view", page="supported_countries"),
        _s("search", topic="country"),
    ),
    "declined_card_payment": (
        _s("card_payment", status="declined", channel="online", card_type="physical"),
        _s("payment_failed", reason="card_declined", payment_method="card"),
    ),
    "declined_cash_withdrawal": (
        _s("atm_withdrawal", status="declined", currency="home"),
        _s("atm_withdrawal", status="declined", currency="home"),
    ),
    "declined_transfer": (_s("transfer_sent", status="declined", scope="domestic"),),
    "direct_debit_payment_not_recognised": (
        _s("direct_debit_collected", _DAYS, mandate="unknown"),
        _s("statement_viewed"),
    ),
    "disposable_card_limits": (
        _s("page_view", page="disposable_cards"),
        _s("card_ordered", (_DAY, 30 * _DAY), card_type="disposable", delivery="instant"),
    ),
    "edit_personal_details": (
        _s("profile_edit_started", field="address"),
        _s("page_view", page="personal_details"),
    ),
    "exchange_charge": (
        _s("exchange", _DAYS, status="completed"),
        _s("fee_charged", (1.0, 48.0), fee_type="exchange"),
    ),
    "exchange_rate": (_s("exchange_rate_viewed", currency="any"), _s("page_view", page="exchange")),
    "exchange_via_app": (_s("page_view", page="exchange"), _s("exchange", status="started")),
    "extra_charge_on_statement": (
        _s("statement_viewed"),
        _s("fee_charged", _DAYS, fee_type="unknown"),
    ),
    "failed_transfer": (_s("transfer_sent", status="failed", scope="international"),),
    "fiat_currency_support": (
        _s("page_view", page="supported_currencies"),
        _s("search", topic="currency"),
    ),
    "get_disposable_virtual_card": (
        _s("page_view", page="disposable_cards"),
        _s("search", topic="virtual_card"),
    ),
    "get_physical_card": (
        _s("page_view", page="order_card"),
        _s("card_activated", (5 * _DAY, 90 * _DAY), card_type="virtual"),
    ),
    "getting_spare_card": (
        _s("page_view", page="additional_cards"),
        _s("card_ordered_spare", card_type="physical"),
    ),
    "getting_virtual_card": (
        _s("page_view", page="virtual_cards"),
        _s("search", topic="virtual_card"),
    ),
    "lost_or_stolen_card": (
        _s("card_frozen", reason="lost"),
        _s("page_view", page="card_settings"),
    ),
    "lost_or_stolen_phone": (
        _s("login", device="new"),
        _s("device_removed", reason="lost"),
    ),
    "order_physical_card": (
        _s("page_view", page="order_card"),
        _s("checkout_started", payment_method="card_fee"),
    ),
    "passcode_forgotten": (
        _s("login_failed", reason="wrong_passcode"),
        _s("passcode_reset_started"),
    ),
    "pending_card_payment": (
        _s("card_payment", (1.0, 72.0), status="pending", channel="online", currency="home"),
    ),
    "pending_cash_withdrawal": (_s("atm_withdrawal", (1.0, 72.0), status="pending"),),
    "pending_top_up": (_s("top_up", (1.0, 48.0), method="card", status="pending"),),
    "pending_transfer": (
        _s("transfer_sent", (1.0, 72.0), status="pending", scope="international"),
    ),
    "pin_blocked": (
        _s("pin_blocked"),
        _s("atm_withdrawal", status="declined", currency="home"),
    ),
    "receiving_money": (
        _s("page_view", page="account_details"),
        _s("search", topic="receive_money"),
    ),
    "Refund_not_showing_up": (
        _s("refund_requested", (3 * _DAY, 14 * _DAY), status="approved"),
        _s("balance_viewed"),
    ),
    "request_refund": (
        _s("order_placed", (_DAY, 10 * _DAY), payment_method="card"),
        _s("page_view", page="refunds"),
    ),
    "reverted_card_payment?": (
        _s("card_payment", (1.0, 72.0), status="reverted", channel="online", currency="home"),
    ),
    "supported_cards_and_currencies": (
        _s("page_view", page="supported_currencies"),
        _s("search", topic="card_types"),
    ),
    "terminate_account": (_s("account_closure_started"), _s("page_view", page="close_account")),
    "top_up_by_bank_transfer_charge": (
        _s("top_up", _DAYS, method="bank_transfer", status="completed"),
        _s("fee_charged", (1.0, 48.0), fee_type="top_up_transfer"),
    ),
    "top_up_by_card_charge": (
        _s("top_up", _DAYS, method="card", status="completed"),
        _s("fee_charged", (1.0, 48.0), fee_type="top_up_card"),
    ),
    "top_up_by_cash_or_cheque": (
        _s("page_view", page="top_up_methods"),
        _s("search", topic="cash_deposit"),
    ),
    "top_up_failed": (_s("top_up", method="card", status="failed"),),
    "top_up_limits": (
        _s("top_up", method="card", status="declined"),
        _s("page_view", page="limits"),
    ),
    "top_up_reverted": (_s("top_up", (1.0, 72.0), method="card", status="reverted"),),
    "topping_up_by_card": (
        _s("page_view", page="top_up"),
        _s("top_up", method="card", status="started"),
    ),
    "transaction_charged_twice": (
        _s("card_payment", _DAYS, status="completed", channel="online", currency="home"),
        _s("card_payment", _DAYS, status="completed", channel="online", currency="home"),
        _s("statement_viewed"),
    ),
    "transfer_fee_charged": (
        _s("transfer_sent", _DAYS, status="completed", scope="international"),
        _s("fee_charged", (1.0, 48.0), fee_type="transfer"),
    ),
    "transfer_into_account": (
        _s("page_view", page="account_details"),
        _s("top_up", method="bank_transfer", status="started"),
    ),
    "transfer_not_received_by_recipient": (
        _s("transfer_sent", (2 * _DAY, 7 * _DAY), status="completed", scope="international"),
        _s("page_view", page="transfer_details"),
    ),
    "transfer_timing": (
        _s("transfer_sent", (0.05, 12.0), status="completed", scope="international"),
        _s("help_article_viewed", article="transfer_times"),
    ),
    "unable_to_verify_identity": (
        _s("identity_verification", status="failed", step="document"),
        _s("identity_verification", status="failed", step="selfie"),
    ),
    "verify_my_identity": (_s("identity_verification", status="started", step="document"),),
    "verify_source_of_funds": (
        _s("identity_verification", (1.0, 5 * _DAY), status="requested", step="source_of_funds"),
    ),
    "verify_top_up": (_s("top_up", method="card", status="verification_required"),),
    "virtual_card_not_working": (
        _s("card_payment", status="declined", channel="online", card_type="virtual"),
    ),
    "visa_or_mastercard": (_s("page_view", page="card_types"), _s("search", topic="card_network")),
    "why_verify_identity": (
        _s("identity_verification", status="requested", step="document"),
        _s("help_article_viewed", article="why_verify"),
    ),
    "wrong_amount_of_cash_received": (_s("atm_withdrawal", status="partial", currency="home"),),
    "wrong_exchange_rate_for_cash_withdrawal": (
        _s("atm_withdrawal", _DAYS, status="completed", currency="foreign"),
        _s("exchange_rate_viewed", currency="foreign"),
    ),
}

# Generic activity of any customer, whatever they want today.
BACKGROUND: tuple[Step, ...] = (
    _s("page_view", page="home"),
    _s("page_view", page="cards"),
    _s("page_view", page="offers"),
    _s("page_view", page="help"),
    _s("login", device="known"),
    _s("balance_viewed"),
    _s("statement_viewed"),
    _s("search", topic="savings"),
    _s("search", topic="travel"),
    _s("product_view", product="premium_plan"),
    _s("product_view", product="savings_vault"),
    _s("add_to_cart", product="gift_card"),
    _s("checkout_started", payment_method="card"),
    _s("order_placed", payment_method="card"),
    _s("card_payment", status="completed", channel="contactless", currency="home"),
    _s("transfer_sent", status="completed", scope="domestic"),
    _s("top_up", method="card", status="completed"),
)

EMOTION_CUES: dict[str, tuple[tuple[Step, int, int], ...]] = {
    # (step, min repeats, max repeats), ages inside the step's range.
    "angry": (
        (_s("page_view", (0.002, 0.15), page="help"), 2, 4),
        (_s("page_view", (0.002, 0.15), page="contact"), 1, 2),
    ),
    "anxious": (
        (_s("page_view", (0.05, 1.0), page="security"), 1, 2),
        (_s("balance_viewed", (0.05, 1.0)), 2, 3),
    ),
}


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    seed: int = 77
    n_sessions: int = 10_000
    n_folds: int = 5
    ambiguous_share: float = 0.35
    speech_absent_p: float = 0.3
    behaviour_absent_p: float = 0.1
    signature_keep_p: float = 0.75
    prop_noise_p: float = 0.15
    background_events: tuple[int, int] = (2, 8)
    foreign_step_p: float = 0.3
    group_foreign_p: float = 0.3
    emotion_cue_p: float = 0.4
    cue_noise_p: float = 0.1
    groups: tuple[tuple[str, ...], ...] = AMBIGUOUS_GROUPS
    start: datetime = datetime(2024, 6, 3, 9, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Session:
    index: int
    fold: int
    intent: int  # index into the intents given to `simulate`
    emotion: int  # index into EMOTIONS
    ambiguous: bool
    text_index: int  # row of the utterance table
    speech_index: int  # row of the clip table, -1 when the session has no speech
    events: tuple[Event, ...]
    now: datetime


@dataclass(frozen=True, slots=True)
class Benchmark:
    config: SimulatorConfig
    intents: tuple[str, ...]
    sessions: tuple[Session, ...]
    utterance_fold: npt.NDArray[np.int64]  # [utterances] fold of each utterance
    actor_fold: dict[int, int]  # actor id -> fold

    def split(self, fold: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Session indices (train, test) for one cross-validation fold."""
        folds = np.array([s.fold for s in self.sessions])
        return np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)


def deal_utterances(
    labels: Sequence[int], n_folds: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Fold of each utterance: each intent's utterances shuffled and dealt round-robin."""
    labels_arr = np.asarray(labels, dtype=np.int64)
    fold = np.zeros(len(labels_arr), dtype=np.int64)
    for label in np.unique(labels_arr):
        rows = rng.permutation(np.flatnonzero(labels_arr == label))
        fold[rows] = np.arange(len(rows)) % n_folds
    return fold


def deal_actors(
    actors: Sequence[int], genders: Sequence[str], n_folds: int, rng: np.random.Generator
) -> dict[int, int]:
    """Fold of each actor, dealt per gender so every fold hears both."""
    by_actor = dict(zip(actors, genders, strict=True))
    out: dict[int, int] = {}
    offset = 0
    for gender in sorted(set(by_actor.values())):
        group = sorted(a for a, g in by_actor.items() if g == gender)
        for i, actor in enumerate(rng.permutation(group).tolist()):
            out[int(actor)] = (offset + i) % n_folds
        offset += len(group)
    return out


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _prop_values() -> dict[str, list[Any]]:
    values: dict[str, list[Any]] = {}
    for steps in (*INTENT_PATTERNS.values(), BACKGROUND):
        for step in steps:
            for key, value in step.props.items():
                if value not in values.setdefault(key, []):
                    values[key].append(value)
    return values


class _SessionMaker:
    def __init__(self, config: SimulatorConfig, intents: Sequence[str]) -> None:
        self.config = config
        self.intents = tuple(intents)
        self.index = {name: i for i, name in enumerate(self.intents)}
        self.group_of = {name: g for g in config.groups for name in g}
        self.plain = [i for i, name in enumerate(self.intents) if name not in self.group_of]
        self.prop_values = _prop_values()

    def intent(self, rng: np.random.Generator) -> tuple[int, bool]:
        if self.config.groups and rng.random() < self.config.ambiguous_share:
            group = self.config.groups[int(rng.integers(len(self.config.groups)))]
            return self.index[group[int(rng.integers(len(group)))]], True
        return int(self.plain[int(rng.integers(len(self.plain)))]), False

    def _event(self, step: Step, now: datetime, rng: np.random.Generator, noisy: bool) -> Event:
        props = dict(step.props)
        if noisy:
            for key in props:
                if rng.random() < self.config.prop_noise_p:
                    pool = self.prop_values[key]
                    props[key] = pool[int(rng.integers(len(pool)))]
        age_h = _log_uniform(rng, *step.hours)
        return Event(step.name, now - timedelta(hours=age_h), props)

    def _foreign(self, names: Sequence[str], rng: np.random.Generator) -> Step | None:
        steps = [s for name in names for s in INTENT_PATTERNS.get(name, ())]
        return steps[int(rng.integers(len(steps)))] if steps else None

    def events(
        self, intent: str, emotion: str, now: datetime, rng: np.random.Generator
    ) -> tuple[Event, ...]:
        cfg = self.config
        if rng.random() < cfg.behaviour_absent_p:
            return ()
        out: list[Event] = []
        for step in INTENT_PATTERNS.get(intent, ()):
            if rng.random() < cfg.signature_keep_p:
                out.append(self._event(step, now, rng, noisy=True))
        lo, hi = cfg.background_events
        for _ in range(int(rng.integers(lo, hi + 1))):
            step = BACKGROUND[int(rng.integers(len(BACKGROUND)))]
            out.append(self._event(Step(step.name, step.props, (0.1, 30 * _DAY)), now, rng, False))
        if rng.random() < cfg.foreign_step_p:
            others = [name for name in self.intents if name != intent]
            foreign = self._foreign([others[int(rng.integers(len(others)))]], rng)
            if foreign is not None:
                out.append(self._event(foreign, now, rng, noisy=True))
        group = self.group_of.get(intent)
        if group and rng.random() < cfg.group_foreign_p:
            foreign = self._foreign([name for name in group if name != intent], rng)
            if foreign is not None:
                out.append(self._event(foreign, now, rng, noisy=True))
        cue = emotion if rng.random() < cfg.emotion_cue_p else None
        if rng.random() < cfg.cue_noise_p:
            cue = sorted(EMOTION_CUES)[int(rng.integers(len(EMOTION_CUES)))]
        for step, low, high in EMOTION_CUES.get(cue or "", ()):
            for _ in range(int(rng.integers(low, high + 1))):
                out.append(self._event(step, now, rng, noisy=False))
        return tuple(sorted(out, key=lambda e: e.occurred_at))


def simulate(
    config: SimulatorConfig,
    intents: Sequence[str],
    utterance_labels: Sequence[int],
    clip_emotions: Sequence[str],
    clip_actors: Sequence[int],
    clip_genders: Sequence[str],
) -> Benchmark:
    """Draw `config.n_sessions` sessions over the given utterance and clip tables.

    `utterance_labels[i]` is the intent (index into `intents`) of utterance row i;
    `clip_emotions[j]` the RAVDESS label of clip row j, spoken by `clip_actors[j]`.
    """
    rng = np.random.default_rng(config.seed)
    maker = _SessionMaker(config, intents)
    utterance_fold = deal_utterances(utterance_labels, config.n_folds, rng)
    actor_fold = deal_actors(
        sorted(set(clip_actors)),
        [dict(zip(clip_actors, clip_genders, strict=True))[a] for a in sorted(set(clip_actors))],
        config.n_folds,
        rng,
    )
    labels = np.asarray(utterance_labels, dtype=np.int64)
    pools: dict[tuple[int, int], npt.NDArray[np.int64]] = {}
    for fold in range(config.n_folds):
        for label in range(len(intents)):
            pools[fold, label] = np.flatnonzero((utterance_fold == fold) & (labels == label))
    clip_fold = np.array([actor_fold[a] for a in clip_actors], dtype=np.int64)
    clip_emotion = np.array(
        [
            EMOTIONS.index(RAVDESS_TO_EMOTION[e]) if e in RAVDESS_TO_EMOTION else -1
            for e in clip_emotions
        ],
        dtype=np.int64,
    )
    sessions: list[Session] = []
    for index in range(config.n_sessions):
        fold = index % config.n_folds
        intent, ambiguous = maker.intent(rng)
        problem = intents[intent] in PROBLEM_INTENTS
        emotion = int(rng.choice(len(EMOTIONS), p=EMOTION_PRIOR[problem]))
        pool = pools[fold, intent]
        if len(pool) == 0:
            pool = np.flatnonzero(labels == intent)
        text_index = int(pool[int(rng.integers(len(pool)))])
        clips = np.flatnonzero((clip_fold == fold) & (clip_emotion == emotion))
        speech_index = -1
        if rng.random() >= config.speech_absent_p and len(clips):
            speech_index = int(clips[int(rng.integers(len(clips)))])
        now = config.start + timedelta(minutes=7 * index)
        events = maker.events(intents[intent], EMOTIONS[emotion], now, rng)
        sessions.append(
            Session(index, fold, intent, emotion, ambiguous, text_index, speech_index, events, now)
        )
    return Benchmark(config, tuple(intents), tuple(sessions), utterance_fold, actor_fold)


def measure_confusion_groups(
    true: Sequence[int],
    predicted: Sequence[int],
    intents: Sequence[str],
    threshold: float = 0.03,
    max_size: int = 4,
) -> list[tuple[tuple[str, ...], float]]:
    """Groups of intents a classifier confuses, strongest pair first, with the merging score.

    Row-normalised confusion C; pairs with C[i,j] + C[j,i] >= threshold are merged greedily
    (union-find) while the merged group stays within `max_size`.
    """
    n = len(intents)
    counts = np.zeros((n, n), dtype=np.float64)
    np.add.at(counts, (np.asarray(true), np.asarray(predicted)), 1.0)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    pair = rates + rates.T
    parent = list(range(n))
    size = [1] * n
    strength = [0.0] * n

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order = sorted(
        ((pair[i, j], i, j) for i in range(n) for j in range(i + 1, n) if pair[i, j] >= threshold),
        reverse=True,
    )
    for score, i, j in order:
        a, b = root(i), root(j)
        if a != b and size[a] + size[b] <= max_size:
            parent[b] = a
            size[a] += size[b]
            strength[a] = max(strength[a], strength[b], float(score))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    found = [
        (tuple(sorted(intents[i] for i in members)), strength[r])
        for r, members in groups.items()
        if len(members) > 1
    ]
    return sorted(found, key=lambda g: -g[1])
