"""bench/conversations.py's conversations: seeded, built from Banking77 test alone, around
follow-ups that stay held out; and what its figures count as a turn answered in topic.

The benchmark itself starts two servers and takes minutes even for a few conversations, so
it is not run here.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from assistant.replies.knowledge_base import BANKING77_INTENTS

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "bench"))

from conversations_bench.client import Outcome  # noqa: E402
from conversations_bench.figures import ambiguity, server_figures  # noqa: E402
from conversations_bench.script import (  # noqa: E402
    FOLLOW_UP,
    FOLLOW_UP_AFTER_SWITCH,
    FOLLOW_UPS,
    OPENING,
    SWITCH,
    Conversation,
    Recipe,
    banking77_test,
    banking77_test_path,
    build,
    load_follow_ups,
)

# Where a development set, a training script or a tuned threshold would live.
SOURCES = ("assistant", "fusion", "profiles", "tests", "scripts", "bench", "migrations")
TEXT_FILES = (".py", ".toml", ".json", ".jsonl", ".csv", ".txt", ".md", ".yaml", ".yml")
QUOTED = re.compile(r'"([^"\\\n]+)"')  # the project writes its strings in double quotes


def _data_dir() -> Path | None:
    value = os.environ.get("ASSISTANT_DATA_DIR")
    candidates = [Path(value)] if value else []
    candidates.append(ROOT.parent / "shared" / "data")
    return next((p for p in candidates if banking77_test_path(p).is_file()), None)


needs_data = pytest.mark.skipif(
    _data_dir() is None, reason="needs ASSISTANT_DATA_DIR (the shared data sets)"
)


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w' ]+", " ", text.lower()).split())


@pytest.fixture(scope="module")
def test_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder that holds Banking77's test split and nothing else."""
    data = _data_dir()
    assert data is not None
    folder = tmp_path_factory.mktemp("data")
    banking77_test_path(folder).parent.mkdir(parents=True)
    banking77_test_path(folder).symlink_to(banking77_test_path(data))
    return folder


