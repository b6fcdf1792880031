"""The simulated benchmark: determinism, documented shares, no leakage across folds."""

from __future__ import annotations

import csv
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fusion.behaviour import EVENT_CATALOGUE
from fusion.heads.labels import RAVDESS, RAVDESS_TO_SERVICE, SERVICE_EMOTIONS
from fusion.training.simulator import (
    Benchmark,
    SimulatorConfig,
    clip_emotion,
    measure_confusion_groups,
    simulate,
)
from fusion.training.simulator_tables import (
    AMBIGUOUS_GROUPS,
    BACKGROUND,
    EMOTION_CUES,
    EMOTION_PRIOR,
    EMOTIONS,
    INTENT_PATTERNS,
    PROBLEM_INTENTS,
    SERVICE_TO_EMOTION,
)

INTENTS = tuple(sorted(INTENT_PATTERNS))
CONFIG = SimulatorConfig(n_sessions=3000)


def tables() -> tuple[list[int], list[str], list[int], list[str]]:
    """12 utterances per intent; 22 actors x 8 emotions x 4 clips, like RAVDESS."""
    utterances = [i for i in range(len(INTENTS)) for _ in range(12)]
    emotions, actors, genders = [], [], []
    for actor in range(1, 23):
        for emotion in RAVDESS:
            for _ in range(4):
                emotions.append(emotion)
                actors.append(actor)
                genders.append("male" if actor % 2 else "female")
    return utterances, emotions, actors, genders


def bench(config: SimulatorConfig = CONFIG) -> Benchmark:
    return simulate(config, INTENTS, *tables())


def test_constants_are_consistent() -> None:
    assert len(INTENTS) == 77
    grouped = [name for group in AMBIGUOUS_GROUPS for name in group]
    assert len(grouped) == len(set(grouped)), "an intent in two groups"
    assert set(grouped) <= set(INTENTS)
    assert PROBLEM_INTENTS.issubset(INTENTS)
    steps = [s for p in INTENT_PATTERNS.values() for s in p] + list(BACKGROUND)
    steps += [s for cues in EMOTION_CUES.values() for s, _, _ in cues]
    for step in steps:
        spec = EVENT_CATALOGUE[step.name]
        assert set(step.props) <= set(spec.key_props), step
        assert 0 < step.hours[0] < step.hours[1]
    assert {clip_emotion(e) for e in RAVDESS} - {None} == set(EMOTIONS)
    for prior in EMOTION_PRIOR.values():
        assert len(prior) == len(EMOTIONS) and abs(sum(prior) - 1) < 1e-9


def test_clips_map_to_emotions_through_the_heads_mapping() -> None:
    assert set(EMOTIONS) <= set(SERVICE_EMOTIONS)
    assert set(SERVICE_TO_EMOTION) <= set(SERVICE_EMOTIONS)
    assert set(SERVICE_TO_EMOTION.values()) == set(EMOTIONS)
    for label in RAVDESS:
        assert clip_emotion(label) == SERVICE_TO_EMOTION.get(RAVDESS_TO_SERVICE[label])
    # The fusion weights were trained on these: disgust (frustrated) as angry, no surprised.
    assert clip_emotion("disgust") == "angry" and clip_emotion("surprised") is None


def test_same_seed_same_sessions() -> None:
    a, b = bench(), bench()
    assert a.sessions == b.sessions
    assert (a.utterance_fold == b.utterance_fold).all() and a.actor_fold == b.actor_fold
    c = bench(replace(CONFIG, seed=CONFIG.seed + 1))
    assert c.sessions != a.sessions


def test_ambiguous_share_and_definition() -> None:
    b = bench()
    grouped = {name for group in AMBIGUOUS_GROUPS for name in group}
    flags = np.array([s.ambiguous for s in b.sessions])
    for s in b.sessions:
        assert s.ambiguous == (INTENTS[s.intent] in grouped)
    # Binomial standard error at n=3000 is under 0.009; allow 4 of them.
    assert abs(flags.mean() - CONFIG.ambiguous_share) < 0.035
    assert len({s.intent for s in b.sessions}) == 77


def test_speech_and_behaviour_absent_shares() -> None:
    b = bench()
    no_speech = np.mean([s.speech_index < 0 for s in b.sessions])
    no_events = np.mean([not s.events for s in b.sessions])
    assert abs(no_speech - CONFIG.speech_absent_p) < 0.035
    assert abs(no_events - CONFIG.behaviour_absent_p) < 0.025
    none = bench(replace(CONFIG, speech_absent_p=1.0, n_sessions=200))
    assert all(s.speech_index < 0 for s in none.sessions)


def test_speech_matches_the_session_emotion_and_text_the_intent() -> None:
    utterances, emotions, _, _ = tables()
    for s in bench().sessions:
        assert utterances[s.text_index] == s.intent
        if s.speech_index >= 0:
            assert clip_emotion(emotions[s.speech_index]) == EMOTIONS[s.emotion]
            assert emotions[s.speech_index] != "surprised"
        assert all(e.occurred_at <= s.now for e in s.events)
        assert list(s.events) == sorted(s.events, key=lambda e: e.occurred_at)


def test_no_actor_or_utterance_in_two_folds() -> None:
    b = bench()
    _, _, actors, genders = tables()
    gender_of = dict(zip(actors, genders, strict=True))

    def voices(rows: np.ndarray) -> set[int]:
        clips = [b.sessions[i].speech_index for i in rows]
        return {actors[c] for c in clips if c >= 0}

    for fold in range(CONFIG.n_folds):
        train, test = b.split(fold)
        assert len(train) + len(test) == len(b.sessions)
        assert voices(test) and not voices(train) & voices(test)
        assert {gender_of[a] for a in voices(test)} == {"male", "female"}
        text_train = {b.sessions[i].text_index for i in train}
        text_test = {b.sessions[i].text_index for i in test}
        assert not text_train & text_test


def test_measure_confusion_groups() -> None:
    names = ["a", "b", "c", "d", "e", "f"]
    true, pred = [], []
    for i in range(6):
        true += [i] * 100
        pred += [i] * 100
    # a<->b confused 10%, b<->c 5%, e->f 2% (below the 3% threshold).
    pred[0:10] = [1] * 10
    pred[100:105] = [2] * 5
    pred[400:402] = [5] * 2
    groups = measure_confusion_groups(true, pred, names, threshold=0.03, max_size=4)
    assert [g for g, _ in groups] == [("a", "b", "c")]
    assert measure_confusion_groups(true, pred, names, max_size=2)[0][0] == ("a", "b")


def _data_dir() -> Path | None:
    value = os.environ.get("ASSISTANT_DATA_DIR")
    return Path(value) if value else None


@pytest.mark.skipif(_data_dir() is None, reason="needs ASSISTANT_DATA_DIR (the shared data sets)")
def test_real_ravdess_actors_do_not_leak() -> None:
    root = _data_dir()
    assert root is not None
    with (root / "ravdess_speech_16k_flac" / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    b = simulate(
        CONFIG,
        INTENTS,
        tables()[0],
        [r["emotion"] for r in rows],
        [int(r["actor"]) for r in rows],
        [r["gender"] for r in rows],
    )
    actor = [int(r["actor"]) for r in rows]
    assert sorted(set(b.actor_fold.values())) == list(range(CONFIG.n_folds))
    for fold in range(CONFIG.n_folds):
        train, test = b.split(fold)
        seen = {actor[b.sessions[i].speech_index] for i in train if b.sessions[i].speech_index >= 0}
        heard = {actor[b.sessions[i].speech_index] for i in test if b.sessions[i].speech_index >= 0}
        assert heard and not seen & heard
