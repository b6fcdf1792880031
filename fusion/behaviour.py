"""Behaviour events: the documented catalogue, featurisation to id arrays, and the encoder.

A client reports what the customer did as events `{name, at, props}`. The encoder sees each
event as three things:

- its **name**: a catalogue name gets its own id; any other name is hashed (BLAKE2b, stable
  across processes and machines, unlike Python's salted `hash()`) into one of
  `UNKNOWN_BUCKETS` ids, so a new client event is embedded, never dropped;
- its **key properties**: up to `MAX_PROPS` `key=value` tokens (the catalogue's key props for
  a known name; the alphabetically first keys for an unknown one), each hashed into
  `PROP_BUCKETS` ids; numbers become log2 magnitude buckets, so amounts generalise;
- its **age**: seconds between the event and `now`.

`BehaviourEncoder` turns a padded batch of such events into one vector per user: event
embeddings (name + properties + age bucket), then attention pooling whose scores carry a
learned power-law time decay per event name, `weight ~ (1 + age_hours) ** -rate[name]`, so
that a failed payment five minutes ago can outweigh a page view last month while an order
placed two weeks ago still counts. A GRU pooling is available by configuration.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import nn


@dataclass(frozen=True, slots=True)
class EventSpec:
    meaning: str
    key_props: tuple[str, ...] = ()


# The catalogue clients code against (docs/fusion.md lists it too). Key props are the ones the
# encoder embeds; other props are stored but not read by the model. Order fixes the ids: append
# new names at the end so shipped weights keep their meaning.
EVENT_CATALOGUE: dict[str, EventSpec] = {
    "page_view": EventSpec("a page or app screen was shown", ("page",)),
    "search": EventSpec("a search, reduced by the client to a topic", ("topic",)),
    "help_article_viewed": EventSpec("a help-centre article was opened", ("article",)),
    "product_view": EventSpec("a product or plan page was opened", ("product",)),
    "add_to_cart": EventSpec("a product was added to the cart", ("product",)),
    "checkout_started": EventSpec("checkout began", ("payment_method",)),
    "payment_failed": EventSpec("a checkout payment failed", ("reason", "payment_method")),
    "order_placed": EventSpec("an order was placed", ("payment_method",)),
    "order_cancelled": EventSpec("an order was cancelled", ("reason",)),
    "refund_requested": EventSpec("a refund was requested or changed state", ("status",)),
    "login": EventSpec("a successful sign-in", ("device",)),
    "login_failed": EventSpec("a failed sign-in", ("reason",)),
    "passcode_reset_started": EventSpec("the passcode reset flow began"),
    "transfer_sent": EventSpec("an outgoing transfer changed state", ("status", "scope")),
    "transfer_received": EventSpec("an incoming transfer changed state", ("status",)),
    "beneficiary_added": EventSpec("a payee was added or refused", ("status",)),
    "card_ordered": EventSpec("a card was ordered", ("card_type", "delivery")),
    "card_shipped": EventSpec("an ordered card left the warehouse", ("card_type",)),
    "card_activated": EventSpec("a card was activated", ("card_type",)),
    "card_payment": EventSpec(
        "a card payment changed state", ("status", "channel", "card_type", "currency")
    ),
    "card_frozen": EventSpec("a card was frozen", ("reason",)),
    "card_expiry_notice": EventSpec("the customer was told a card expires soon"),
    "card_link_started": EventSpec("linking an external card began", ("status",)),
    "wallet_linked": EventSpec("adding the card to a phone wallet", ("wallet", "status")),
    "pin_change_started": EventSpec("the PIN change flow began"),
    "pin_blocked": EventSpec("the PIN was blocked after wrong attempts"),
    "atm_withdrawal": EventSpec("a cash withdrawal changed state", ("status", "currency")),
    "atm_card_retained": EventSpec("an ATM kept the card"),
    "top_up": EventSpec("a top-up changed state", ("method", "status", "auto")),
    "exchange": EventSpec("a currency exchange changed state", ("status",)),
    "exchange_rate_viewed": EventSpec("exchange rates were shown", ("currency",)),
    "fee_charged": EventSpec("a fee was charged", ("fee_type",)),
    "direct_debit_collected": EventSpec("a direct debit was collected", ("mandate",)),
    "statement_viewed": EventSpec("the statement or transaction list was opened"),
    "balance_viewed": EventSpec("the balance was shown"),
    "identity_verification": EventSpec("an identity check changed state", ("status", "step")),
    "profile_edit_started": EventSpec("editing personal details began", ("field",)),
    "device_removed": EventSpec("a signed-in device was removed", ("reason",)),
    "account_closure_started": EventSpec("the account closure flow began"),
    "card_transaction_disputed": EventSpec("a transaction was flagged by the customer"),
    "app_error": EventSpec("the app showed an error", ("screen",)),
    "transfer_cancel_requested": EventSpec("cancelling a transfer was attempted", ("status",)),
    "card_ordered_spare": EventSpec("an additional card was requested", ("card_type",)),
}

KNOWN_NAMES: tuple[str, ...] = tuple(EVENT_CATALOGUE)
UNKNOWN_BUCKETS = 32
PROP_BUCKETS = 2048
MAX_PROPS = 4
PAD_ID = 0
# ids: 0 padding, 1..K catalogue names, K+1..K+UNKNOWN_BUCKETS hashed unknown names.
NAME_VOCAB = 1 + len(KNOWN_NAMES) + UNKNOWN_BUCKETS
_NAME_IDS = {name: i + 1 for i, name in enumerate(KNOWN_NAMES)}


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (Python's `hash()` is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def name_id(name: str) -> int:
    known = _NAME_IDS.get(name)
    if known is not None:
        return known
    return 1 + len(KNOWN_NAMES) + stable_hash(name) % UNKNOWN_BUCKETS


def _value_token(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number):
            return "num:nan"
        sign = "-" if number < 0 else ""
        return f"num:{sign}{int(math.log2(abs(number) + 1.0))}"
    if isinstance(value, str):
        return value.strip().lower()[:64]
    return f"<{type(value).__name__}>"


def prop_ids(name: str, props: Mapping[str, Any]) -> list[int]:
    spec = EVENT_CATALOGUE.get(name)
    keys = [k for k in spec.key_props if k in props] if spec else sorted(props)
    return [1 + stable_hash(f"{k}={_value_token(props[k])}") % (PROP_BUCKETS - 1) for k in keys][
        :MAX_PROPS
    ]


class EventLike(Protocol):
    """What the featuriser reads: the store's records and the simulator's events both fit."""

    @property
    def name(self) -> str: ...
    @property
    def occurred_at(self) -> datetime: ...
    @property
    def props(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    occurred_at: datetime
    props: Mapping[str, Any]


IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class BehaviourBatch:
    """Numpy id arrays, oldest event first, padding after the last event.

    One user: names [T], props [T, P], age_s [T], mask [T]; after `collate`: a leading [B].
    """

    names: IntArray
    props: IntArray
    age_s: npt.NDArray[np.float32]
    mask: npt.NDArray[np.bool_]

    def present(self) -> npt.NDArray[np.bool_]:
        """Whether each user has at least one event ([B] after collate)."""
        return np.asarray(self.mask.any(axis=-1))


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes for UTC columns; the rest of the code stores UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def featurize_events(
    events: Sequence[EventLike], now: datetime, max_events: int = 32
) -> BehaviourBatch:
    """The `max_events` most recent events before `now`, oldest first; future times count as 0."""
    if max_events < 1:
        raise ValueError("max_events must be at least 1")
    now = _aware(now)
    # Ties keep arrival order, so the result does not depend on how a sort breaks them.
    order = sorted(range(len(events)), key=lambda i: (_aware(events[i].occurred_at), i))
    dated = [(_aware(events[i].occurred_at), events[i]) for i in order[-max_events:]]
    n = len(dated)
    names = np.zeros(n, dtype=np.int64)
    props = np.zeros((n, MAX_PROPS), dtype=np.int64)
    age = np.zeros(n, dtype=np.float32)
    for t, (moment, event) in enumerate(dated):
        names[t] = name_id(event.name)
        ids = prop_ids(event.name, event.props)
        props[t, : len(ids)] = ids
        age[t] = max((now - moment).total_seconds(), 0.0)
    return BehaviourBatch(names, props, age, np.ones(n, dtype=np.bool_))


def collate(items: Sequence[BehaviourBatch], min_length: int = 1) -> BehaviourBatch:
    """Stack single users into [B, T] arrays padded to the longest history (at least 1)."""
    length = max([min_length, *(len(b.names) for b in items)])
    count = len(items)
    names = np.zeros((count, length), dtype=np.int64)
    props = np.zeros((count, length, MAX_PROPS), dtype=np.int64)
    age = np.zeros((count, length), dtype=np.float32)
    mask = np.zeros((count, length), dtype=np.bool_)
    for row, item in enumerate(items):
        n = len(item.names)
        names[row, :n] = item.names
        props[row, :n] = item.props
        age[row, :n] = item.age_s
        mask[row, :n] = item.mask
    return BehaviourBatch(names, props, age, mask)


@dataclass(frozen=True, slots=True)
class BehaviourTensors:
    names: torch.Tensor  # [B, T] long
    props: torch.Tensor  # [B, T, P] long
    age_s: torch.Tensor  # [B, T] float
    mask: torch.Tensor  # [B, T] bool

    @classmethod
    def from_batch(cls, batch: BehaviourBatch, device: torch.device) -> BehaviourTensors:
        return cls(
            torch.as_tensor(batch.names, device=device),
            torch.as_tensor(batch.props, device=device),
            torch.as_tensor(batch.age_s, device=device),
            torch.as_tensor(batch.mask, device=device),
        )

    def index(self, rows: torch.Tensor) -> BehaviourTensors:
        return BehaviourTensors(
            self.names[rows], self.props[rows], self.age_s[rows], self.mask[rows]
        )


@dataclass(frozen=True, slots=True)
class BehaviourEncoderConfig:
    pooling: str = "attention"  # "attention" | "gru"
    name_dim: int = 32
    prop_dim: int = 32
    age_buckets: int = 24
    event_dim: int = 64
    heads: int = 4
    out_dim: int = 128
    dropout: float = 0.1
    # Also embed each property together with its event's name (hashed pair), so that
    # "status=pending" of a top-up and of a transfer are told apart before the event MLP.
    name_prop_pairs: bool = False


def age_hours(age_s: torch.Tensor) -> torch.Tensor:
    return age_s.clamp(min=0.0) / 3600.0


class BehaviourEncoder(nn.Module):
    """Padded event ids -> one vector per user; rows with no events come out as zeros."""

    def __init__(self, config: BehaviourEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or BehaviourEncoderConfig()
        if cfg.pooling not in ("attention", "gru"):
            raise ValueError(f"unknown pooling {cfg.pooling!r}")
        if cfg.event_dim % cfg.heads:
            raise ValueError("event_dim must be divisible by heads")
        self.name_emb = nn.Embedding(NAME_VOCAB, cfg.name_dim, padding_idx=PAD_ID)
        self.prop_emb = nn.Embedding(PROP_BUCKETS, cfg.prop_dim, padding_idx=PAD_ID)
        self.pair_emb = (
            nn.Embedding(PROP_BUCKETS, cfg.prop_dim, padding_idx=PAD_ID)
            if cfg.name_prop_pairs
            else None
        )
        self.age_emb = nn.Embedding(cfg.age_buckets, cfg.name_dim)
        self.event = nn.Sequential(
            nn.Linear(2 * cfg.name_dim + cfg.prop_dim, cfg.event_dim),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.event_dim, cfg.event_dim),
            nn.LayerNorm(cfg.event_dim),
        )
        # One decay exponent per event name and head: heads can specialise in recent or old events.
        self.decay = nn.Embedding(NAME_VOCAB, cfg.heads)
        nn.init.zeros_(self.decay.weight)
        self.score = nn.Linear(cfg.event_dim, cfg.heads)
        self.value = nn.Linear(cfg.event_dim, cfg.event_dim)
        self.gru = (
            nn.GRU(cfg.event_dim, cfg.event_dim, batch_first=True) if cfg.pooling == "gru" else None
        )
        self.out = nn.Sequential(nn.Linear(cfg.event_dim, cfg.out_dim), nn.LayerNorm(cfg.out_dim))

    def decay_rates(self, names: torch.Tensor) -> torch.Tensor:
        """Learned decay exponents, [..., heads], positive."""
        return nn.functional.softplus(self.decay(names))

    def embed_events(self, b: BehaviourTensors) -> torch.Tensor:
        cfg = self.config
        hours = age_hours(b.age_s)  # [B, T]
        # log2 buckets from under a minute to years.
        bucket = torch.log2(hours * 60.0 + 1.0).floor().long().clamp(0, cfg.age_buckets - 1)
        props = self.prop_emb(b.props).sum(dim=2)  # [B, T, prop_dim]
        if self.pair_emb is not None:
            # (name, property) pairs hashed into the table; padding properties stay padding.
            pair = (b.props * 1009 + b.names.unsqueeze(-1) * 7919) % (PROP_BUCKETS - 1) + 1
            pair = torch.where(b.props == PAD_ID, torch.zeros_like(pair), pair)
            props = props + self.pair_emb(pair).sum(dim=2)
        x = torch.cat([self.name_emb(b.names), self.age_emb(bucket), props], dim=-1)
        event: torch.Tensor = self.event(x)  # [B, T, E]
        return event

    def forward(self, b: BehaviourTensors) -> torch.Tensor:
        cfg = self.config
        batch, steps = b.names.shape
        x = self.embed_events(b)  # [B, T, E]
        mask = b.mask  # [B, T]
        # Power-law decay in attention-score space: log((1+h)^-r) = -r * log1p(h).
        log_decay = -self.decay_rates(b.names) * torch.log1p(age_hours(b.age_s)).unsqueeze(-1)
        if self.gru is not None:
            lengths = mask.sum(dim=1)  # [B]
            weighted = x * log_decay.mean(dim=-1, keepdim=True).exp()  # [B, T, E]
            outputs, _ = self.gru(weighted)  # [B, T, E]
            last = (lengths - 1).clamp(min=0)
            pooled = outputs[torch.arange(batch, device=x.device), last]  # [B, E]
        else:
            scores = self.score(x) + log_decay  # [B, T, H]
            scores = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
            has_any = mask.any(dim=1)  # [B]
            # A user without events would give softmax over all -inf (NaN); give them zeros.
            scores = torch.where(has_any[:, None, None], scores, torch.zeros_like(scores))
            attn = torch.softmax(scores, dim=1)  # [B, T, H]
            head_dim = cfg.event_dim // cfg.heads
            values = self.value(x).view(batch, steps, cfg.heads, head_dim)  # [B, T, H, E/H]
            pooled = (attn.unsqueeze(-1) * values).sum(dim=1).reshape(batch, cfg.event_dim)
        out = self.out(pooled)  # [B, out_dim]
        return torch.where(mask.any(dim=1, keepdim=True), out, torch.zeros_like(out))
