"""Behaviour events: catalogue, featurisation (unknown names, stability, ordering) and encoder."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import torch

from fusion.behaviour import (
    EVENT_CATALOGUE,
    KNOWN_NAMES,
    MAX_PROPS,
    NAME_VOCAB,
    UNKNOWN_BUCKETS,
    BehaviourEncoder,
    BehaviourEncoderConfig,
    BehaviourTensors,
    Event,
    collate,
    featurize_events,
    name_id,
    prop_ids,
)

NOW = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)
ISSUE_NAMES = (
    "page_view",
    "search",
    "product_view",
    "add_to_cart",
    "checkout_started",
    "payment_failed",
    "order_placed",
    "order_cancelled",
    "refund_requested",
    "login_failed",
    "transfer_sent",
    "card_ordered",
)


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def test_catalogue_is_documented_and_covers_the_issue_list() -> None:
    for name in ISSUE_NAMES:
        assert name in EVENT_CATALOGUE
    for name, spec in EVENT_CATALOGUE.items():
        assert spec.meaning.strip(), name
        assert len(spec.key_props) <= MAX_PROPS, name
    ids = [name_id(n) for n in KNOWN_NAMES]
    assert ids == list(range(1, len(KNOWN_NAMES) + 1))


def test_unknown_names_are_hashed_into_buckets_not_dropped() -> None:
    events = [
        Event("page_view", ago(minutes=5), {"page": "home"}),
        Event("brand_new_widget_event", ago(minutes=3), {"colour": "red", "n": 3}),
        Event("another.unknown/event", ago(minutes=1), {}),
    ]
    batch = featurize_events(events, NOW)
    assert batch.names.shape == (3,)
    assert batch.mask.all()
    first_unknown = len(KNOWN_NAMES) + 1
    for unknown in batch.names[1:]:
        assert first_unknown <= unknown < first_unknown + UNKNOWN_BUCKETS
    assert (batch.props[1, :2] > 0).all(), "an unknown event's props are embedded too"
    assert batch.names.max() < NAME_VOCAB


def test_hashing_is_stable_across_processes() -> None:
    names = ["brand_new_widget_event", "x", "checkout_v2_started"]
    script = (
        "from fusion.behaviour import name_id, prop_ids\n"
        f"print([name_id(n) for n in {names!r}], prop_ids('weird', {{'a': 'B', 'n': 12.5}}))"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
        )
        outputs.add(run.stdout.strip())
    here = f"{[name_id(n) for n in names]} {prop_ids('weird', {'a': 'B', 'n': 12.5})}"
    assert outputs == {here}


def test_prop_values_are_normalised() -> None:
    assert prop_ids("page_view", {"page": "Home "}) == prop_ids("page_view", {"page": "home"})
    # Amounts of the same magnitude share a bucket; others do not.
    same = prop_ids("weird", {"amount": 100}) == prop_ids("weird", {"amount": 120.0})
    assert same
    assert prop_ids("weird", {"amount": 100}) != prop_ids("weird", {"amount": 5000})
    # Only key props of a catalogue event are read.
    assert prop_ids("page_view", {"page": "home", "referrer": "x"}) == prop_ids(
        "page_view", {"page": "home"}
    )
    assert len(prop_ids("weird", {str(i): i for i in range(10)})) == MAX_PROPS


def test_empty_history() -> None:
    batch = featurize_events([], NOW)
    assert batch.names.shape == (0,) and batch.props.shape == (0, MAX_PROPS)
    stacked = collate([batch, featurize_events([Event("login", ago(hours=1), {})], NOW)])
    assert stacked.names.shape == (2, 1)
    assert stacked.present().tolist() == [False, True]
    enc = BehaviourEncoder().eval()
    out = enc(BehaviourTensors.from_batch(stacked, torch.device("cpu")))
    assert out.shape == (2, BehaviourEncoderConfig().out_dim)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all() and (out[1] != 0).any()


def test_ordering_age_and_truncation() -> None:
    events = [
        Event("search", ago(hours=2), {"topic": "atm"}),
        Event("login", ago(days=3), {}),
        Event("page_view", ago(minutes=10), {"page": "help"}),
        Event("balance_viewed", NOW + timedelta(minutes=5), {}),  # client clock ahead
    ]
    batch = featurize_events(events, NOW)
    assert batch.names.tolist() == [
        name_id("login"),
        name_id("search"),
        name_id("page_view"),
        name_id("balance_viewed"),
    ]
    np.testing.assert_allclose(batch.age_s, [3 * 86400, 7200, 600, 0])
    recent = featurize_events(events, NOW, max_events=2)
    assert recent.names.tolist() == [name_id("page_view"), name_id("balance_viewed")]
    naive = [Event("login", (NOW - timedelta(hours=1)).replace(tzinfo=None), {})]
    assert featurize_events(naive, NOW).age_s.tolist() == [3600.0]
    with pytest.raises(ValueError):
        featurize_events(events, NOW, max_events=0)


@pytest.mark.parametrize(
    ("pooling", "pairs"), [("attention", False), ("gru", False), ("attention", True)]
)
def test_encoder_ignores_padding(pooling: str, pairs: bool) -> None:
    torch.manual_seed(0)
    enc = BehaviourEncoder(BehaviourEncoderConfig(pooling=pooling, name_prop_pairs=pairs)).eval()
    history = featurize_events(
        [
            Event("card_payment", ago(hours=3), {"status": "declined"}),
            Event("login", ago(hours=1), {}),
        ],
        NOW,
    )
    longer = featurize_events([Event(f"e{i}", ago(hours=i + 1), {}) for i in range(6)], NOW)
    alone = enc(BehaviourTensors.from_batch(collate([history]), torch.device("cpu")))
    padded = enc(BehaviourTensors.from_batch(collate([history, longer]), torch.device("cpu")))
    torch.testing.assert_close(alone[0], padded[0])


def test_decay_rates_are_positive_and_learnable() -> None:
    enc = BehaviourEncoder()
    rates = enc.decay_rates(torch.arange(NAME_VOCAB))
    assert (rates > 0).all()
    assert enc.decay.weight.requires_grad


def test_name_property_pairs_tell_events_apart() -> None:
    """The same property on two event names embeds differently with pairs on."""
    torch.manual_seed(0)
    enc = BehaviourEncoder(BehaviourEncoderConfig(name_prop_pairs=True)).eval()
    one = featurize_events([Event("top_up", ago(hours=2), {"status": "pending"})], NOW)
    other = featurize_events([Event("transfer_sent", ago(hours=2), {"status": "pending"})], NOW)
    batch = BehaviourTensors.from_batch(collate([one, other]), torch.device("cpu"))
    assert batch.props[0, 0, 0] == batch.props[1, 0, 0]  # the same key=value token
    assert enc.pair_emb is not None
    events = enc.embed_events(batch)  # [2, 1, E]
    assert not torch.allclose(events[0], events[1])
    plain = BehaviourEncoder(BehaviourEncoderConfig(name_prop_pairs=False)).eval()
    assert plain.pair_emb is None
