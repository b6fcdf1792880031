"""Retrieval over the knowledge base: the same text encoder as the models, weighted by intent.

The knowledge base is embedded once, several rows per entry (how customers ask, the title,
the answer), with the sentence encoder the intent model reads, passed in as a plain callable
`embed(texts) -> float32 array [N, 384]`, L2-normalised (fusion's `TextEncoder.encode`), so
torch stays in fusion. An entry's similarity to a query is the best cosine over its rows.

`KnowledgeRetriever` is a LangChain retriever. Its score adds the intent model's belief to
the text similarity:

    score(entry) = similarity(query, entry) + intent_weight * P(intent = entry.intent)

with P taken from the understanding's two best labels (or its one label and confidence).
A confident intent thus brings its own answer to the top, while a weak or missing one leaves
the ranking to the text; small talk, which no intent model predicts, is found by text alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from assistant.replies.knowledge_base import KnowledgeBase, KnowledgeEntry
from assistant.replies.understanding import Understanding

Matrix = npt.NDArray[np.float32]
Embed = Callable[[Sequence[str]], Matrix]

DEFAULT_K = 3
DEFAULT_INTENT_WEIGHT = 0.5


def _normalised(matrix: Matrix) -> Matrix:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


def embed_in_batches(embed: Embed, texts: Sequence[str], batch_size: int = 32) -> Matrix:
    """Embed many texts in length-sorted batches, returned in input order.

    An encoder pads each batch to its longest text, so one batch of short questions and long
    answers costs several times more than batches of similar length.
    """
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    out: Matrix | None = None
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        vectors = np.asarray(embed([texts[i] for i in chunk]), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(chunk):
            raise ValueError(f"embed returned shape {vectors.shape} for {len(chunk)} texts")
        if out is None:
            out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        out[chunk] = vectors
    if out is None:
        raise ValueError("nothing to embed")
    return out


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EmbeddingCache:
    """Knowledge-base embeddings kept on disk between starts, keyed by the texts and by
    `encoder`, which names everything else the vectors depend on (`TextEncoder.fingerprint`).

    Embedding the knowledge base is a few seconds of every start on a CPU, for texts and an
    encoder that rarely change from one start to the next. A file that cannot be read, or
    holds anything but the expected float32 rows, is recomputed; one that cannot be written
    costs the next start the embedding, nothing else.
    """

    directory: Path
    encoder: str

    def path(self, texts: Sequence[str]) -> Path:
        digest = hashlib.sha256(self.encoder.encode())
        for text in texts:
            digest.update(b"\0" + text.encode())
        return self.directory / f"knowledge-{digest.hexdigest()[:32]}.npy"

    def load(self, texts: Sequence[str]) -> Matrix | None:
        try:
            vectors = np.load(self.path(texts), allow_pickle=False)
        except (OSError, ValueError):
            return None
        if (
            vectors.dtype != np.float32
            or vectors.ndim != 2
            or vectors.shape[0] != len(texts)
            or not np.isfinite(vectors).all()
        ):
            return None
        out: Matrix = vectors
        return out

    def store(self, texts: Sequence[str], vectors: Matrix) -> None:
        target = self.path(texts)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Written aside and renamed: a start never reads a half-written file.
            with tempfile.NamedTemporaryFile(dir=self.directory, suffix=".tmp", delete=False) as f:
                np.save(f, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
            os.replace(f.name, target)
        except OSError as exc:
            log.warning("knowledge-base embeddings not cached in %s: %s", self.directory, exc)


@dataclass(frozen=True, slots=True)
class KnowledgeIndex:
    """Row vectors [R, D] of the knowledge base, each entry's rows together, in entry order;
    `starts` [E]: the first row of each entry."""

    kb: KnowledgeBase
    vectors: Matrix
    starts: npt.NDArray[np.intp]

    @classmethod
    def build(
        cls, kb: KnowledgeBase, embed: Embed, cache: EmbeddingCache | None = None
    ) -> KnowledgeIndex:
        """Embed the knowledge base, or read its vectors from `cache` when it has them."""
        texts: list[str] = []
        starts: list[int] = []
        for entry in kb:
            starts.append(len(texts))
            texts.extend(entry.retrieval_texts())
        vectors = None if cache is None else cache.load(texts)
        if vectors is None:
            vectors = embed_in_batches(embed, texts)
            if cache is not None:
                cache.store(texts, vectors)
        return cls(kb, _normalised(vectors), np.asarray(starts, dtype=np.intp))

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def similarities(self, query: Matrix) -> npt.NDArray[np.float32]:
        """Cosine similarity of `query` [D] to each entry [E]: the best over its rows."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query has {q.shape[0]} dimensions; the index has {self.dim}")
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        # Every entry has rows (a title and an answer at least), so no segment is empty.
        best: npt.NDArray[np.float32] = np.maximum.reduceat(self.vectors @ q, self.starts)
        return best


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrieved entry with its text similarity and its intent-weighted score."""

    entry: KnowledgeEntry
    similarity: float
    score: float

    def as_document(self) -> Document:
        return Document(
            page_content=passage_text(self.entry),
            id=self.entry.id,
            metadata={
                "id": self.entry.id,
                "intent": self.entry.intent,
                "title": self.entry.title,
                "similarity": self.similarity,
                "score": self.score,
            },
        )


def passage_text(entry: KnowledgeEntry) -> str:
    """How an entry reads in a prompt: title, answer, facts and follow-up questions."""
    lines = [f"[{entry.id}] {entry.title}", f"Answer: {entry.answer}", "Facts:"]
    lines.extend(f"- {fact}" for fact in entry.facts)
    if entry.follow_ups:
        lines.append("Possible follow-up questions: " + " ".join(entry.follow_ups))
    return "\n".join(lines)


def rank(
    index: KnowledgeIndex,
    query: Matrix,
    understanding: Understanding | None,
    *,
    k: int = DEFAULT_K,
    intent_weight: float = DEFAULT_INTENT_WEIGHT,
) -> list[Passage]:
    """The `k` best passages for a query vector; ties keep knowledge-base order."""
    similarity = index.similarities(query)
    priors = understanding.intent_priors() if understanding is not None else {}
    boost = np.zeros_like(similarity)
    for label, p in priors.items():
        position = index.kb.position_for_intent(label)
        if position is not None:
            boost[position] += p
    score = similarity + intent_weight * boost
    # A stable sort on the negated score keeps equal scores in file order: deterministic.
    order = np.argsort(-score, kind="stable")[:k]
    return [Passage(index.kb.entries[i], float(similarity[i]), float(score[i])) for i in order]


class KnowledgeRetriever(BaseRetriever):
    """LangChain retriever over a KnowledgeIndex.

    `invoke(query, understanding=..., query_vector=...)`: both keywords are optional; pass
    `query_vector` when the utterance is already embedded (the fusion runtime embeds every
    turn), so the encoder does not run twice.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: KnowledgeIndex
    embed: Embed
    k: int = DEFAULT_K
    intent_weight: float = DEFAULT_INTENT_WEIGHT

    def passages(
        self,
        query: str,
        *,
        understanding: Understanding | None = None,
        query_vector: Matrix | None = None,
    ) -> list[Passage]:
        vector = query_vector if query_vector is not None else self.embed([query])[0]
        return rank(self.index, vector, understanding, k=self.k, intent_weight=self.intent_weight)

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        **kwargs: Any,
    ) -> list[Document]:
        understanding = kwargs.get("understanding")
        vector = kwargs.get("query_vector")
        if understanding is not None and not isinstance(understanding, Understanding):
            raise TypeError("understanding must be an Understanding")
        passages = self.passages(query, understanding=understanding, query_vector=vector)
        return [p.as_document() for p in passages]


def passages_from_documents(documents: Sequence[Document], kb: KnowledgeBase) -> list[Passage]:
    """Documents this retriever returned, back as passages (unknown ids are skipped)."""
    out: list[Passage] = []
    for doc in documents:
        entry = kb.get(str(doc.metadata.get("id", "")))
        if entry is not None:
            out.append(
                Passage(
                    entry,
                    float(doc.metadata.get("similarity", 0.0)),
                    float(doc.metadata.get("score", 0.0)),
                )
            )
    return out


def build_retriever(
    kb: KnowledgeBase,
    embed: Embed,
    *,
    k: int = DEFAULT_K,
    intent_weight: float = DEFAULT_INTENT_WEIGHT,
    cache: EmbeddingCache | None = None,
) -> KnowledgeRetriever:
    """Embed the knowledge base (blocking: a few hundred sentences; none with a `cache` that
    has them) and wrap it as a retriever."""
    return KnowledgeRetriever(
        index=KnowledgeIndex.build(kb, embed, cache),
        embed=embed,
        k=k,
        intent_weight=intent_weight,
    )
