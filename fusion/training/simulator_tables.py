"""The simulator's frozen tables (`fusion.training.simulator` draws sessions from them): the
emotions of the fusion model and how a RAVDESS clip's service emotion reads among them, the
ambiguous intent groups, the intents that signal a problem and their emotion priors, each
intent's signature steps, generic background activity and the emotion cues.

Changing any of them changes the benchmark, so the shipped fusion weights and every
simulated figure would need retraining (docs/fusion.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AMBIGUOUS_GROUPS",
    "BACKGROUND",
    "DAY",
    "EMOTIONS",
    "EMOTION_CUES",
    "EMOTION_PRIOR",
    "INTENT_PATTERNS",
    "PROBLEM_INTENTS",
    "SERVICE_TO_EMOTION",
    "Step",
]

# The fusion model's emotions: five of the service emotions (`fusion.heads.labels`), the set
# its weights (fusion/weights/fusion.pt) were trained on.
EMOTIONS: tuple[str, ...] = ("neutral", "satisfied", "sad", "angry", "anxious")

# Service emotions as the fusion model's five read them: frustrated, the outcome-directed
# anger, reads as angry; confused has no counterpart and no session draws it. A RAVDESS clip's
# emotion is its service emotion (`fusion.heads.labels.RAVDESS_TO_SERVICE`, the heads' mapping)
# read through this table: disgust (frustrated) counts as angry, surprised (confused) is unused.
SERVICE_TO_EMOTION: dict[str, str] = {
    "neutral": "neutral",
    "satisfied": "satisfied",
    "sad": "sad",
    "angry": "angry",
    "frustrated": "angry",
    "anxious": "anxious",
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


DAY = 24.0  # hours
_DAYS = (1.0, 3 * DAY)

# What a customer with each intent typically did before writing. Several intents share
# events and differ only in a property or an age, as real histories do.
INTENT_PATTERNS: dict[str, tuple[Step, ...]] = {
    "activate_my_card": (
        _s("card_shipped", (2 * DAY, 8 * DAY), card_type="physical"),
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
        _s("card_expiry_notice", (DAY, 20 * DAY)),
        _s("page_view", page="card_renewal"),
    ),
    "card_acceptance": (
        _s("search", topic="merchant_acceptance"),
        _s("help_article_viewed", article="where_accepted"),
    ),
    "card_arrival": (
        _s("card_ordered", (8 * DAY, 21 * DAY), card_type="physical", delivery="standard"),
        _s("page_view", page="card_tracking"),
    ),
    "card_delivery_estimate": (
        _s("card_ordered", (0.05, 24.0), card_type="physical", delivery="standard"),
        _s("page_view", page="delivery_options"),
    ),
    "card_linking": (_s("card_link_started", status="started"), _s("page_view", page="link_card")),
    "card_not_working": (
        _s("card_payment", status="declined", channel="chip", card_type="physical"),
        _s("card_activated", (DAY, 60 * DAY), card_type="physical"),
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
        _s("card_ordered", (DAY, 30 * DAY), card_type="disposable", delivery="instant"),
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
        _s("card_activated", (5 * DAY, 90 * DAY), card_type="virtual"),
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
        _s("refund_requested", (3 * DAY, 14 * DAY), status="approved"),
        _s("balance_viewed"),
    ),
    "request_refund": (
        _s("order_placed", (DAY, 10 * DAY), payment_method="card"),
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
        _s("transfer_sent", (2 * DAY, 7 * DAY), status="completed", scope="international"),
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
        _s("identity_verification", (1.0, 5 * DAY), status="requested", step="source_of_funds"),
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
