"""The conversations of bench/conversations.py, built from a documented, seeded recipe.

Every Banking77 **test** utterance opens one conversation (in a seeded order); it is
followed by one or two held-out follow-ups that fit its intent (follow_ups.toml), then by a
topic switch (another test utterance, of another intent), and half the time by one follow-up
that fits the new intent. Nothing here reads Banking77 train. A conversation's draws come
from one generator in the order of the conversations, so `limit` N gives exactly the first N
conversations of the full run.
"""

from __future__ import annotations

import csv
import random
import tomllib
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FOLLOW_UP",
    "FOLLOW_UPS",
    "FOLLOW_UP_AFTER_SWITCH",
    "KINDS",
    "MIN_FITTING",
    "OPENING",
    "SWITCH",
    "Conversation",
    "FollowUp",
    "FollowUps",
    "Recipe",
    "Turn",
    "Utterance",
    "banking77_test",
    "banking77_test_path",
    "build",
    "load_follow_ups",
]

FOLLOW_UPS = Path(__file__).resolve().parent / "follow_ups.toml"

OPENING = "opening"
FOLLOW_UP = "follow_up"  # on the opening's intent
SWITCH = "switch"
FOLLOW_UP_AFTER_SWITCH = "follow_up_after_switch"  # on the switch's intent
KINDS = (OPENING, FOLLOW_UP, SWITCH, FOLLOW_UP_AFTER_SWITCH)

ANY = "any"
# Fewer phrasings than this for an intent and its conversations would repeat themselves.
MIN_FITTING = 8


@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    intent: str


@dataclass(frozen=True, slots=True)
class Turn:
    kind: str  # one of KINDS
    text: str
    topic: str  # the intent the reply should be grounded in


@dataclass(frozen=True, slots=True)
class Conversation:
    index: int
    turns: tuple[Turn, ...]


@dataclass(frozen=True, slots=True)
class FollowUp:
    text: str
    intents: frozenset[str]  # the intents it may follow


@dataclass(frozen=True, slots=True)
class FollowUps:
    families: Mapping[str, frozenset[str]]  # a partition of the intents
    phrasings: tuple[FollowUp, ...]

    def fitting(self, intent: str) -> tuple[FollowUp, ...]:
        return tuple(f for f in self.phrasings if intent in f.intents)

    def family(self, intent: str) -> str:
        return next(name for name, members in self.families.items() if intent in members)


@dataclass(frozen=True, slots=True)
class Recipe:
    seed: int = 0
    limit: int = 0  # the first N conversations; 0: one for every test utterance
    two_follow_ups_p: float = 0.5  # two follow-ups on the opening's topic instead of one
    after_switch_p: float = 0.5  # a follow-up on the new topic after the switch


def banking77_test_path(data: Path) -> Path:
    return data / "banking77" / "banking_data" / "test.csv"


def banking77_test(data: Path) -> list[Utterance]:
    """Banking77's official test split under the data folder `data`, in file order."""
    with banking77_test_path(data).open(newline="", encoding="utf-8") as f:
        return [Utterance(row["text"], row["category"]) for row in csv.DictReader(f)]


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: expected a list of strings")
    return list(value)


def load_follow_ups(intents: Collection[str], path: Path = FOLLOW_UPS) -> FollowUps:
    """The held-out phrasings, each resolved to the intents it fits. ValueError when a family
    or group names an unknown intent, the families do not split `intents` exactly, a phrasing
    names an unknown selector, or an intent has fewer than MIN_FITTING phrasings."""
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    known = frozenset(intents)
    sets: dict[str, frozenset[str]] = {}
    families: dict[str, frozenset[str]] = {}
    for table in ("families", "groups"):
        for name, members in raw[table].items():
            named = frozenset(_strings(members, f"{table}.{name}"))
            if unknown := named - known:
                raise ValueError(f"{table}.{name} names unknown intents {sorted(unknown)}")
            sets[name] = named
            if table == "families":
                families[name] = named
    counts = Counter(intent for members in families.values() for intent in members)
    if set(counts) != known or any(n != 1 for n in counts.values()):
        raise ValueError("the families do not split the intents: each belongs to exactly one")
    phrasings = []
    for entry in raw["follow_up"]:
        fits: set[str] = set()
        for selector in _strings(entry["fits"], repr(entry["text"])):
            if selector == ANY:
                fits |= known
            elif selector in sets:
                fits |= sets[selector]
            elif selector in known:
                fits.add(selector)
            else:
                raise ValueError(f"{entry['text']!r} fits unknown {selector!r}")
        phrasings.append(FollowUp(str(entry["text"]), frozenset(fits)))
    follow_ups = FollowUps(families, tuple(phrasings))
    for intent in sorted(known):
        if len(follow_ups.fitting(intent)) < MIN_FITTING:
            raise ValueError(f"{intent} has fewer than {MIN_FITTING} follow-ups that fit it")
    return follow_ups


def _follow_ups(
    rng: random.Random, follow_ups: FollowUps, intent: str, n: int, kind: str
) -> Iterable[Turn]:
    for f in rng.sample(follow_ups.fitting(intent), n):
        yield Turn(kind, f.text, intent)


def build(
    utterances: Sequence[Utterance], follow_ups: FollowUps, recipe: Recipe = Recipe()
) -> list[Conversation]:
    """The conversations, the same for the same inputs and recipe."""
    if len({u.intent for u in utterances}) < 2:
        raise ValueError("a topic switch needs utterances of at least two intents")
    rng = random.Random(recipe.seed)
    order = list(range(len(utterances)))
    rng.shuffle(order)
    if recipe.limit:
        order = order[: recipe.limit]
    conversations = []
    for index, i in enumerate(order):
        a = utterances[i]
        turns = [Turn(OPENING, a.text, a.intent)]
        n = 2 if rng.random() < recipe.two_follow_ups_p else 1
        turns += _follow_ups(rng, follow_ups, a.intent, n, FOLLOW_UP)
        b = utterances[rng.randrange(len(utterances))]
        while b.intent == a.intent:
            b = utterances[rng.randrange(len(utterances))]
        turns.append(Turn(SWITCH, b.text, b.intent))
        if rng.random() < recipe.after_switch_p:
            turns += _follow_ups(rng, follow_ups, b.intent, 1, FOLLOW_UP_AFTER_SWITCH)
        conversations.append(Conversation(index, tuple(turns)))
    return conversations