def test_the_follow_ups_cover_every_intent() -> None:
    follow_ups = load_follow_ups(BANKING77_INTENTS)
    assert len(follow_ups.phrasings) >= 40
    assert len({_normal(f.text) for f in follow_ups.phrasings}) == len(follow_ups.phrasings)
    for intent in BANKING77_INTENTS:
        assert follow_ups.family(intent) in follow_ups.families
    # Some are written for one family of intents, not all generic.
    assert any(len(f.intents) < len(BANKING77_INTENTS) // 2 for f in follow_ups.phrasings)


def test_the_follow_ups_are_not_in_the_project_sources() -> None:
    """Held out: no development set, test or script holds one of them, nor a string of four
    words or more that one of them merely extends."""
    phrasings = [f" {_normal(f.text)} " for f in load_follow_ups(BANKING77_INTENTS).phrasings]
    here = Path(__file__).resolve()
    found: list[tuple[str, ...]] = []
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in TEXT_FILES or path in (here, FOLLOW_UPS) or not path.is_file():
                continue
            raw = path.read_text(encoding="utf-8", errors="replace")
            text = f" {_normal(raw)} "
            strings = {f" {_normal(s)} " for s in QUOTED.findall(raw)}
            strings = {s for s in strings if len(s.split()) >= 4}
            where = str(path.relative_to(ROOT))
            found += [(where, p) for p in phrasings if p in text]
            found += [(where, p, s) for p in phrasings for s in strings if s in p]
    assert not found


@needs_data
def test_the_follow_ups_are_no_banking77_utterance() -> None:
    data = _data_dir()
    assert data is not None
    texts = set()
    for split in ("train.csv", "test.csv"):
        with (banking77_test_path(data).parent / split).open(newline="", encoding="utf-8") as f:
            texts |= {_normal(row["text"]) for row in csv.DictReader(f)}
    assert not [
        f.text for f in load_follow_ups(BANKING77_INTENTS).phrasings if _normal(f.text) in texts
    ]


@needs_data
def test_conversations_are_seeded(test_only: Path) -> None:
    utterances = banking77_test(test_only)
    follow_ups = load_follow_ups(BANKING77_INTENTS)
    first = build(utterances, follow_ups, Recipe(seed=3))
    assert build(utterances, follow_ups, Recipe(seed=3)) == first
    assert build(utterances, follow_ups, Recipe(seed=4)) != first
    # A quick run is the full run's beginning.
    assert build(utterances, follow_ups, Recipe(seed=3, limit=25)) == first[:25]


@needs_data
def test_conversations_use_the_test_split_alone(test_only: Path) -> None:
    """Built from a folder with nothing but test.csv: every opening and switch is one of its
    rows, every test utterance opens exactly one conversation, and the rest are follow-ups
    that fit the topic."""
    utterances = banking77_test(test_only)
    rows = Counter((u.text, u.intent) for u in utterances)
    follow_ups = load_follow_ups(BANKING77_INTENTS)
    conversations: list[Conversation] = build(utterances, follow_ups, Recipe(seed=0))
    assert [c.index for c in conversations] == list(range(len(utterances)))
    openings = Counter((c.turns[0].text, c.turns[0].topic) for c in conversations)
    assert openings == rows
    for c in conversations:
        kinds = [t.kind for t in c.turns]
        assert kinds[0] == OPENING and kinds.count(SWITCH) == 1
        switch = kinds.index(SWITCH)
        assert kinds[1:switch] in ([FOLLOW_UP], [FOLLOW_UP, FOLLOW_UP])
        assert kinds[switch + 1 :] in ([], [FOLLOW_UP_AFTER_SWITCH])
        opening, switched = c.turns[0], c.turns[switch]
        assert (switched.text, switched.topic) in rows
        assert switched.topic != opening.topic
        for turn in c.turns[1:switch]:
            assert turn.topic == opening.topic
        for turn in c.turns:
            if turn.kind in (FOLLOW_UP, FOLLOW_UP_AFTER_SWITCH):
                assert turn.text in {f.text for f in follow_ups.fitting(turn.topic)}
    assert len({len(c.turns) for c in conversations}) == 3  # 3, 4 and 5 turns all occur


def _outcome(
    kind: str, topic: str, label: str, *, turn: str | None = None, handoff: bool = False
) -> Outcome:
    suggestions = 2 if turn == "clarification" else 0
    return Outcome(kind, topic, label, handoff, turn, suggestions)


def test_a_follow_up_counts_when_the_bot_answers_it_in_topic() -> None:
    follow_ups = load_follow_ups(BANKING77_INTENTS)
    a, b = "declined_card_payment", "change_pin"
    conversation = [
        _outcome(OPENING, a, a, turn="new_topic"),
        _outcome(FOLLOW_UP, a, a, turn="follow_up"),  # answered in topic
        _outcome(FOLLOW_UP, a, a, turn="clarification"),  # asked instead
        _outcome(SWITCH, b, b, turn="new_topic", handoff=True),  # recognised, though handed off
        _outcome(FOLLOW_UP_AFTER_SWITCH, b, b, turn="follow_up", handoff=True),  # a person's
    ]
    figures = server_figures([conversation], follow_ups)
    assert (figures.follow_ups_in_topic.hits, figures.follow_ups_in_topic.total) == (1, 3)
    assert figures.switches_recognised.hits == 1
    assert figures.asked[FOLLOW_UP] == 1
    assert figures.handoffs[SWITCH] == figures.handoffs[FOLLOW_UP_AFTER_SWITCH] == 1
    assert figures.conversations_handed_off == 1
    assert figures.follow_ups_by_family[follow_ups.family(a)].total == 2
    assert figures.readings[FOLLOW_UP] == {"follow_up": 1, "clarification": 1}


def test_ambiguous_openings_are_those_the_baseline_answers_wrongly() -> None:
    a, b, c = "card_arrival", "card_delivery_estimate", "exchange_rate"
    baseline = [[_outcome(OPENING, a, b)], [_outcome(OPENING, c, c)], [_outcome(OPENING, a, c)]]
    dialogue = [
        [_outcome(OPENING, a, b, turn="clarification")],
        [_outcome(OPENING, c, c, turn="new_topic")],
        [_outcome(OPENING, a, a, turn="new_topic")],
    ]
    amb = ambiguity(dialogue, baseline)
    assert (amb.ambiguous_asked.hits, amb.ambiguous_asked.total) == (1, 2)
    assert (amb.ambiguous_right.hits, amb.ambiguous_wrong.hits) == (1, 0)
    assert (amb.clear_asked.hits, amb.clear_asked.total) == (0, 1)
    with pytest.raises(ValueError):
        ambiguity(dialogue, baseline[1:] + baseline[:1])
