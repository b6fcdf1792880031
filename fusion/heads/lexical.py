"""The lexical cues both heads read beside the sentence embedding: a message's words, symbols
and bigrams, hashed into buckets, and their packing for `torch.nn.functional.embedding_bag`.
Training and serving hash alike.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "Grams",
    "lexical_batch",
    "lexical_hashes",
    "lexical_ids",
    "lexical_pack",
    "lexical_tokens",
]

# Words, and every other character (emoji, punctuation) as a token of its own.
_TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")
# "sooooo" and "sooo" are one cue: runs of three or more of a character shrink to two.
_RUN = re.compile(r"(.)\1{2,}")

# Hash values of the start and end marks and of shouting; an odd multiplier mixes a bigram's
# two token hashes so that "not bad" and "bad not" differ.
_START, _END, _SHOUT, _MIX = 1, 2, 3, 0x9E3779B1


def lexical_tokens(text: str) -> tuple[list[str], bool]:
    """A message's lower-cased tokens and whether a word is shouted (all capitals).

    GoEmotions labels hinge on words such as thanks, sorry, lol or wtf, and on emoji and
    "!!!", which a sentence embedding trained for similarity blurs.
    """
    shouted = any(len(w) > 2 and w.isalpha() and w.isupper() for w in text.split())
    return _TOKEN.findall(_RUN.sub(r"\1\1", text.replace("\u2019", "'").lower())), shouted


def lexical_hashes(text: str) -> list[int]:
    """Hashes of a message's tokens, its token bigrams (with start and end marks) and
    shouting, before they are reduced to buckets: heads with lexical branches hash a message
    once. crc32 because it is stable across processes, unlike hash(); bigrams mix their
    tokens' hashes instead of hashing a joined string (half the cost)."""
    tokens, shouted = lexical_tokens(text)
    hashes = [zlib.crc32(t.encode("utf-8")) for t in tokens]
    grams = hashes + [(a * _MIX) ^ b for a, b in itertools.pairwise([_START, *hashes, _END])]
    if shouted:
        grams.append(_SHOUT)
    return grams


def lexical_ids(text: str, buckets: int) -> list[int]:
    """Distinct bucket ids of `lexical_hashes`."""
    return list({h % buckets for h in lexical_hashes(text)})


# A batch's grams for `torch.nn.functional.embedding_bag`: ids [K], each message's first
# position [B] and per-gram weights [K].
Grams = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def lexical_pack(rows: Sequence[Sequence[int]]) -> Grams:
    """`lexical_ids` rows -> `Grams`, each message's grams weighted 1/sqrt(count) so a long
    comment's many cues do not outvote the embedding. Flat, not padded: Reddit comment
    lengths are long-tailed, so a padded block would be mostly padding."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
    weights = np.repeat(1.0 / np.sqrt(np.maximum(lengths, 1)), lengths).astype(np.float32)
    return torch.from_numpy(ids), torch.from_numpy(offsets), torch.from_numpy(weights)


def lexical_batch(texts: Sequence[str], buckets: int) -> Grams:
    return lexical_pack([lexical_ids(t, buckets) for t in texts])
