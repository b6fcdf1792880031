"""Operators' label corrections as extra training rows for the intent and emotion heads.

The server's database holds the corrections; `assistant train intent|emotion
--with-corrections` exports them to a CSV (this module's format) and the trainers read it,
so the trainers never touch the database.

An intent correction names a Banking77 intent or `out_of_scope`; an emotion correction names
a service emotion, which becomes a soft target spread over the GoEmotions labels that map
into it (the text head is trained on GoEmotions' 28 labels).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fusion.heads.labels import OUT_OF_SCOPE

__all__ = [
    "CORRECTION_COLUMNS",
    "Correction",
    "emotion_rows",
    "intent_rows",
    "read_corrections",
    "write_corrections",
]

CORRECTION_COLUMNS = ("turn_id", "field", "label", "text")


@dataclass(frozen=True, slots=True)
class Correction:
    turn_id: str
    field: str  # intent | emotion
    label: str
    text: str  # the turn's stored (redacted) text


def write_corrections(path: Path, rows: Iterable[Correction]) -> int:
    """Write `rows` as CSV; returns how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CORRECTION_COLUMNS)
        for row in rows:
            writer.writerow((row.turn_id, row.field, row.label, row.text))
            count += 1
    return count


def read_corrections(path: Path) -> list[Correction]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(CORRECTION_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {', '.join(sorted(missing))}")
        return [Correction(r["turn_id"], r["field"], r["label"], r["text"]) for r in reader]


def intent_rows(
    corrections: Sequence[Correction], intents: Sequence[str]
) -> tuple[tuple[str, ...], npt.NDArray[np.int64], list[str]]:
    """Texts and label indices (`out_of_scope` is index len(intents)) of the intent
    corrections, and the labels that were skipped because no head predicts them."""
    index = {name: i for i, name in enumerate(intents)}
    index[OUT_OF_SCOPE] = len(intents)
    texts: list[str] = []
    labels: list[int] = []
    unknown: list[str] = []
    for c in corrections:
        if c.field != "intent":
            continue
        if c.label not in index:
            unknown.append(c.label)
            continue
        texts.append(c.text)
        labels.append(index[c.label])
    return tuple(texts), np.asarray(labels, dtype=np.int64), unknown


def emotion_rows(
    corrections: Sequence[Correction],
    names: Sequence[str],
    to_service: Mapping[str, str],
) -> tuple[tuple[str, ...], npt.NDArray[np.float32], list[str]]:
    """Texts and soft targets over `names` (GoEmotions' labels) of the emotion corrections,
    and the labels that were skipped because no GoEmotions label maps into them."""
    texts: list[str] = []
    targets: list[npt.NDArray[np.float32]] = []
    unknown: list[str] = []
    for c in corrections:
        if c.field != "emotion":
            continue
        members = [i for i, name in enumerate(names) if to_service.get(name) == c.label]
        if not members:
            unknown.append(c.label)
            continue
        row = np.zeros(len(names), dtype=np.float32)
        row[members] = 1.0 / len(members)
        texts.append(c.text)
        targets.append(row)
    stacked = (
        np.stack(targets) if targets else np.zeros((0, len(names)), dtype=np.float32)
    ).astype(np.float32)
    return tuple(texts), stacked, unknown
