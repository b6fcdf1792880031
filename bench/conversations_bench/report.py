"""The printed table of bench/conversations.py: the dialogue server beside the baseline."""

from __future__ import annotations

import math
from collections.abc import Mapping

from conversations_bench.figures import (
    TARGET_ASKED_PCT,
    TARGET_FOLLOW_UPS_PCT,
    TARGET_SWITCHES_PCT,
    Ambiguity,
    ServerFigures,
    Share,
)
from conversations_bench.script import KINDS

__all__ = ["render", "verdicts"]

NAME = 46
COLUMN = 24


def verdicts(dialogue: ServerFigures) -> dict[str, bool]:
    """Each target, met or not, by the dialogue server (a NaN share meets none)."""
    asked = dialogue.openings_asked.pct
    return {
        "follow_ups_in_topic": dialogue.follow_ups_in_topic.pct >= TARGET_FOLLOW_UPS_PCT,
        "switches_recognised": dialogue.switches_recognised.pct >= TARGET_SWITCHES_PCT,
        "openings_asked": not math.isnan(asked) and asked <= TARGET_ASKED_PCT,
    }


def _by_kind(counts: Mapping[str, int]) -> str:
    return " / ".join(str(counts[kind]) for kind in KINDS)


def render(dialogue: ServerFigures, baseline: ServerFigures, amb: Ambiguity) -> list[str]:
    met = verdicts(dialogue)
    lines = [f"{'':{NAME}s} {'dialogue':>{COLUMN}s} {'baseline':>{COLUMN}s}   target (dialogue)"]

    def row(name: str, d: Share | str, b: Share | str, target: str = "") -> None:
        lines.append(f"{name:{NAME}s} {d!s:>{COLUMN}s} {b!s:>{COLUMN}s}   {target}".rstrip())

    def target(key: str, text: str) -> str:
        return f"{text}: {'met' if met[key] else 'NOT MET'}"

    row(
        "follow-ups answered within the topic",
        dialogue.follow_ups_in_topic,
        baseline.follow_ups_in_topic,
        target("follow_ups_in_topic", f">= {TARGET_FOLLOW_UPS_PCT:g}%"),
    )
    row("  before the switch", dialogue.follow_ups_before_switch, baseline.follow_ups_before_switch)
    row("  after the switch", dialogue.follow_ups_after_switch, baseline.follow_ups_after_switch)
    row(
        "  labelled out_of_scope",
        dialogue.follow_ups_out_of_scope,
        baseline.follow_ups_out_of_scope,
    )
    row(
        "topic switches recognised",
        dialogue.switches_recognised,
        baseline.switches_recognised,
        target("switches_recognised", f">= {TARGET_SWITCHES_PCT:g}%"),
    )
    row("openings recognised", dialogue.openings_recognised, baseline.openings_recognised)
    row(
        "questions on openings (first messages)",
        dialogue.openings_asked,
        baseline.openings_asked,
        target("openings_asked", f"<= {TARGET_ASKED_PCT:g}%"),
    )
    row("  where the baseline answers right", amb.clear_asked, "")
    row("baseline wrong (ambiguous): asked instead", amb.ambiguous_asked, "")
    row("  answered right", amb.ambiguous_right, "")
    row("  answered wrong", amb.ambiguous_wrong, "")
    kinds = "/".join(("open", "follow", "switch", "after"))
    row(f"questions ({kinds})", _by_kind(dialogue.asked), _by_kind(baseline.asked))
    row(f"handoffs ({kinds})", _by_kind(dialogue.handoffs), _by_kind(baseline.handoffs))
    row(
        "conversations handed off",
        str(dialogue.conversations_handed_off),
        str(baseline.conversations_handed_off),
    )
    lines.append("follow-ups answered within the topic, by the topic's family:")
    for family, share in dialogue.follow_ups_by_family.items():
        row(f"  {family}", share, baseline.follow_ups_by_family[family])
    lines.append("reply.turn by kind of turn (dialogue server):")
    for kind, counts in dialogue.readings.items():
        lines.append(f"  {kind}: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    if not dialogue.turn_field_seen:
        lines.append("the dialogue server's replies carry no `turn`: it read every message alone")
    return lines
