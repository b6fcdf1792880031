"""The turn batch: CPU threads of model forwards (a lone request on fewer cores, batches on all
of them) and what the batch hands the heads."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pytest
import torch

from assistant import Models
from assistant.app.runtime import fusion_config
from assistant.app.settings import Settings
from assistant.core.settings import SettingsError
from fusion.serving import ThreadPolicy, TurnInput
from fusion.voice_emotion import VOICE_EMOTION_DIM


def _threads_seen(policy: ThreadPolicy, batches: Sequence[Sequence[int]]) -> list[int]:
    """torch's thread count inside each call, all calls in one worker thread (a batcher's)."""
    seen: list[int] = []

    def forward(batch: Sequence[int]) -> list[int]:
        seen.append(torch.get_num_threads())
        return list(batch)

    run = policy.wrap(forward)
    worker = threading.Thread(target=lambda: [run(b) for b in batches])
    worker.start()
    worker.join()
    return seen


def test_lone_requests_use_the_lone_thread_count_and_batches_use_the_default() -> None:
    default = torch.get_num_threads()
    policy = ThreadPolicy(1, cpu=True)
    assert policy.batch == default
    seen = _threads_seen(policy, [[1], [1, 2], [3], [4, 5, 6]])
    assert seen == [1, default, 1, default]
    # The caller's own thread count is untouched.
    assert torch.get_num_threads() == default


def test_default_lone_count_is_half_the_usable_cores() -> None:
    policy = ThreadPolicy(None, cpu=True)
    assert policy.lone == max(1, policy.usable // 2)


def test_devices_other_than_cpu_are_left_alone() -> None:
    policy = ThreadPolicy(1, cpu=False)

    def forward(batch: Sequence[int]) -> list[int]:
        return list(batch)

    assert policy.wrap(forward) is forward


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ("1", 1), ("3", 3)], ids=["unset", "one", "three"]
)
def test_lone_threads_setting(value: str | None, expected: int | None) -> None:
    env = {} if value is None else {"ASSISTANT_LONE_THREADS": value}
    settings = Settings.from_env(env)
    assert settings.lone_threads == expected
    assert fusion_config(settings).lone_threads == expected


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_bad_lone_threads_setting_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="ASSISTANT_LONE_THREADS"):
        Settings.from_env({"ASSISTANT_LONE_THREADS": value})


async def test_a_turn_reads_the_message_text_for_the_emotion_cues(models: Models) -> None:
    """The shipped emotion head has lexical cues: the turn batch hands it each message."""
    text = "thank you so much!!! that fixed it :)"
    now = datetime(2026, 1, 1, tzinfo=UTC)
    reading = models._read_batch([TurnInput(text, None, [], now)])[0]
    vector = reading.text_vector[None, :]
    with_text = models.understanding.predict_many(vector, [None], [None], [text])[0]
    without = models.understanding.predict_many(vector, [None], [None])[0]
    assert reading.understanding.emotion_scores == with_text.emotion_scores
    assert with_text.emotion_scores != without.emotion_scores


async def test_a_spoken_turn_hands_its_voice_features_to_the_emotion_head(models: Models) -> None:
    """Fusion reads the featurizer's vector; the emotion head reads `TurnInput.voice`."""
    text = "my card still has not arrived"
    now = datetime(2026, 1, 1, tzinfo=UTC)
    voice = np.random.default_rng(3).standard_normal(VOICE_EMOTION_DIM).astype(np.float32)
    typed, spoken = models._read_batch(
        [TurnInput(text, None, [], now), TurnInput(text, None, [], now, voice=voice)]
    )
    # The same batch straight to the heads.
    vectors = np.stack([typed.text_vector, spoken.text_vector])
    expected = models.understanding.predict_many(
        vectors, [None, None], [None, voice], [text, text]
    )[1]
    assert spoken.understanding.emotion_scores == pytest.approx(expected.emotion_scores)
    assert spoken.understanding.emotion_scores != typed.understanding.emotion_scores
    assert np.allclose(spoken.fused.z, typed.fused.z, atol=1e-5)  # no speech for fusion


def test_a_batch_beside_a_running_one_gets_its_share_of_the_threads() -> None:
    default = torch.get_num_threads()
    policy = ThreadPolicy(1, cpu=True)
    first_inside = threading.Event()
    second_done = threading.Event()
    seen: dict[str, int] = {}

    def forward(batch: Sequence[str]) -> list[str]:
        seen[batch[0]] = torch.get_num_threads()
        if batch[0] == "first":
            first_inside.set()
            assert second_done.wait(10)
        else:
            second_done.set()
        return list(batch)

    run = policy.wrap(forward)
    first = threading.Thread(target=run, args=(["first", "x"],))
    first.start()
    assert first_inside.wait(10)
    second = threading.Thread(target=run, args=(["second", "x"],))
    second.start()
    second.join()
    first.join()
    assert seen == {"first": default, "second": max(1, default // 2)}


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("1", 1), ("3", 3)])
def test_batch_workers_setting(value: str | None, expected: int | None) -> None:
    env = {} if value is None else {"ASSISTANT_BATCH_WORKERS": value}
    assert fusion_config(Settings.from_env(env)).batch_workers == expected


@pytest.mark.parametrize("value", ["0", "many"])
def test_bad_batch_workers_setting_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="ASSISTANT_BATCH_WORKERS"):
        Settings.from_env({"ASSISTANT_BATCH_WORKERS": value})
