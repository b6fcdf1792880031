"""Where the trainers find things, and the public data sets' loaders (one of each).

The data folder: `ASSISTANT_DATA_DIR` when set; otherwise `../shared/data` beside the checkout
when it exists. A user's machine has neither, and the trainers then ask for `--data`.
Features, weights of runs and reports go under the checkout's var/ and docs/.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "CACHE_DIR",
    "DOCS_DIR",
    "REPO_ROOT",
    "RUNS_DIR",
    "Banking77",
    "GoEmotions",
    "data_folder",
    "default_data_dir",
    "load_banking77",
    "load_clinc_oos",
    "load_goemotions",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
# Features computed once (MiniLM embeddings, RAVDESS speech and voice features), by content.
CACHE_DIR = REPO_ROOT / "var" / "cache"
RUNS_DIR = REPO_ROOT / "var" / "runs"
DOCS_DIR = REPO_ROOT / "docs"


def default_data_dir() -> Path | None:
    env = os.environ.get("ASSISTANT_DATA_DIR")
    if env:
        return Path(env)
    beside = REPO_ROOT.parent / "shared" / "data"
    return beside if beside.is_dir() else None


def data_folder(given: Path | None) -> Path | None:
    """`given` (a `--data` flag), else `default_data_dir()`; None, said on stderr, when that
    is no folder."""
    folder = given or default_data_dir()
    if folder is None or not folder.is_dir():
        print("no data folder: pass --data or set ASSISTANT_DATA_DIR", file=sys.stderr)
        return None
    return folder


@dataclass(frozen=True, slots=True)
class Banking77:
    texts: tuple[str, ...]
    labels: npt.NDArray[np.int64]  # [N] index into intents
    intents: tuple[str, ...]


def load_banking77(data_dir: Path, split: str) -> Banking77:
    """One official split (train or test); `intents` in categories.json order."""
    folder = data_dir / "banking77" / "banking_data"
    intents = tuple(json.loads((folder / "categories.json").read_text()))
    index = {name: i for i, name in enumerate(intents)}
    with (folder / f"{split}.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    labels = np.array([index[r["category"]] for r in rows], dtype=np.int64)
    return Banking77(tuple(r["text"] for r in rows), labels, intents)


def load_clinc_oos(data_dir: Path, split: str) -> tuple[str, ...]:
    """CLINC150's out-of-scope utterances of one split: oos_train, oos_val or oos_test."""
    blob = json.loads((data_dir / "clinc150" / "data" / "data_full.json").read_text())
    return tuple(text for text, _ in blob[split])


@dataclass(frozen=True, slots=True)
class GoEmotions:
    texts: tuple[str, ...]
    labels: tuple[tuple[int, ...], ...]  # indices into `names` (multi-label)
    names: tuple[str, ...]


def load_goemotions(data_dir: Path, split: str, taxonomy: str = "original") -> GoEmotions:
    """One official split; taxonomy "original" (28 labels) or "ekman" (7)."""
    folder = data_dir / "goemotions" / "data" / taxonomy
    names = tuple(folder.joinpath("labels.txt").read_text().split())
    texts: list[str] = []
    labels: list[tuple[int, ...]] = []
    with (folder / f"{split}.tsv").open(encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            texts.append(parts[0])
            labels.append(tuple(int(x) for x in parts[1].split(",")))
    return GoEmotions(tuple(texts), tuple(labels), names)
