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
   strongest first, into groups of at most 4 (`measure_confusion_groups`), then frozen in
   `fusion.training.simulator_tables`, with every other table the draws read.
2. **An emotion** from `EMOTIONS`, with a prior that depends on the intent: intents in
   `PROBLEM_INTENTS` (something failed, was lost or is wrong) lean angry/anxious, the others
   lean neutral/satisfied (`EMOTION_PRIOR`).
3. **Text**: a Banking77 *train* utterance of the intent, from the session's fold's share of
   the utterances (utterances are dealt to folds per intent, so no utterance is in two folds).
4. **Speech**: with probability `speech_absent_p` none; otherwise a RAVDESS clip of the
   session's emotion, from the actors assigned to the session's fold (actors are dealt to
   folds by gender, so no actor's voice is in two folds). Speech carries emotion, not intent.
   A clip's emotion is `clip_emotion`: the heads' RAVDESS-to-service mapping read among
   `EMOTIONS` (disgust counts as angry; "surprised", confused, is not used).
5. **Behaviour**: with probability `behaviour_absent_p` no events (a user the widget never
   saw); then, with probability `background_only_p` (0 by default; the intent head's FiLM
   generator draws with 0.2, so it learns that browsing alone says nothing about intent),
   only 1 to `background_events[1]` generic events from the last minutes to 30 days;
   otherwise
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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from fusion.behaviour import Event
from fusion.heads.labels import RAVDESS_TO_SERVICE
from fusion.training.simulator_tables import (
    AMBIGUOUS_GROUPS,
    BACKGROUND,
    DAY,
    EMOTION_CUES,
    EMOTION_PRIOR,
    EMOTIONS,
    INTENT_PATTERNS,
    PROBLEM_INTENTS,
    SERVICE_TO_EMOTION,
    Step,
)

__all__ = [
    "Benchmark",
    "Session",
    "SimulatorConfig",
    "clip_emotion",
    "deal_actors",
    "deal_utterances",
    "measure_confusion_groups",
    "simulate",
]


def clip_emotion(ravdess_label: str) -> str | None:
    """A RAVDESS clip's emotion among `EMOTIONS`: its service emotion (the heads' mapping,
    `RAVDESS_TO_SERVICE`) through `SERVICE_TO_EMOTION`; None where that has none."""
    return SERVICE_TO_EMOTION.get(RAVDESS_TO_SERVICE[ravdess_label])


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    seed: int = 77
    n_sessions: int = 10_000
    n_folds: int = 5
    ambiguous_share: float = 0.35
    speech_absent_p: float = 0.3
    behaviour_absent_p: float = 0.1
    background_only_p: float = 0.0
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

    def _background(
        self,
        lo: int,
        hi: int,
        now: datetime,
        rng: np.random.Generator,
        hours: tuple[float, float] = (0.1, 30 * DAY),
    ) -> tuple[Event, ...]:
        out = []
        for _ in range(int(rng.integers(lo, hi + 1))):
            step = BACKGROUND[int(rng.integers(len(BACKGROUND)))]
            out.append(self._event(Step(step.name, step.props, hours), now, rng, False))
        return tuple(sorted(out, key=lambda e: e.occurred_at))

    def events(
        self, intent: str, emotion: str, now: datetime, rng: np.random.Generator
    ) -> tuple[Event, ...]:
        cfg = self.config
        if rng.random() < cfg.behaviour_absent_p:
            return ()
        # Drawn only when asked for, so the default config's sessions stay bit for bit the same.
        if cfg.background_only_p > 0.0 and rng.random() < cfg.background_only_p:
            return self._background(1, cfg.background_events[1], now, rng, (0.005, 30 * DAY))
        out: list[Event] = []
        for step in INTENT_PATTERNS.get(intent, ()):
            if rng.random() < cfg.signature_keep_p:
                out.append(self._event(step, now, rng, noisy=True))
        out.extend(self._background(*cfg.background_events, now, rng))
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
    clip_emotion_of = [clip_emotion(e) for e in clip_emotions]
    clip_emotions_index = np.array(
        [-1 if e is None else EMOTIONS.index(e) for e in clip_emotion_of], dtype=np.int64
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
        clips = np.flatnonzero((clip_fold == fold) & (clip_emotions_index == emotion))
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
