"""The fusion model: shapes, masks, gradients of every loss term, determinism, inference."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fusion.behaviour import BehaviourTensors, Event, collate, featurize_events
from fusion.inference import WEIGHTS_PATH, FuseRequest, FusionInference, save_checkpoint
from fusion.model import (
    MODALITIES,
    STRATEGIES,
    FusionModel,
    FusionModelConfig,
    FusionOutput,
    joint_loss,
)

B, SPEECH = 6, 20
NOW = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)
CPU = torch.device("cpu")


def small(strategy: str = "gated", **kw: Any) -> FusionModelConfig:
    return replace(
        FusionModelConfig(
            strategy=strategy, speech_dim=SPEECH, shared_dim=16, hidden_dim=32, n_intents=7
        ),
        **kw,
    )


def histories(n: int = B) -> BehaviourTensors:
    items = []
    for i in range(n):
        events = [
            Event("card_payment", NOW - timedelta(hours=i + 1), {"status": "declined"}),
            Event("page_view", NOW - timedelta(minutes=5 * i + 1), {"page": "help"}),
            Event(f"unknown_{i}", NOW - timedelta(days=i), {"k": i}),
        ][: 1 + i % 3]
        items.append(featurize_events(events, NOW))
    return BehaviourTensors.from_batch(collate(items), CPU)


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, BehaviourTensors, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.normalize(torch.randn(B, 384, generator=g), dim=-1)
    speech = torch.randn(B, SPEECH, generator=g)
    masks = torch.tensor(
        [
            [True, True, True],
            [True, False, True],
            [True, True, False],
            [False, True, True],
            [True, False, False],
            [False, False, True],
        ]
    )
    return text, speech, histories(), masks


def labels() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(B) % 7, torch.arange(B) % 5


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_shapes_and_gates(strategy: str) -> None:
    torch.manual_seed(0)
    model = FusionModel(small(strategy)).eval()
    text, speech, beh, masks = inputs()
    out = model(text, speech, beh, masks)
    assert out.z.shape == (B, 16)
    assert out.gates.shape == (B, 3)
    assert out.intent_logits.shape == (B, 7)
    assert out.emotion_logits.shape == (B, 5)
    assert out.projections.shape == (B, 3, 16)
    assert out.recon_text.shape == (B, 384) and out.recon_speech.shape == (B, SPEECH)
    assert (out.gates[~masks] == 0).all(), "an absent modality has gate 0"
    torch.testing.assert_close(out.gates.sum(dim=1), torch.ones(B))
    assert (out.gates >= 0).all()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_masked_inputs_do_not_change_z(strategy: str) -> None:
    torch.manual_seed(0)
    model = FusionModel(small(strategy)).eval()
    text, speech, beh, masks = inputs()
    base = model(text, speech, beh, masks)
    other_text = torch.where(masks[:, :1], text, torch.full_like(text, float("nan")))
    other_speech = torch.where(masks[:, 1:2], speech, 100 * torch.randn_like(speech))
    absent_beh = ~masks[:, 2]
    other_beh = BehaviourTensors(
        torch.where(absent_beh[:, None], beh.names.flip(0), beh.names),
        beh.props,
        torch.where(absent_beh[:, None], beh.age_s * 7 + 3, beh.age_s),
        beh.mask,
    )
    changed = model(other_text, other_speech, other_beh, masks)
    torch.testing.assert_close(changed.z, base.z)
    torch.testing.assert_close(changed.gates, base.gates)
    # Unmasking speech for a row where it was absent does change that row.
    unmasked = masks.clone()
    unmasked[1, 1] = True
    assert not torch.allclose(model(text, other_speech, beh, unmasked).z[1], base.z[1])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_late_fusion_ignores_absent_modalities(strategy: str) -> None:
    torch.manual_seed(0)
    model = FusionModel(small(strategy, late_fusion=True)).eval()
    text, speech, beh, masks = inputs()
    base = model(text, speech, beh, masks)
    other_text = torch.where(masks[:, :1], text, torch.full_like(text, float("nan")))
    other_speech = torch.where(masks[:, 1:2], speech, 100 * torch.randn_like(speech))
    changed = model(other_text, other_speech, beh, masks)
    torch.testing.assert_close(changed.intent_logits, base.intent_logits)
    torch.testing.assert_close(changed.emotion_logits, base.emotion_logits)
    # The experts do speak: without them the logits differ.
    assert model.experts is not None
    with torch.no_grad():
        model.experts.weight.zero_()
        model.experts.bias.zero_()
    assert not torch.allclose(model(text, speech, beh, masks).intent_logits, base.intent_logits)


def test_all_subsets_cover_every_proper_combination() -> None:
    model = FusionModel(small("gated", subset_mode="all"))
    present = torch.ones(2, 3, dtype=torch.bool)
    present[1, 1] = False
    subsets = model.all_subsets(present)
    assert len(subsets) == 6
    assert {tuple(s[0].tolist()) for s in subsets} == {
        (a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1) if 0 < a + b + c < 3
    }
    assert all(not (s & ~present).any() for s in subsets)
    pair = FusionModel(small("gated", subset_mode="all", modalities=("text", "behaviour")))
    assert len(pair.all_subsets(present)) == 2
    with pytest.raises(ValueError):
        FusionModelConfig(subset_mode="some")


def test_no_modality_gives_zero_gates_and_finite_z() -> None:
    model = FusionModel(small("gated")).eval()
    text, speech, beh, _ = inputs()
    out = model(text, speech, beh, torch.zeros(B, 3, dtype=torch.bool))
    assert (out.gates == 0).all()
    assert torch.isfinite(out.z).all()


def test_config_restricts_modalities() -> None:
    model = FusionModel(small("gated", modalities=("text",))).eval()
    text, speech, beh, _masks = inputs()
    out = model(text, speech, beh, torch.ones(B, 3, dtype=torch.bool))
    assert out.gates[:, 0].eq(1).all() and out.gates[:, 1:].eq(0).all()
    with pytest.raises(ValueError):
        FusionModelConfig(strategy="average")
    with pytest.raises(ValueError):
        FusionModelConfig(modalities=("smell",))


def test_modality_dropout_keeps_one_present_modality() -> None:
    torch.manual_seed(0)
    model = FusionModel(small("gated", modality_dropout=0.9)).train()
    present = torch.ones(500, 3, dtype=torch.bool)
    present[::2, 1] = False
    kept = model.drop_modalities(present)
    assert kept.any(dim=1).all()
    assert not (kept & ~present).any()
    assert kept.float().mean() < 0.6


def _grads(model: FusionModel, prefix: str) -> list[torch.Tensor | None]:
    return [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]


def _all_nonzero(grads: list[torch.Tensor | None]) -> bool:
    return bool(grads) and all(g is not None and g.abs().sum() > 0 for g in grads)


def _loss(strategy: str) -> tuple[FusionModel, FusionOutput, torch.Tensor, BehaviourTensors]:
    torch.manual_seed(0)
    model = FusionModel(small(strategy, modality_dropout=0.0, dropout=0.0)).train()
    text, speech, beh, masks = inputs()
    return model, model(text, speech, beh, masks), text, beh


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gradients_reach_every_loss_terms_parameters(strategy: str) -> None:
    model, out, text, beh = _loss(strategy)
    terms = joint_loss(model, out, text, beh, *labels())
    for name in ("task", "adversarial", "discriminator", "reconstruction"):
        assert torch.isfinite(getattr(terms, name)) and getattr(terms, name) > 0, name
    terms.total.backward()  # type: ignore[no-untyped-call]
    for prefix in (
        "text_proj",
        "speech_proj",
        "behaviour_enc.name_emb",
        "behaviour_enc.prop_emb",
        "behaviour_enc.decay",
        "behaviour_proj",
        "fusion",
        "intent_head",
        "emotion_head",
        "discriminator",
        "decode_text",
        "decode_speech",
        "decode_behaviour",
    ):
        grads = [
            g
            for n, p in model.named_parameters()
            if n.startswith(prefix) and (g := p.grad) is not None
        ]
        assert grads and any(g.abs().sum() > 0 for g in grads), prefix
    # Nothing else is dead weight either. The GRU exists only under GRU pooling; the gated
    # fusion's last bias adds the same to every modality's gate logit, which the softmax over
    # them ignores: its gradient is zero but for rounding, whichever way the rounding falls.
    silent = [
        n
        for n, p in model.named_parameters()
        if p.grad is None or p.grad.abs().sum() == 0
        if not n.startswith("behaviour_enc.gru") and n != "fusion.gate.2.bias"
    ]
    assert not silent, silent


@pytest.mark.parametrize("subset_mode", ["random", "all"])
def test_late_fusion_experts_get_gradients(subset_mode: str) -> None:
    torch.manual_seed(0)
    cfg = small(
        "gated", late_fusion=True, subset_mode=subset_mode, label_smoothing=0.1, expert_weight=0.5
    )
    model = FusionModel(replace(cfg, modality_dropout=0.0, dropout=0.0)).train()
    text, speech, beh, masks = inputs()
    terms = joint_loss(model, model(text, speech, beh, masks), text, beh, *labels())
    terms.total.backward()  # type: ignore[no-untyped-call]
    assert _all_nonzero(_grads(model, "experts.")) and _all_nonzero(_grads(model, "fusion."))


def test_adversarial_terms_train_disjoint_parameters() -> None:
    model, out, text, beh = _loss("gated")
    terms = joint_loss(model, out, text, beh, *labels())
    terms.discriminator.backward(retain_graph=True)  # type: ignore[no-untyped-call]
    assert _all_nonzero(_grads(model, "discriminator"))
    assert all(g is None for g in _grads(model, "text_proj")), "L_D must not move projections"
    model.zero_grad(set_to_none=True)
    terms.adversarial.backward(retain_graph=True)  # type: ignore[no-untyped-call]
    assert all(g is None for g in _grads(model, "discriminator")), "L_G must not move D"
    assert _all_nonzero(_grads(model, "text_proj"))
    assert _all_nonzero(_grads(model, "speech_proj"))
    model.zero_grad(set_to_none=True)
    terms.reconstruction.backward()  # type: ignore[no-untyped-call]
    assert _all_nonzero(_grads(model, "decode_speech"))
    assert _all_nonzero(_grads(model, "decode_behaviour"))


def test_single_modality_model_skips_the_discriminator() -> None:
    torch.manual_seed(0)
    model = FusionModel(small("gated", modalities=("speech",))).train()
    text, speech, beh, masks = inputs()
    terms = joint_loss(model, model(text, speech, beh, masks), text, beh, *labels())
    assert float(terms.discriminator.detach()) == 0.0
    assert float(terms.adversarial.detach()) == 0.0


def _train_steps(seed: int) -> tuple[torch.Tensor, list[float]]:
    torch.manual_seed(seed)
    model = FusionModel(small("cascade")).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    text, speech, beh, masks = inputs()
    losses = []
    for _ in range(3):
        terms = joint_loss(model, model(text, speech, beh, masks), text, beh, *labels())
        opt.zero_grad()
        terms.total.backward()  # type: ignore[no-untyped-call]
        opt.step()
        losses.append(float(terms.total.detach()))
    return model.eval()(text, speech, beh, masks).z.detach(), losses


def test_same_seed_same_result() -> None:
    z1, l1 = _train_steps(3)
    z2, l2 = _train_steps(3)
    assert l1 == l2
    assert torch.equal(z1, z2)
    _z3, l3 = _train_steps(4)
    assert l3 != l1


def test_training_loop_is_deterministic() -> None:
    from fusion.training.fusion_model.fit import SessionTensors, TrainConfig, train_model

    text, speech, beh, masks = inputs()
    data = SessionTensors(
        text, speech, beh, masks, *labels(), ambiguous=np.zeros(B, dtype=np.bool_)
    )
    rows = np.arange(B)
    outs = []
    for _ in range(2):
        model = train_model(
            small("weighted"), TrainConfig(epochs=2, batch_size=4, seed=5), data, rows, CPU, False
        )
        outs.append(model(text, speech, beh, masks).z.detach())
    assert torch.equal(outs[0], outs[1])


def _events() -> list[Event]:
    return [
        Event("card_ordered", NOW - timedelta(days=12), {"card_type": "physical"}),
        Event("page_view", NOW - timedelta(minutes=2), {"page": "card_tracking"}),
    ]


def _check_inference(fusion: FusionInference) -> None:
    text = np.zeros(384, dtype=np.float32)
    text[0] = 1.0
    speech = np.ones(fusion.speech_dim, dtype=np.float32)
    z, contributions = fusion.fuse(text, None, _events(), NOW)
    assert z.dtype == np.float32 and z.shape == (fusion.dim,)
    assert set(contributions) == set(MODALITIES)
    assert contributions["speech"] == 0.0
    assert abs(sum(contributions.values()) - 1.0) < 1e-5
    many = fusion.fuse_many(
        [
            FuseRequest(text, None, _events(), NOW),
            FuseRequest(text, speech, [], NOW),
            FuseRequest(None, None, _events(), NOW),
        ]
    )
    np.testing.assert_allclose(many[0].z, z, rtol=1e-5, atol=1e-6)
    assert many[1].contributions["behaviour"] == 0.0
    assert many[2].contributions["behaviour"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        fusion.fuse(np.zeros(10, dtype=np.float32), None, [], NOW)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FusionModel(small("gated")).eval()
    path = tmp_path / "fusion.pt"
    save_checkpoint(path, model, [f"i{k}" for k in range(7)], ["a", "b", "c", "d", "e"])
    loaded = FusionInference.load(path)
    assert loaded.config == model.config
    text, speech, beh, masks = inputs()
    torch.testing.assert_close(
        loaded.model(text, speech, beh, masks).z, model(text, speech, beh, masks).z
    )
    _check_inference(loaded)


@pytest.mark.skipif(not WEIGHTS_PATH.exists(), reason="fusion/weights/fusion.pt not trained yet")
def test_shipped_weights_load_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert WEIGHTS_PATH.stat().st_size < 5 * 1024 * 1024
    fusion = FusionInference.load()
    assert len(fusion.intents) == fusion.config.n_intents == 77
    assert fusion.metadata.get("simulated") is True
    _check_inference(fusion)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("late_fusion", [False, True], ids=["joint", "late"])
@pytest.mark.parametrize(
    "absent", [(), (1,), (2,), (1, 2)], ids=["all-present", "no-speech", "no-events", "text-only"]
)
def test_infer_equals_forward(strategy: str, late_fusion: bool, absent: tuple[int, ...]) -> None:
    """Serving skips the decoders and the encoders of modalities absent from the whole batch;
    what it returns is what the full forward returns."""
    torch.manual_seed(0)
    model = FusionModel(small(strategy, late_fusion=late_fusion)).eval()
    text, speech, beh, masks = inputs()
    masks = masks.clone()
    masks[:, 0] = True
    for column in absent:
        masks[:, column] = False
    with torch.inference_mode():
        full = model(text, speech, beh, masks)
        z, gates, intent, emotion = model.infer(text, speech, beh, masks)
    torch.testing.assert_close(z, full.z, rtol=0, atol=0)
    torch.testing.assert_close(gates, full.gates, rtol=0, atol=0)
    torch.testing.assert_close(intent, full.intent_logits, rtol=0, atol=0)
    torch.testing.assert_close(emotion, full.emotion_logits, rtol=0, atol=0)
