"""bench/turn_taking.py: its seeded test set, the pauses it puts in the audio, how it reads what
the server sent, and one small run of the whole bench (real servers, real /voice calls).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fusion.audio import mulaw_decode

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "bench"))

import turn_taking as tt  # noqa: E402
from voice_calls import FRAME_BYTES, LINE_NOISE, RATE, CallLog, CallScript, Utterance  # noqa: E402

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
HESITATIONS = {"my", "the", "to", "for", "about", "of", "on", "with", "from", "every", "um", "uh"}


def test_the_test_set_is_seeded_and_as_the_recipe_says() -> None:
    clips = tt.make_clips(0, tt.COMPLETE, tt.PAUSED)
    assert tt.make_clips(0, tt.COMPLETE, tt.PAUSED) == clips
    assert tt.make_clips(1, tt.COMPLETE, tt.PAUSED) != clips
    # A quick set is the full one's beginning, for each kind.
    quick = tt.make_clips(0, tt.QUICK, tt.QUICK)
    assert quick[: tt.QUICK] == clips[: tt.QUICK]
    assert quick[tt.QUICK :] == clips[tt.COMPLETE : tt.COMPLETE + tt.QUICK]

    complete = [c for c in clips if c.kind == "complete"]
    paused = [c for c in clips if c.kind == "paused"]
    assert len(complete) >= 120 and len(paused) >= 120
    assert all(len(c.parts) == 1 and c.parts[0].endswith(".") for c in complete)
    assert all(c.pause_s == 0 for c in complete)
    pauses = np.array([c.pause_s for c in paused])
    assert pauses.min() >= 0.4 and pauses.max() <= 0.9
    assert pauses.max() - pauses.min() > 0.4  # spread over the range, not one value
    for clip in paused:
        first, rest = clip.parts
        # Continuation before the pause: a comma, after a word a person hesitates on.
        assert first.endswith(",") and rest.endswith(".")
        assert first.rstrip(",").split()[-1] in HESITATIONS
        said = f"{first.rstrip(',')} {rest.rstrip('.')}".split()
        assert [w for w in said if w not in ("um", "uh")] == clip.text.split()
    assert any(c.parts[0].endswith(("um,", "uh,")) for c in paused)
    assert len({c.text for c in clips}) >= 100
    assert len({c.voice for c in clips}) >= 6
    assert len({c.rate_wpm for c in clips}) > 10 and len({c.pitch for c in clips}) > 10


@needs_espeak
def test_a_pause_is_silence_with_the_line_noise_going_on(tmp_path: Path) -> None:
    clips = list(tt.make_clips(3, 0, 3))
    rendered = asyncio.run(tt.render(clips, tmp_path))
    for r in rendered:
        assert r.pause_at_s is not None
        start = round(r.pause_at_s * RATE)
        gap = r.audio[start : start + round(r.clip.pause_s * RATE)]
        assert gap.size == round(r.clip.pause_s * RATE) and not gap.any()
        # Speech on both sides of it: the parts were trimmed to their voiced samples.
        assert np.abs(r.audio[start - 80 : start]).max() > 0.01
        assert np.abs(r.audio[start + gap.size : start + gap.size + 80]).max() > 0.01
    # Cached: the second rendering reads the same audio back.
    again = asyncio.run(tt.render(clips, tmp_path))
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(rendered, again, strict=True))

    (call,) = tt.build_calls(rendered, 1, seed=0)
    assert sorted(u.text for u in call.script.utterances) == sorted(c.text for c in clips)
    audio = mulaw_decode(np.frombuffer(b"".join(call.script.frames), dtype=np.uint8))
    for utterance, pause in zip(call.script.utterances, call.pauses, strict=True):
        assert pause is not None and utterance.start_s < pause[0] < pause[1] < utterance.end_s
        inside = audio[round(pause[0] * RATE) + 8 : round(pause[1] * RATE) - 8]
        rms = float(np.sqrt(np.mean(inside.astype(np.float64) ** 2)))
        assert 0.3 * LINE_NOISE < rms < 3 * LINE_NOISE
    assert all(len(f) == FRAME_BYTES for f in call.script.frames)
    # 3 to 5 s between utterances.
    spans = call.script.utterances
    assert all(3.0 <= b.start_s - a.end_s <= 5.0 for a, b in itertools.pairwise(spans))


def _call() -> tt.CallRecord:
    """Three utterances: complete, paused (its pause from 5.0 to 5.6 s), complete; t0 = 100."""
    clips = (
        tt.Clip("complete", "I want to report a fault on my landline", ("",), "en-us", 160, 50, 0),
        tt.Clip("paused", "I'd like to cancel my gym membership", ("", ""), "en-gb", 160, 50, 0.6),
        tt.Clip("complete", "I need a copy of my last three invoices", ("",), "en-us", 160, 50, 0),
    )
    spans = [(1.0, 3.0), (4.0, 6.5), (10.0, 12.0)]
    utterances = (Utterance(c.text, s, e) for c, (s, e) in zip(clips, spans, strict=True))
    call = tt.TurnCall(CallScript((), tuple(utterances)), clips, (None, (5.0, 5.6), None))
    log = CallLog(call.script, t0=100.0, eos={0: 103.0, 1: 106.5, 2: 112.0})
    return tt.CallRecord(call, log)


def test_a_turn_ended_inside_the_pause_is_a_false_cut_off() -> None:
    record = _call()
    frames: list[tuple[float, dict[str, Any]]] = [
        (103.55, {"type": "transcript", "utterance_id": "u1", "text": "a fault", "at": 3.01}),
        (103.9, {"type": "reply", "utterance_id": "u1", "text": "..."}),
        (105.6, {"type": "transcript", "utterance_id": "u2", "text": "cancel my", "at": 5.02}),
        (107.0, {"type": "transcript", "utterance_id": "u3", "text": "gym", "at": 6.48}),
        (0.5, {"type": "transcript", "utterance_id": "u0", "text": "click", "at": 0.2}),
        (112.4, {"type": "error", "code": "internal", "message": "the utterance failed"}),
    ]
    for now, frame in frames:
        record.on_frame(now, frame)
    record.log.audio_frame(103.8)
    record.log.audio_frame(103.82)
    record.log.audio_frame(107.2)
    results, stray = tt.outcomes(0, record, None)
    first, paused, last = results
    assert stray == 1
    assert not first.cut_off and first.eos_to_transcript_s == pytest.approx(0.55)
    assert first.eos_to_reply_audio_s == pytest.approx(0.8)
    assert first.eos_to_reply_s == pytest.approx(0.9)
    assert paused.cut_off and [t["text"] for t in paused.transcripts] == ["cancel my", "gym"]
    assert paused.eos_to_transcript_s == pytest.approx(0.5)  # the last transcript's
    assert paused.eos_to_reply_audio_s == pytest.approx(0.7)
    assert not last.transcripts and last.eos_to_transcript_s is None  # lost
    errors = record.errors
    figures = tt.mode_figures("silence", "", results, stray, errors, (1, 0), 0, None, (0, 0, 0))
    assert (figures.false_cutoffs, figures.paused_heard, figures.cutoff_share) == (1, 1, 1.0)
    assert (figures.lost_complete, figures.lost_paused, figures.split_complete) == (1, 0, 0)
    assert figures.late_ends is None and figures.errors == ["internal: the utterance failed"]
    assert figures.paused_transcript_p50_s is None  # the one paused utterance was cut


def test_one_transcript_after_the_pause_is_no_cut_off_and_the_maximum_silence_is_late() -> None:
    record = _call()
    record.on_frame(103.3, {"type": "transcript", "utterance_id": "u1", "text": "a", "at": 3.0})
    record.on_frame(106.8, {"type": "transcript", "utterance_id": "u2", "text": "b", "at": 6.5})
    record.on_frame(113.6, {"type": "transcript", "utterance_id": "u3", "text": "c", "at": 12.0})
    results, _ = tt.outcomes(0, record, late_after_s=1.4)
    assert [o.cut_off for o in results] == [False, False, False]
    assert [o.late for o in results] == [False, False, True]
    figures = tt.mode_figures("model", "", results, 0, [], (1, 0), 0, 1.4, (0, 0, 0))
    assert figures.late_ends == 1 and figures.false_cutoffs == 0
    assert figures.paused_transcript_p50_s == pytest.approx(0.3)


@needs_espeak
def test_the_bench_runs_both_modes_on_real_servers(tmp_path: Path) -> None:
    out = tmp_path / "turn_taking.json"
    argv = ["--complete", "2", "--paused", "2", "--calls", "2", "--modes", "silence,model"]
    assert tt.main([*argv, "--cache", str(tmp_path / "clips"), "--json", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert [m["mode"] for m in result["modes"]] == ["silence", "model"]
    for figures in result["modes"]:
        assert (figures["complete"], figures["paused"]) == (2, 2)
        assert figures["errors"] == [] and figures["calls_dropped"] == 0
        records = result["utterances"][figures["mode"]]
        assert sorted(o["kind"] for o in records) == ["complete"] * 2 + ["paused"] * 2
        heard = [o for o in records if o["transcripts"]]
        assert len(heard) == 4 - figures["lost_complete"] - figures["lost_paused"] >= 3
        for o in heard:
            assert o["eos_to_transcript_s"] is not None and o["eos_to_transcript_s"] > 0
        assert figures["complete_transcript_p50_s"] is not None
    assert result["failed"] == {} and result["machine"]["cores"] >= 1
