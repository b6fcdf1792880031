"""The figures of bench/conversations.py, from what each server made of the same turns."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from conversations_bench.client import Outcome
from conversations_bench.script import (
    FOLLOW_UP,
    FOLLOW_UP_AFTER_SWITCH,
    KINDS,
    OPENING,
    SWITCH,
    FollowUps,
)

__all__ = [
    "TARGET_ASKED_PCT",
    "TARGET_FOLLOW_UPS_PCT",
    "TARGET_SWITCHES_PCT",
    "Ambiguity",
    "ServerFigures",
    "Share",
    "ambiguity",
    "server_figures",
]

TARGET_FOLLOW_UPS_PCT = 90.0  # follow-ups answered within the current topic, at least
TARGET_SWITCHES_PCT = 93.0  # topic switches recognised, at least
TARGET_ASKED_PCT = 3.0  # clarifying questions on single-intent first messages, at most

OUT_OF_SCOPE = "out_of_scope"
ABSENT = "absent"  # a reply without `turn`
FOLLOW_UPS = (FOLLOW_UP, FOLLOW_UP_AFTER_SWITCH)


@dataclass(frozen=True, slots=True)
class Share:
    hits: int
    total: int

    @classmethod
    def of(cls, outcomes: Iterable[Outcome], hit: Callable[[Outcome], bool]) -> Share:
        marks = [hit(o) for o in outcomes]
        return cls(sum(marks), len(marks))

    @property
    def pct(self) -> float:
        return 100.0 * self.hits / self.total if self.total else math.nan

    def __str__(self) -> str:
        if not self.total:
            return "- (0/0)"
        return f"{self.pct:6.2f}% ({self.hits}/{self.total})"

    def as_json(self) -> dict[str, Any]:
        pct = round(self.pct, 2) if self.total else None  # JSON has no NaN
        return {"hits": self.hits, "total": self.total, "pct": pct}


@dataclass(frozen=True, slots=True)
class ServerFigures:
    follow_ups_in_topic: Share
    follow_ups_before_switch: Share
    follow_ups_after_switch: Share
    follow_ups_out_of_scope: Share  # labelled out_of_scope: read alone, they ask nothing
    switches_recognised: Share
    openings_recognised: Share
    openings_asked: Share
    asked: Mapping[str, int]  # clarifying questions, by kind of turn
    handoffs: Mapping[str, int]  # replies with handoff, by kind of turn
    conversations_handed_off: int
    readings: Mapping[str, Mapping[str, int]]  # kind of turn -> reply.turn -> count
    follow_ups_by_family: Mapping[str, Share]  # of the topic's intent

    @property
    def turn_field_seen(self) -> bool:
        return any(r != ABSENT for counts in self.readings.values() for r in counts)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in fields(self):
            name, value = field.name, getattr(self, field.name)
            if isinstance(value, Share):
                out[name] = value.as_json()
            elif name == "follow_ups_by_family":
                out[name] = {k: v.as_json() for k, v in value.items()}
            elif name == "readings":
                out[name] = {k: dict(v) for k, v in value.items()}
            elif isinstance(value, Mapping):
                out[name] = dict(value)
            else:
                out[name] = value
        return out


def server_figures(
    conversations: Sequence[Sequence[Outcome]], follow_ups: FollowUps
) -> ServerFigures:
    turns = [o for conversation in conversations for o in conversation]
    by_kind = {kind: [o for o in turns if o.kind == kind] for kind in KINDS}
    follow = [o for o in turns if o.kind in FOLLOW_UPS]
    families: dict[str, list[Outcome]] = {name: [] for name in follow_ups.families}
    for o in follow:
        families[follow_ups.family(o.topic)].append(o)
    return ServerFigures(
        follow_ups_in_topic=Share.of(follow, lambda o: o.in_topic),
        follow_ups_before_switch=Share.of(by_kind[FOLLOW_UP], lambda o: o.in_topic),
        follow_ups_after_switch=Share.of(by_kind[FOLLOW_UP_AFTER_SWITCH], lambda o: o.in_topic),
        follow_ups_out_of_scope=Share.of(follow, lambda o: o.label == OUT_OF_SCOPE),
        switches_recognised=Share.of(by_kind[SWITCH], lambda o: o.recognised),
        openings_recognised=Share.of(by_kind[OPENING], lambda o: o.recognised),
        openings_asked=Share.of(by_kind[OPENING], lambda o: o.asked),
        asked={kind: sum(o.asked for o in by_kind[kind]) for kind in KINDS},
        handoffs={kind: sum(o.handoff for o in by_kind[kind]) for kind in KINDS},
        conversations_handed_off=sum(any(o.handoff for o in c) for c in conversations),
        readings={
            kind: dict(Counter(o.turn or ABSENT for o in by_kind[kind]).most_common())
            for kind in KINDS
        },
        follow_ups_by_family={
            name: Share.of(outcomes, lambda o: o.in_topic) for name, outcomes in families.items()
        },
    )


@dataclass(frozen=True, slots=True)
class Ambiguity:
    """The dialogue server on the openings (first messages), split by the baseline's answer."""

    clear_asked: Share  # questions where the baseline's top-1 is right
    ambiguous_asked: Share  # questions instead of the baseline's wrong answer
    ambiguous_right: Share  # right answers where the baseline's is wrong
    ambiguous_wrong: Share  # wrong answers, as the baseline's

    def as_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name).as_json() for f in fields(self)}


def ambiguity(
    dialogue: Sequence[Sequence[Outcome]], baseline: Sequence[Sequence[Outcome]]
) -> Ambiguity:
    """Both servers' conversations in the same order."""
    pairs = [(d[0], b[0]) for d, b in zip(dialogue, baseline, strict=True)]
    if any(d.kind != OPENING or b.kind != OPENING or d.topic != b.topic for d, b in pairs):
        raise ValueError("the two servers' conversations are not the same")
    clear = [d for d, b in pairs if b.label == b.topic]
    ambiguous = [d for d, b in pairs if b.label != b.topic]
    return Ambiguity(
        clear_asked=Share.of(clear, lambda o: o.asked),
        ambiguous_asked=Share.of(ambiguous, lambda o: o.asked),
        ambiguous_right=Share.of(ambiguous, lambda o: o.recognised),
        ambiguous_wrong=Share.of(ambiguous, lambda o: not o.asked and not o.recognised),
    )
