"""Voice notes arriving in parts: what a session holds of each until it is whole. Pure, no I/O.

A note comes as `audio` frames that share its id, numbered from part 0, the final one marked
`last` (a frame with neither is a whole note). `VoiceNotes.take` answers each frame: the part
is held (the connection acks it), the note is whole (the connection decodes, transcribes and
stores it, then calls `finished`), or the frame is refused. A part sent again is held once:
resending a whole note after a reconnect is safe, and so is resending a note already stored,
which is acked again with its transcript. Limits are checked as the parts come, so that no
more than a note's worth of audio is ever held, and a note left half-sent is dropped by
`expire`. Nothing here reaches the store: a note is stored whole or not at all.

What hears a whole note (the recognizer, the speech featurizer and the emotion features of a
voice call) belongs to the voice room, above this one: the connection is handed a
`NoteHearing`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from assistant.chat.protocol import (
    CONTAINERS,
    MAX_NOTE_BYTES,
    MAX_NOTE_PARTS,
    MAX_NOTE_SECONDS,
    Audio,
    ErrorCode,
    ProtocolError,
)

__all__ = ["MAX_HELD_NOTES", "HeardNote", "NoteHearing", "PartHeld", "VoiceNotes", "WholeNote"]

# Notes a session may be receiving at once: a client records one at a time, and each holds
# up to MAX_NOTE_BYTES.
MAX_HELD_NOTES = 4
# Stored notes remembered per session, so that a resent part is acked without a second
# transcription; older ones are recognised by the store (the same id is the same turn).
REMEMBERED_NOTES = 32
_BYTES_PER_SAMPLE = {"pcm16": 2, "mulaw": 1}


@dataclass(frozen=True, slots=True)
class PartHeld:
    """Ack the part: it is held, or was before. `transcript`: the part is the last of a note
    already stored, and this is its stored text."""

    part: int
    transcript: str | None = None


@dataclass(frozen=True, slots=True)
class WholeNote:
    """Every part of a note, in order, ready to be heard."""

    note_id: str
    encoding: str
    sample_rate: int | None
    data: bytes
    last_part: int


@dataclass(frozen=True, slots=True)
class HeardNote:
    """A note heard: its transcript, and what a spoken turn carries into the models (the
    `speech` and `voice` of assistant.chat.turns.PendingTurn; None when not to be had)."""

    text: str
    speech: npt.NDArray[np.float32] | None
    voice: npt.NDArray[np.float32] | None


class NoteHearing(Protocol):
    async def hear_note(self, audio_16k: npt.NDArray[np.float32]) -> HeardNote:
        """Transcribe a note (16 kHz float mono) and read its speech features."""
        ...


@dataclass(slots=True)
class _Held:
    encoding: str
    sample_rate: int | None
    parts: list[bytes]
    size: int
    touched: float  # time.monotonic() of the latest part


@dataclass(frozen=True, slots=True)
class _Stored:
    last_part: int
    transcript: str


def _seconds(encoding: str, sample_rate: int | None, size: int) -> float:
    """How long `size` bytes of raw samples last; 0 for a container, whose length is known
    only once decoded."""
    if encoding in CONTAINERS or sample_rate is None:
        return 0.0
    return size / (_BYTES_PER_SAMPLE[encoding] * sample_rate)


class VoiceNotes:
    """The notes one session is receiving, finishing, and has lately stored."""

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}
        self._finishing: set[str] = set()
        self._stored: OrderedDict[str, _Stored] = OrderedDict()

    @property
    def held(self) -> int:
        """Notes partly received."""
        return len(self._held)

    def take(self, frame: Audio, now: float) -> PartHeld | WholeNote | ProtocolError | None:
        """What to do with one `audio` frame received at `now` (time.monotonic()). None: its
        note is being finished, and the answer to that is the answer to this frame too."""
        note = frame.id
        if note in self._finishing:
            return None
        stored = self._stored.get(note)
        if stored is not None:
            last = frame.part == stored.last_part
            return PartHeld(frame.part, stored.transcript if last else None)
        held = self._held.get(note)
        expected = len(held.parts) if held is not None else 0
        if held is not None and frame.part < expected:
            held.touched = now
            return PartHeld(frame.part)
        if frame.part > expected:
            return ProtocolError(
                ErrorCode.NOTE_OUT_OF_ORDER,
                f"voice note {note[:64]!r}: part {frame.part} came before part {expected}",
                note,
            )
        if frame.part >= MAX_NOTE_PARTS:
            return self._drop(
                note, ErrorCode.NOTE_TOO_LARGE, f"a voice note has at most {MAX_NOTE_PARTS} parts"
            )
        if held is None:
            if len(self._held) >= MAX_HELD_NOTES:
                return ProtocolError(
                    ErrorCode.OVERLOADED,
                    f"{MAX_HELD_NOTES} voice notes are being received already: finish one first",
                    note,
                )
            held = _Held(frame.encoding, frame.sample_rate, [], 0, now)
        elif (frame.encoding, frame.sample_rate) != (held.encoding, held.sample_rate):
            return ProtocolError(
                ErrorCode.INVALID_FIELD,
                f"audio: encoding: part {frame.part} is {frame.encoding} at "
                f"{frame.sample_rate} Hz, part 0 was {held.encoding} at {held.sample_rate} Hz",
                note,
            )
        size = held.size + len(frame.data)
        if size > MAX_NOTE_BYTES:
            return self._drop(
                note,
                ErrorCode.NOTE_TOO_LARGE,
                f"a voice note holds at most {MAX_NOTE_BYTES:,} bytes of audio",
            )
        seconds = _seconds(held.encoding, held.sample_rate, size)
        if seconds > MAX_NOTE_SECONDS:
            return self._drop(
                note,
                ErrorCode.NOTE_TOO_LONG,
                f"the voice note is {seconds:.1f} s long; the limit is {MAX_NOTE_SECONDS:g} s",
            )
        held.parts.append(frame.data)
        held.size = size
        held.touched = now
        if not frame.last:
            self._held[note] = held
            return PartHeld(frame.part)
        self._held.pop(note, None)
        self._finishing.add(note)
        return WholeNote(note, held.encoding, held.sample_rate, b"".join(held.parts), frame.part)

    def finished(self, note: WholeNote, transcript: str | None) -> None:
        """The note has been handled: stored as a turn whose text is `transcript`, or refused
        (None: a resend is heard afresh)."""
        self._finishing.discard(note.note_id)
        if transcript is None:
            return
        self._stored[note.note_id] = _Stored(note.last_part, transcript)
        while len(self._stored) > REMEMBERED_NOTES:
            self._stored.popitem(last=False)

    def expire(self, before: float) -> int:
        """Drop the notes whose latest part came before `before`: abandoned half-way. How
        many were dropped."""
        gone = [note for note, held in self._held.items() if held.touched < before]
        for note in gone:
            del self._held[note]
        return len(gone)

    def _drop(self, note: str, code: ErrorCode, message: str) -> ProtocolError:
        self._held.pop(note, None)
        return ProtocolError(code, message, note)
