"""Intent and emotion heads: shapes, the empty-profile guarantee, seeding, calibration, weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
import numpy.typing as npt
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fusion.heads import Understanding
from fusion.heads.checkpoint import (
    EMOTION_WEIGHTS,
    INTENT_WEIGHTS,
    IntentArtifact,
    load_emotion,
    load_intent,
    save_emotion,
    save_intent,
)
from fusion.heads.graph import quantize_blocks
from fusion.heads.labels import (
    GOEMOTIONS_TO_EKMAN,
    GOEMOTIONS_TO_SERVICE,
    OUT_OF_SCOPE,
    RAVDESS,
    RAVDESS_TO_SERVICE,
    SERVICE_EMOTIONS,
    mapping_matrix,
)
from fusion.heads.lexical import lexical_batch, lexical_ids, lexical_tokens
from fusion.heads.modules import (
    EmotionModel,
    EnsembleConfig,
    EnsembleMLP,
    FiLMConfig,
    IntentModel,
    LexicalBag,
    LexiconConfig,
)
from fusion.training.calibration import expected_calibration_error, fit_temperature
from fusion.training.data import load_banking77, load_clinc_oos, load_goemotions
from fusion.training.heads.members import FitConfig, fit_member, one_hot, soft_targets
from fusion.training.heads.scores import single_label

INTENTS = (*(f"intent_{i}" for i in range(77)), OUT_OF_SCOPE)


def _nonzero_film(model: IntentModel) -> None:
    with torch.no_grad():
        for p in model.film.parameters():
            p.normal_(0.0, 0.5)


class Serving(TypedDict, total=False):
    graph: bool
    quantize: bool


def _understanding(
    seed: int = 0, buckets: int = 0, intent_buckets: int = 0, **serving: Unpack[Serving]
) -> Understanding:
    torch.manual_seed(seed)
    intent = IntentModel(
        EnsembleConfig(members=2, hidden=32),
        FiLMConfig(target=32),
        LexiconConfig(intent_buckets, members=2, out_dim=78),
    )
    _nonzero_film(intent)
    if intent_buckets:
        with torch.no_grad():
            intent.lexicon.table.normal_(0.0, 2.0)
    emotion = EmotionModel(
        EnsembleConfig(members=2, hidden=16, out_dim=28),
        EnsembleConfig(members=2, in_dim=136, hidden=16, out_dim=8, input_scale=1.0),
        LexiconConfig(buckets, members=2),
    )
    with torch.no_grad():
        emotion.lexicon.table.normal_(0.0, 2.0)
    emotion.get_buffer("text_map").copy_(
        torch.from_numpy(mapping_matrix(_GOEMOTIONS, SERVICE_EMOTIONS, GOEMOTIONS_TO_SERVICE))
    )
    emotion.get_buffer("speech_map").copy_(
        torch.from_numpy(mapping_matrix(RAVDESS, SERVICE_EMOTIONS, RAVDESS_TO_SERVICE))
    )
    artifact = IntentArtifact(intent.eval(), INTENTS, 1.3, 0.2, None)
    return Understanding(artifact, emotion.eval(), torch.device("cpu"), **serving)


# The served paths on a CPU that compute what the modules compute, to 1e-5: the torch one
# (`ServingHeads`, a GPU's) and the ONNX Runtime graphs in float32. The default graphs hold
# the intent's largest layers in 8 bits (test_quantised_intent_layers_stay_close_to_the_module).
EXACT = [pytest.param({"graph": False}, id="torch"), pytest.param({"quantize": False}, id="graph")]


_GOEMOTIONS = tuple(GOEMOTIONS_TO_SERVICE)


MESSAGES = ["Thanks sooooo much!!! 😊", "WTF, this is the THIRD time", "sorry, I meant Tuesday"]


def _unit(rows: int, dim: int, seed: int) -> npt.NDArray[np.float32]:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    out: npt.NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def test_shapes_of_the_modules() -> None:
    model = IntentModel(EnsembleConfig(members=3, hidden=64), FiLMConfig(target=64)).eval()
    out = model(torch.randn(5, 384), torch.randn(5, 128), torch.ones(5, dtype=torch.bool))
    assert out.shape == (3, 5, 78)
    mlp = EnsembleMLP(EnsembleConfig(members=2, in_dim=136, hidden=8, out_dim=8))
    assert mlp(torch.randn(4, 136)).shape == (2, 4, 8)


def test_an_absent_profile_is_exactly_the_text_only_model() -> None:
    torch.manual_seed(0)
    model = IntentModel(EnsembleConfig(members=2, hidden=32), FiLMConfig(target=32)).eval()
    _nonzero_film(model)
    text, profile = torch.randn(6, 384), torch.randn(6, 128)
    absent = model(text, profile, torch.zeros(6, dtype=torch.bool))
    assert torch.equal(absent, model.trunk(text))
    present = model(text, profile, torch.ones(6, dtype=torch.bool))
    assert not torch.allclose(present, absent)


def test_a_fresh_film_generator_starts_as_the_identity() -> None:
    model = IntentModel(EnsembleConfig(members=1, hidden=16), FiLMConfig(target=16)).eval()
    text = torch.randn(3, 384)
    with_profile = model(text, torch.randn(3, 128), torch.ones(3, dtype=torch.bool))
    assert torch.allclose(with_profile, model.trunk(text))


def test_predictions_are_calibrated_distributions() -> None:
    heads = _understanding()
    text = _unit(4, 384, 1)
    profiles = [_unit(1, 128, 2)[0], None, None, _unit(1, 128, 3)[0]]
    speech = [None, np.ones(136, np.float32), None, np.zeros(136, np.float32)]
    results = heads.predict_many(text, profiles, speech)
    assert len(results) == 4
    for r in results:
        assert r.emotion in SERVICE_EMOTIONS
        assert sum(r.emotion_scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert 0.0 <= r.intent_confidence <= 1.0
        assert len(r.top2) == 2 and r.top2[0][1] >= r.top2[1][1]
        assert r.intent in INTENTS
    probs = heads.intent_probs(text, np.zeros((4, 128), np.float32), np.zeros(4, np.bool_))
    assert np.allclose(probs.sum(axis=-1), 1.0, atol=1e-5)


def test_empty_profile_through_the_wrapper_matches_no_profile_at_all() -> None:
    heads = _understanding()
    text = _unit(3, 384, 4)
    a = heads.predict_many(text, None, None)
    b = heads.predict_many(text, [None, None, None], [None, None, None])
    assert a == b


def test_a_profile_from_another_fusion_model_is_ignored() -> None:
    heads = _understanding()
    text = _unit(2, 384, 5)
    profiles = [_unit(1, 128, 6)[0], _unit(1, 128, 7)[0]]
    conditioned = heads.predict_many(text, profiles)
    heads.use_profile = False
    assert heads.predict_many(text, profiles) == heads.predict_many(text)
    assert conditioned != heads.predict_many(text)


def test_wrong_dimensions_are_rejected() -> None:
    heads = _understanding()
    with pytest.raises(ValueError, match="profile vector has 12 values"):
        heads.predict_many(_unit(1, 384, 0), [np.zeros(12, np.float32)])
    with pytest.raises(ValueError, match="2 speech vectors for 1 messages"):
        heads.predict_many(_unit(1, 384, 0), None, [None, None])
    assert heads.predict_many(np.zeros((0, 384), np.float32)) == []


def test_lexical_cues_are_words_symbols_bigrams_and_shouting() -> None:
    tokens, shouted = lexical_tokens(MESSAGES[0])
    assert tokens == ["thanks", "soo", "much", "!", "!", "😊"] and not shouted
    assert lexical_tokens(MESSAGES[1])[1]
    assert lexical_tokens("It\u2019s fine") == lexical_tokens("it's fine")
    ids = lexical_ids(MESSAGES[2], 64)
    assert len(ids) == len(set(ids)) and all(0 <= i < 64 for i in ids)
    # crc32, not the per-process salted hash(): the same ids in every process.
    assert sorted(lexical_ids("thanks", 1 << 20)) == [151535, 341598, 984316]
    # Word order matters through the bigrams.
    assert set(lexical_ids("not bad", 1 << 20)) != set(lexical_ids("bad not", 1 << 20))
    flat, offsets, weights = lexical_batch(MESSAGES, 64)
    lengths = [len(lexical_ids(m, 64)) for m in MESSAGES]
    assert flat.tolist() == [i for m in MESSAGES for i in lexical_ids(m, 64)]
    assert offsets.tolist() == [0, lengths[0], lengths[0] + lengths[1]]
    first = weights[: lengths[0]]
    assert torch.allclose((first**2).sum(), torch.tensor(1.0))


def test_the_lexical_branch_moves_only_the_emotion_and_only_with_texts() -> None:
    made = _understanding(buckets=64)
    # Checkpoints hold float16 weights, which the serving path reads as they are.
    for model in (made.intent_model, made.emotion_model):
        model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    artifact = IntentArtifact(made.intent_model, INTENTS, made.temperature, 0.2, None)
    heads = Understanding(artifact, made.emotion_model, torch.device("cpu"))
    text = _unit(3, 384, 10)
    plain = heads.predict_many(text)
    cued = heads.predict_many(text, texts=MESSAGES)
    assert [r.intent_confidence for r in plain] == [r.intent_confidence for r in cued]
    assert [r.emotion_scores for r in plain] != [r.emotion_scores for r in cued]
    lexical = lexical_batch(MESSAGES, 64)
    log_p, _ = heads.emotion_model(
        torch.from_numpy(text), torch.zeros(3, 136), torch.zeros(3, dtype=torch.bool), lexical
    )
    for r, row in zip(cued, log_p.exp().tolist(), strict=True):
        assert list(r.emotion_scores.values()) == pytest.approx(row, abs=1e-5)
    with pytest.raises(ValueError, match="2 texts for 3 messages"):
        heads.predict_many(text, texts=MESSAGES[:2])
    without = _understanding(buckets=0)
    assert without.predict_many(text, texts=MESSAGES) == without.predict_many(text)


def test_lexical_members_stack_and_the_branch_survives_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    bags = [LexicalBag(LexiconConfig(32, 1, 28)) for _ in range(2)]
    for bag in bags:
        torch.nn.init.normal_(bag.table)
    stacked = LexicalBag.stack(bags)
    grams = lexical_batch(MESSAGES, 32)
    assert torch.allclose(stacked(grams), torch.cat([b(grams) for b in bags]))
    model = _understanding(buckets=32).emotion_model
    save_emotion(tmp_path / "emotion.pt", model, {})
    loaded, _ = load_emotion(tmp_path / "emotion.pt")
    assert loaded.lexicon.config == model.lexicon.config
    assert torch.allclose(loaded.lexicon.table, model.lexicon.table.half().float())


def test_the_same_seed_trains_the_same_head() -> None:
    x = _unit(64, 384, 8)
    y = one_hot(np.arange(64) % 5, 5)
    cfg = EnsembleConfig(members=1, hidden=16, out_dim=5)
    fit = FitConfig(epochs=2, batch_size=16, seed=3)
    a = fit_member(cfg, fit, x, y, progress=False)
    b = fit_member(cfg, fit, x, y, progress=False)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 6, generator=gen) * 2.0
    labels = torch.multinomial(torch.softmax(true_logits, -1), 1, generator=gen).squeeze(1)
    t = fit_temperature(true_logits * 3.0, labels)
    assert t == pytest.approx(3.0, rel=0.15)
    probs = torch.softmax(true_logits, -1).numpy()
    assert expected_calibration_error(probs, labels.numpy()) < 0.03


def test_mappings_cover_every_label_once() -> None:
    assert set(GOEMOTIONS_TO_SERVICE.values()) == set(SERVICE_EMOTIONS)
    assert set(GOEMOTIONS_TO_SERVICE) == set(GOEMOTIONS_TO_EKMAN)
    assert set(RAVDESS_TO_SERVICE) == set(RAVDESS)
    m = mapping_matrix(RAVDESS, SERVICE_EMOTIONS, RAVDESS_TO_SERVICE)
    assert np.all(m.sum(axis=1) == 1.0)


def test_multi_label_rows_become_soft_targets_and_single_labels() -> None:
    names = ("anger", "annoyance", "joy")
    matrix = mapping_matrix(names, SERVICE_EMOTIONS, GOEMOTIONS_TO_SERVICE)
    rows = ((0,), (0, 1), (2,))
    assert soft_targets(rows, 3)[1].tolist() == [0.5, 0.5, 0.0]
    single = single_label(rows, matrix)
    angry, satisfied = SERVICE_EMOTIONS.index("angry"), SERVICE_EMOTIONS.index("satisfied")
    assert single.tolist() == [angry, -1, satisfied]


@pytest.mark.skipif(
    not (INTENT_WEIGHTS.exists() and EMOTION_WEIGHTS.exists()), reason="weights not trained"
)
def test_shipped_weights_load_offline_and_predict() -> None:
    heads = Understanding.load(torch.device("cpu"))
    assert heads.intents[-1] == OUT_OF_SCOPE and len(heads.intents) == 78
    results = heads.predict_many(_unit(2, 384, 9), [_unit(1, 128, 1)[0], None])
    assert all(sum(r.emotion_scores.values()) == pytest.approx(1.0, abs=1e-5) for r in results)
    total = sum(p.stat().st_size for p in INTENT_WEIGHTS.parent.glob("*.pt"))
    assert total <= 30 * 1024 * 1024


def _data_dir() -> Path:
    root = os.environ.get("ASSISTANT_DATA_DIR")
    if not root:
        pytest.skip("set ASSISTANT_DATA_DIR to the shared data folder")
    return Path(root)


def test_data_sets_load_with_the_expected_counts_and_labels() -> None:
    data = _data_dir()
    train = load_banking77(data, "train")
    assert len(train.texts) == 10_003 and len(train.intents) == 77
    assert len(load_clinc_oos(data, "oos_test")) == 1000
    go = load_goemotions(data, "dev")
    assert len(go.texts) == 5426
    assert set(go.names) == set(GOEMOTIONS_TO_SERVICE)
    ekman = load_goemotions(data, "dev", "ekman")
    assert set(ekman.names) == set(GOEMOTIONS_TO_EKMAN.values())


@pytest.mark.parametrize("serving", EXACT)
def test_the_serving_path_computes_what_the_modules_compute(serving: Serving) -> None:
    made = _understanding()
    # Checkpoints hold float16 weights, which the serving path reads as they are.
    for model in (made.intent_model, made.emotion_model):
        model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    artifact = IntentArtifact(made.intent_model, INTENTS, made.temperature, 0.2, None)
    heads = Understanding(artifact, made.emotion_model, torch.device("cpu"), **serving)
    text = _unit(4, 384, 11)
    profile = _unit(4, 128, 12)
    t = torch.from_numpy(text)
    for present in ([True] * 4, [True, False, True, False], [False] * 4):
        on = np.array(present)
        logits = heads.intent_model(t, torch.from_numpy(profile), torch.from_numpy(on))
        expected = torch.softmax(logits / heads.temperature, dim=-1).mean(dim=0).detach().numpy()
        assert np.allclose(heads.intent_probs(text, profile, on), expected, atol=1e-5)
    speech = torch.from_numpy(_unit(4, 136, 13))
    has_speech = torch.tensor([True, False, True, True])
    log_p, decision = heads.emotion_model(t, speech, has_speech)
    results = heads.predict_many(
        text,
        None,
        [s if on else None for s, on in zip(speech.numpy(), has_speech.tolist(), strict=True)],
    )
    for r, row, label in zip(
        results, log_p.exp().tolist(), decision.argmax(-1).tolist(), strict=True
    ):
        assert list(r.emotion_scores.values()) == pytest.approx(row, abs=1e-5)
        assert r.emotion == SERVICE_EMOTIONS[label]


def test_quantised_intent_layers_stay_close_to_the_module() -> None:
    made = _understanding(intent_buckets=64)
    for model in (made.intent_model, made.emotion_model):
        model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    artifact = IntentArtifact(made.intent_model, INTENTS, made.temperature, 0.2, None)
    heads = Understanding(artifact, made.emotion_model, torch.device("cpu"))
    exact = Understanding(artifact, made.emotion_model, torch.device("cpu"), quantize=False)
    text, profile = _unit(64, 384, 30), _unit(64, 128, 31)
    on = np.arange(64) % 3 > 0
    texts = [MESSAGES[i % 3] + f" #{i}" for i in range(64)]
    served = heads.intent_probs(text, profile, on, texts)
    reference = exact.intent_probs(text, profile, on, texts)
    assert not np.array_equal(served, reference)
    assert np.abs(served - reference).max() < 0.01
    assert (served.argmax(axis=1) == reference.argmax(axis=1)).mean() >= 0.95
    # The emotion heads keep float32 weights: the same outputs.
    for a, b in zip(heads.predict_many(text), exact.predict_many(text), strict=True):
        assert list(a.emotion_scores.values()) == pytest.approx(list(b.emotion_scores.values()))


def test_blocks_quantise_to_the_nearest_step_of_their_scale() -> None:
    weight = np.random.default_rng(0).standard_normal((6, 256)).astype(np.float32)
    weight[2, :128] = 0.0  # an all-zero block keeps a usable scale
    q, scales = quantize_blocks(weight, 128)
    assert q.shape == (6, 2, 128) and q.dtype == np.uint8 and scales.shape == (12,)
    restored = (q.astype(np.float32) - 128) * scales.reshape(6, 2, 1)
    step = scales.repeat(128).reshape(6, 256)
    assert np.all(np.abs(restored.reshape(6, 256) - weight) <= step / 2 + 1e-7)
    assert np.allclose(scales.reshape(6, 2)[0], np.abs(weight[0].reshape(2, 128)).max(1) / 127)
    with pytest.raises(ValueError, match="blocks of 100"):
        quantize_blocks(weight, 100)


@pytest.mark.parametrize("serving", EXACT)
@pytest.mark.parametrize("emotion_buckets", [64, 32, 0])
def test_the_intent_lexical_branch_is_served_as_the_module_computes_it(
    emotion_buckets: int, serving: Serving, tmp_path: Path
) -> None:
    made = _understanding(buckets=emotion_buckets, intent_buckets=64)
    for model in (made.intent_model, made.emotion_model):
        model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    artifact = IntentArtifact(made.intent_model, INTENTS, made.temperature, 0.2, None)
    save_intent(tmp_path / "intent.pt", artifact)
    loaded = load_intent(tmp_path / "intent.pt")
    assert loaded.model.lexicon.config == made.intent_model.lexicon.config
    heads = Understanding(loaded, made.emotion_model, torch.device("cpu"), **serving)
    text, profile = _unit(3, 384, 14), _unit(3, 128, 15)
    on = np.array([True, False, True])
    logits = heads.intent_model(
        torch.from_numpy(text),
        torch.from_numpy(profile),
        torch.from_numpy(on),
        lexical_batch(MESSAGES, 64),
    )
    expected = torch.softmax(logits / heads.temperature, dim=-1).mean(dim=0).detach().numpy()
    assert np.allclose(heads.intent_probs(text, profile, on, MESSAGES), expected, atol=1e-5)
    plain = heads.intent_probs(text, profile, on)
    assert not np.allclose(plain, expected, atol=1e-3)
    # Both heads' cues come from one featurisation; the emotion's are as without the intent's.
    cued = heads.predict_many(text, None, None, MESSAGES)
    no_cues = IntentModel(EnsembleConfig(members=2, hidden=32), FiLMConfig(target=32))
    plain_intent = IntentArtifact(no_cues.eval(), INTENTS, made.temperature, 0.2, None)
    alone = Understanding(
        plain_intent, heads.emotion_model, torch.device("cpu"), **serving
    ).predict_many(text, None, None, MESSAGES)
    for a, b in zip(cued, alone, strict=True):
        assert list(a.emotion_scores.values()) == pytest.approx(list(b.emotion_scores.values()))


@pytest.mark.parametrize(
    "serving", [pytest.param({}, id="graph-8-bit"), *EXACT]
)  # fmt: skip
def test_a_lone_message_gets_what_it_gets_in_a_batch(serving: Serving) -> None:
    # Each row is quantised on its own, and lexical rows are padded per batch.
    made = _understanding(buckets=64, intent_buckets=64)
    for model in (made.intent_model, made.emotion_model):
        model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    artifact = IntentArtifact(made.intent_model, INTENTS, made.temperature, 0.2, None)
    heads = Understanding(artifact, made.emotion_model, torch.device("cpu"), **serving)
    texts = [*MESSAGES, "", "a much longer message, with many more words than the others have"]
    text = _unit(5, 384, 16)
    profiles = [_unit(1, 128, 17)[0], None, _unit(1, 128, 18)[0], None, _unit(1, 128, 25)[0]]
    speech = [None, _unit(1, 136, 19)[0], _unit(1, 136, 20)[0], None, None]
    batch = heads.predict_many(text, profiles, speech, texts)
    for i, together in enumerate(batch):
        (alone,) = heads.predict_many(text[i : i + 1], [profiles[i]], [speech[i]], [texts[i]])
        assert (alone.intent, alone.emotion) == (together.intent, together.emotion)
        assert alone.intent_confidence == pytest.approx(together.intent_confidence, abs=1e-5)
        assert [q for _, q in alone.top2] == pytest.approx([q for _, q in together.top2], abs=1e-5)
        assert list(alone.emotion_scores.values()) == pytest.approx(
            list(together.emotion_scores.values()), abs=1e-5
        )


@pytest.mark.parametrize("serving", EXACT)
def test_the_film_logit_bias_is_served_as_the_module_computes_it(serving: Serving) -> None:
    torch.manual_seed(2)
    intent = IntentModel(EnsembleConfig(members=2, hidden=32), FiLMConfig(target=32, classes=78))
    _nonzero_film(intent)
    intent.load_state_dict({k: v.half().float() for k, v in intent.state_dict().items()})
    emotion = _understanding().emotion_model
    heads = Understanding(
        IntentArtifact(intent.eval(), INTENTS, 1.7, 0.2, None),
        emotion,
        torch.device("cpu"),
        **serving,
    )
    text, profile = _unit(3, 384, 21), _unit(3, 128, 22)
    t, p = torch.from_numpy(text), torch.from_numpy(profile)
    for present in ([True] * 3, [False, True, True]):
        on = np.array(present)
        logits = heads.intent_model(t, p, torch.from_numpy(on))
        expected = torch.softmax(logits / 1.7, dim=-1).mean(dim=0).detach().numpy()
        assert np.allclose(heads.intent_probs(text, profile, on), expected, atol=1e-5)
    # The generator's logit bias is large enough to matter at this tolerance.
    assert heads.intent_model.film(p, torch.ones(3, dtype=torch.bool))[2].abs().mean() > 0.1


def test_the_served_emotion_decision_keeps_the_text_offsets() -> None:
    heads = _understanding()
    offsets = torch.tensor([0.0, -2.0, 1.5, 0.0, 3.0, -1.0, 0.5])
    heads.emotion_model.get_buffer("text_offsets").copy_(offsets)
    heads = Understanding(
        IntentArtifact(heads.intent_model, INTENTS, heads.temperature, 0.2, None),
        heads.emotion_model,
        torch.device("cpu"),
    )
    text = _unit(6, 384, 23)
    speech = torch.from_numpy(_unit(6, 136, 24))
    for has in ([False] * 6, [True, False, True, False, False, True]):
        has_speech = torch.tensor(has)
        log_p, decision = heads.emotion_model(torch.from_numpy(text), speech, has_speech)
        results = heads.predict_many(
            text, None, [s if on else None for s, on in zip(speech.numpy(), has, strict=True)]
        )
        labels = [SERVICE_EMOTIONS.index(r.emotion) for r in results]
        assert labels == decision.argmax(-1).tolist()
        assert labels != log_p.argmax(-1).tolist()
        for r, row in zip(results, log_p.exp().tolist(), strict=True):
            assert list(r.emotion_scores.values()) == pytest.approx(row, abs=1e-5)


def test_a_batch_of_long_messages_runs_in_slices_with_the_same_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    heads = _understanding(buckets=64, intent_buckets=64)
    text = _unit(5, 384, 40)
    texts = [" ".join(f"word{j}" for j in range(i * 40)) for i in range(5)]
    whole = heads.predict_many(text, None, None, texts)
    monkeypatch.setattr("fusion.heads.graph._GATHER_BYTES", 1)  # one message per run
    sliced = heads.predict_many(text, None, None, texts)
    for a, b in zip(whole, sliced, strict=True):
        assert (a.intent, a.emotion) == (b.intent, b.emotion)
        assert a.intent_confidence == pytest.approx(b.intent_confidence, abs=1e-5)
