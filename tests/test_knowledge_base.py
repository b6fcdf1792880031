"""The knowledge base: coverage of every supported intent, validation, and retrieval over it.

Retrieval runs on the real text encoder (all-MiniLM-L6-v2 from its PyPI package, on the
CPU). `shared_retriever()` embeds the knowledge base once per test run; the other response
tests import it from here.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from langchain_core.documents import Document

from assistant.app.settings import Settings
from assistant.replies.knowledge_base import (
    BANKING77_INTENTS,
    CONVERSATION_INTENTS,
    KNOWLEDGE_DIR,
    SUPPORTED_INTENTS,
    KnowledgeBase,
    KnowledgeBaseError,
    load_knowledge_base,
)
from assistant.replies.retrieval import (
    Embed,
    EmbeddingCache,
    KnowledgeIndex,
    KnowledgeRetriever,
    build_retriever,
    embed_in_batches,
    passages_from_documents,
)
from assistant.replies.understanding import Understanding

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@functools.cache
def shared_embed() -> Embed:
    from fusion import TextEncoder, select_device

    return TextEncoder(select_device("cpu")).encode


@functools.cache
def shared_kb() -> KnowledgeBase:
    return load_knowledge_base()


@functools.cache
def shared_retriever() -> KnowledgeRetriever:
    return build_retriever(shared_kb(), shared_embed())


def _data_dir() -> Path | None:
    value = os.environ.get("ASSISTANT_DATA_DIR")
    candidates = [Path(value)] if value else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    return next((p for p in candidates if (p / "banking77").is_dir()), None)


def test_every_supported_intent_has_exactly_one_answer() -> None:
    kb = shared_kb()
    assert kb.missing() == []
    assert sorted(kb.intents) == sorted(SUPPORTED_INTENTS)
    assert len(kb) == len(BANKING77_INTENTS) + len(CONVERSATION_INTENTS) == 82
    assert len({entry.id for entry in kb}) == len(kb)


@pytest.mark.skipif(_data_dir() is None, reason="needs ASSISTANT_DATA_DIR (the shared data sets)")
def test_banking77_intents_match_the_data_set() -> None:
    data = _data_dir()
    assert data is not None
    categories = json.loads((data / "banking77/banking_data/categories.json").read_text())
    assert sorted(categories) == sorted(BANKING77_INTENTS)


def test_answers_are_written_to_be_safe_to_send() -> None:
    """No links, phone numbers or figures that could pass for real ones; questions end in ?."""
    looks_real = re.compile(r"https?://|www\.|@|\d{3,}|\+\d")
    for entry in shared_kb():
        voice = () if entry.voice_answer is None else (entry.voice_answer,)
        for text in (entry.answer, *voice, *entry.facts, *entry.follow_ups):
            assert not looks_real.search(text), f"{entry.id}: {text!r}"
        assert entry.answer[-1] in ".!?", entry.id
        assert all(q.endswith("?") for q in entry.follow_ups), entry.id


def _copy_knowledge(tmp_path: Path) -> Path:
    target = tmp_path / "knowledge"
    shutil.copytree(KNOWLEDGE_DIR, target)
    return target


def test_loading_fails_when_an_intent_has_no_answer(tmp_path: Path) -> None:
    folder = _copy_knowledge(tmp_path)
    path = folder / "cash.toml"
    text = path.read_text()
    start = text.index('[[answer]]\nid = "kb-atm-support"')
    end = text.index("[[answer]]", start + 1)
    path.write_text(text[:start] + text[end:])
    with pytest.raises(KnowledgeBaseError, match="no answer for intent\\(s\\): atm_support"):
        load_knowledge_base(folder)
    # Without the coverage requirement the rest still loads.
    assert "atm_support" not in load_knowledge_base(folder, required=None).intents


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('title = "using ATMs"\n', "", 1), "'title' must be"),
        (lambda t: t.replace('id = "kb-atm-support"', 'id = "kb-cash-withdrawal-charge"'), "both"),
        (lambda t: t.replace("Are you planning to withdraw cash abroad?", "Tell me."), "question"),
        (lambda t: t.replace('title = "using ATMs"', 'title = "x"\ncolour = "red"'), "unknown"),
        (lambda t: t.replace('id = "kb-atm-support"', 'id = "atm"'), "kb-"),
        (lambda t: t + "\n[[answer]\n", "not valid TOML"),
        (lambda t: t.replace('intent = "atm_support"', 'intent = "atm_chat"'), "atm_support"),
    ],
)
def test_loading_rejects_malformed_entries(tmp_path: Path, edit: object, message: str) -> None:
    folder = _copy_knowledge(tmp_path)
    path = folder / "cash.toml"
    assert callable(edit)
    path.write_text(edit(path.read_text()))
    with pytest.raises(KnowledgeBaseError, match=message):
        load_knowledge_base(folder)


def test_out_of_scope_labels_map_to_the_out_of_scope_answer() -> None:
    kb = shared_kb()
    oos = kb.for_intent("out_of_scope")
    assert oos is not None and kb.for_intent("oos") is oos
    assert kb.for_intent(None) is None and kb.for_intent("no_such_intent") is None


def test_retrieval_finds_answers_and_small_talk_from_text_alone() -> None:
    retriever = shared_retriever()
    expectations = {
        "hi there": "greeting",
        "thank you so much": "thanks",
        "ok bye then": "goodbye",
        "I want to talk to a real person": "handoff",
        "my new card still has not arrived in the post": "card_arrival",
        "how do I add my card to apple pay": "apple_pay_or_google_pay",
        "I forgot my passcode and can't log in": "passcode_forgotten",
    }
    for text, intent in expectations.items():
        top = retriever.passages(text)[0]
        assert top.entry.intent == intent, (text, top)


def test_a_confident_intent_brings_its_answer_to_the_top() -> None:
    retriever = shared_retriever()
    text = "I was charged when I took money out"
    understanding = Understanding(
        intent="cash_withdrawal_charge",
        confidence=0.9,
        top2=(("cash_withdrawal_charge", 0.9), ("wrong_amount_of_cash_received", 0.05)),
    )
    weighted = retriever.passages(text, understanding=understanding)
    assert weighted[0].entry.intent == "cash_withdrawal_charge"
    assert weighted[0].score == pytest.approx(weighted[0].similarity + 0.5 * 0.9, abs=1e-5)
    # A weak belief barely moves the text's own ranking.
    unsure = Understanding(intent="age_limit", confidence=0.05)
    assert retriever.passages(text, understanding=unsure)[0].entry.intent != "age_limit"


def test_retriever_is_a_langchain_runnable_and_reuses_a_given_embedding() -> None:
    retriever = shared_retriever()
    text = "how long does a transfer take"
    docs = retriever.invoke(text)
    assert all(isinstance(d, Document) for d in docs) and len(docs) == retriever.k
    assert docs[0].metadata["intent"] == "transfer_timing"
    assert "[kb-transfer-timing]" in docs[0].page_content
    vector = shared_embed()([text])[0]
    again = retriever.invoke("ignored when a vector is given", query_vector=vector)
    assert [d.id for d in again] == [d.id for d in docs]
    passages = passages_from_documents(docs, shared_kb())
    assert [p.entry.id for p in passages] == [d.id for d in docs]


def test_batched_embedding_keeps_input_order() -> None:
    texts = ["a much longer sentence about card delivery times abroad", "hi", "card", "pin"]
    whole = shared_embed()(texts)
    batched = embed_in_batches(shared_embed(), texts, batch_size=2)
    assert np.allclose(whole, batched, atol=1e-5)


def test_an_entrys_similarity_is_its_best_rows() -> None:
    index = shared_retriever().index
    kb = shared_kb()
    texts = [t for entry in kb for t in entry.retrieval_texts()]
    vectors = shared_embed()(texts)
    query = shared_embed()(["my card payment was declined"])[0]
    rows = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)) @ query
    expected, start = [], 0
    for entry in kb:
        count = len(entry.retrieval_texts())
        expected.append(rows[start : start + count].max())
        start += count
    np.testing.assert_allclose(index.similarities(query), expected, atol=1e-5)
    for position, entry in enumerate(kb):
        assert kb.position_for_intent(entry.intent) == position
    assert kb.position_for_intent("oos") == kb.entries.index(kb.for_intent("out_of_scope"))
    assert kb.position_for_intent("no_such_intent") is None


def test_the_embeddings_are_cached_between_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kb = shared_kb()
    calls: list[int] = []

    def counting(texts: Sequence[str]) -> np.ndarray:
        calls.append(len(texts))
        return shared_embed()(texts)

    def unused(texts: Sequence[str]) -> np.ndarray:
        raise AssertionError("embedded although the cache holds the vectors")

    cache = EmbeddingCache(tmp_path / "cache", "encoder-a")
    first = KnowledgeIndex.build(kb, counting, cache)
    assert sum(calls) == sum(len(e.retrieval_texts()) for e in kb)
    (stored,) = (tmp_path / "cache").glob("knowledge-*.npy")
    again = KnowledgeIndex.build(kb, unused, cache)
    np.testing.assert_array_equal(again.vectors, first.vectors)
    np.testing.assert_array_equal(again.starts, first.starts)
    # Another encoder, or other texts, is another file.
    calls.clear()
    KnowledgeIndex.build(kb, counting, EmbeddingCache(tmp_path / "cache", "encoder-b"))
    assert calls and len(list((tmp_path / "cache").glob("knowledge-*.npy"))) == 2
    # A damaged file is recomputed and replaced.
    stored.write_bytes(b"not an array")
    calls.clear()
    KnowledgeIndex.build(kb, counting, cache)
    assert calls
    np.testing.assert_array_equal(KnowledgeIndex.build(kb, unused, cache).vectors, first.vectors)
    # A folder that cannot be written costs the embedding, with a warning; nothing fails.
    blocked = tmp_path / "file"
    blocked.write_text("")
    with caplog.at_level("WARNING"):
        index = KnowledgeIndex.build(kb, counting, EmbeddingCache(blocked / "cache", "encoder-a"))
    np.testing.assert_array_equal(index.vectors, first.vectors)
    assert "not cached" in caplog.text


def test_the_cache_folder_setting() -> None:
    assert Settings.from_env({}).cache_dir == "var/cache"
    assert Settings.from_env({"ASSISTANT_CACHE_DIR": "/srv/cache"}).cache_dir == "/srv/cache"
    assert Settings.from_env({"ASSISTANT_CACHE_DIR": "none"}).cache_dir is None
