"""The heads' model cards (`fusion/weights/intent.md`, `emotion.md`), written from a run's
report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusion.heads.labels import SERVICE_EMOTIONS

__all__ = ["emotion_card", "intent_card"]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _table(rows: Sequence[tuple[str, str]]) -> list[str]:
    return ["| measure | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]


def _reproduce(report: dict[str, Any]) -> list[str]:
    return [
        "## Reproduce",
        "",
        "```sh",
        f".venv/bin/{report['command']}",
        "```",
        "",
        f"Run time {report['runtime_s'] / 60:.1f} min on {report['machine']}, {report['trained']}.",
        "",
    ]


def _corrections_used(report: dict[str, Any]) -> str:
    return str(report["data"].get("corrections", {}).get("used", 0))


def intent_card(report: dict[str, Any], path: Path) -> str:
    t, o, p, v = report["test"], report["oos_test"], report["profile"], report["validation"]
    size = path.stat().st_size / 1e6 if path.exists() else 0.0
    a = report["artifact"]
    text_only, conditioned = p["text_only"], p["profile_conditioned"]
    pv = report["profile_validation"]
    noise = (
        f", Gaussian input noise {a['input_noise']} / sqrt(384) in training"
        if a.get("input_noise")
        else ""
    )
    lexical = (
        f", each plus a linear model over the message's hashed words, symbols and bigrams "
        f"({a['lexicon_buckets']} buckets, the emotion head's hashing)"
        if a.get("lexicon_buckets")
        else ""
    )
    rows = [
        ("Banking77 test accuracy (no profile)", f"**{_pct(t['accuracy'])}**"),
        (
            "frozen MiniLM + logistic regression (C=10), same run",
            _pct(report["baseline_logreg_test_accuracy"]),
        ),
        ("operators' label corrections among the training rows", _corrections_used(report)),
        (
            "Banking77 test + CLINC150 oos_test: in-scope accuracy",
            _pct(o["in_scope_accuracy"]),
        ),
        (
            "same: out-of-scope recall / precision",
            f"{o['oos_recall']:.3f} / {o['oos_precision']:.3f}",
        ),
        ("Banking77 test ECE (15 bins, calibrated)", f"{t['ece']:.4f}"),
        (
            f"validation ECE before / after temperature {v['temperature']:.2f}",
            f"{v['ece_before']:.4f} / {v['ece_after']:.4f}",
        ),
        (
            "empty profile: Banking77 test accuracy (max. probability change)",
            f"{_pct(p['empty_profile_test_accuracy'])} "
            f"({p['empty_profile_max_abs_prob_diff']:.1e})",
        ),
        (
            "simulated benchmark, ambiguous subset: text-only / with profile",
            f"{_pct(text_only['ambiguous'])} / {_pct(conditioned['ambiguous'])}",
        ),
        (
            "simulated validation (train utterances, out-of-fold), ambiguous: "
            "text-only / with profile",
            f"{_pct(pv['text_only_ambiguous'])} / {_pct(pv['profile_conditioned_ambiguous'])}",
        ),
        (
            "simulated benchmark, all sessions: text-only / with profile",
            f"{_pct(text_only['all'])} / {_pct(conditioned['all'])}",
        ),
    ]
    return "\n".join(
        [
            "# Model card: intent.pt",
            "",
            f"Intent head, {size:.1f} MB (float16): an ensemble of {a['members']} "
            f"one-hidden-layer MLPs ({a['hidden']} GELU units, dropout{noise}) over the frozen "
            f"384-d all-MiniLM-L6-v2 sentence embedding{lexical}, 77 Banking77 intents + "
            "out-of-scope; "
            "a FiLM generator (128 -> 128 -> 2 x hidden) modulates the hidden layer from the "
            "user's 128-d profile vector and is the identity when there is no profile. Loaded "
            "offline by `fusion.heads.Understanding` and served, on a CPU, as ONNX "
            "Runtime graphs (`fusion.heads.graph.GraphHeads`: the float16 weights as stored, "
            "the members' first layer and the FiLM generator's last layer quantised to 8 bits "
            "at load time, per block of 128 inputs); every test figure below went through that "
            "path"
            + (
                ", with the message texts passed (`predict_many(..., texts=...)`), as the "
                "server does; without them the head reads the embedding alone"
                if lexical
                else ""
            )
            + ". Design and figures: docs/understanding.md.",
            "",
            "## Data and licences",
            "",
            "- Banking77 (PolyAI), train 10,003 / test 3,080, **CC BY 4.0**.",
            "- CLINC150 (oos-eval) out-of-scope utterances: oos_train (100) trains the "
            "out-of-scope class, oos_val (100) sets the threshold, oos_test (1,000) is only "
            "scored. **CC BY 3.0**.",
            "- The FiLM generator was trained on **simulated** sessions "
            "(`fusion.training.simulator`: "
            "Banking77 train utterances, simulated behaviour, RAVDESS clips; one session in five "
            "with browsing alone, so that unrelated events leave a message's reading alone) "
            "through the shipped "
            f"fusion model (`fusion/weights/fusion.pt`, sha256 `{a['profile_space'][:16]}...`). "
            "With other fusion weights the profile is ignored (text-only path). RAVDESS is "
            "**CC BY-NC-SA 4.0, non-commercial**, and the FiLM part inherits that restriction.",
            "",
            "## Split",
            "",
            f"Banking77 train is dealt into {a['members']} stratified folds; member k trains on "
            "the others (plus oos_train). The out-of-fold predictions (and oos_val) choose the "
            "temperature and the out-of-scope threshold. The official test split is only scored.",
            "",
            "## Metrics",
            "",
            *_table(rows),
            "",
            *_rescored(report),
            *_reproduce(report),
        ]
    )


def _rescored(report: dict[str, Any]) -> list[str]:
    """A note on figures recomputed by `--score-shipped`, when they were."""
    s = report.get("scored")
    if not s:
        return []
    return [
        f"The test figures above were re-scored on {s['date']} from the shipped weights "
        f"through the serving path, without retraining (`.venv/bin/{s['command']}`; serving: "
        f"{s['serving']}). The validation figures are the training run's."
        + (f" Note: {s['note']}." if s.get("note") else ""),
        "",
    ]


def emotion_card(report: dict[str, Any], path: Path) -> str:
    size = path.stat().st_size / 1e6 if path.exists() else 0.0
    ek, sv = report["text_ekman_test"], report["text_service_test"]
    sp, fu = report["speech"], report["text_speech_fusion"]
    everyone, phoned, later = sp["all_actors"], sp["all_actors_telephone"], sp["actors_19_22"]
    tuned, svt = ek["dev_tuned_offsets"], sv["dev_tuned_offsets"]
    t, s, f = fu["text_only"], fu["speech_only"], fu["fused"]
    buckets = report["text_lexicon"]["buckets"]
    lexical = (
        f", each plus a linear model over the message's hashed words, symbols and bigrams "
        f"({buckets} buckets)"
        if buckets
        else ""
    )
    rows = [
        (
            f"GoEmotions Ekman-7 test, single-label rows ({tuned['rows']}): macro-F1",
            f"**{tuned['macro_f1']:.3f}** (plain argmax {ek['argmax']['macro_f1']:.3f}; "
            f"dev {ek['dev']['dev_tuned_offsets']['macro_f1']:.3f})",
        ),
        (
            "same, frozen MiniLM + logistic regression (C=10), same run",
            f"{report['baseline_logreg_ekman_test']['macro_f1']:.3f}",
        ),
        ("operators' label corrections among the training rows", _corrections_used(report)),
        (
            f"GoEmotions service-7 test, single-label rows ({svt['rows']}): "
            "accuracy / macro-F1 / ECE",
            f"{_pct(svt['accuracy'])} / {svt['macro_f1']:.3f} / {sv['argmax']['ece']:.4f}",
        ),
        (
            "same, plain argmax: accuracy / macro-F1",
            f"{_pct(sv['argmax']['accuracy'])} / {sv['argmax']['macro_f1']:.3f}",
        ),
        (
            f"RAVDESS 8-class, leave-actors-out: {everyone['clips']} clips of "
            f"{sum(len(a) for a in sp['fold_actors'].values())} actors in {sp['folds']} folds",
            f"**{_pct(everyone['accuracy_8'])}** "
            f"(logistic regression {_pct(everyone['baseline_logreg_accuracy_8'])}); "
            f"macro-F1 {everyone['macro_f1_8']:.3f}, ECE {everyone['ece_8']:.4f}",
        ),
        (
            "same clips through the telephone path (8 kHz mu-law)",
            f"{_pct(phoned['accuracy_8'])}",
        ),
        ("same, actors 19-22 only", f"{_pct(later['accuracy_8'])}"),
        (
            "RAVDESS service-7 accuracy / macro-F1, all actors",
            f"{_pct(everyone['service']['accuracy'])} / {everyone['service']['macro_f1']:.3f}",
        ),
        (
            "text + speech, **simulated pairs**: text / speech / fused accuracy",
            f"{_pct(t['accuracy'])} / {_pct(s['accuracy'])} / {_pct(f['accuracy'])}",
        ),
        (
            "same, macro-F1",
            f"{t['macro_f1']:.3f} / {s['macro_f1']:.3f} / {f['macro_f1']:.3f}",
        ),
    ]
    return "\n".join(
        [
            "# Model card: emotion.pt",
            "",
            f"Emotion heads, {size:.1f} MB (float16). Service emotions: "
            f"{', '.join(SERVICE_EMOTIONS)}. A text head (ensemble of MLPs over the frozen "
            f"MiniLM embedding{lexical}; GoEmotions' 28 labels) and a speech head (ensemble "
            "of MLPs over the 392-d `fusion.voice_emotion` features: Whisper tiny.en's "
            "encoder states averaged over the utterance and its prosody; RAVDESS's 8 labels), each "
            "summed onto the service emotions and combined as a weighted product of experts "
            "when both are present. Mappings and figures: docs/understanding.md.",
            "",
            "## Data and licences",
            "",
            "- GoEmotions (Demszky et al. 2020), official train/dev/test, **Apache-2.0**.",
            "- RAVDESS speech, actors 01-22 (Livingstone & Russo 2018), **CC BY-NC-SA 4.0: "
            "non-commercial**. The speech head, and so these weights, inherit that restriction: "
            "non-commercial use only, with attribution, under the same licence.",
            "",
            "## Split",
            "",
            "GoEmotions: train fits the text head; dev fits its temperature and the decision "
            "rule's prior-correction exponent (argmax of log p - alpha log prior, alpha "
            f"{sv['alpha']:.2f} on the service set, {ek['alpha']:.2f} on Ekman's, for "
            "macro-F1); test is only scored. RAVDESS: "
            f"{sp['folds']} leave-actors-out folds (actors per fold: {sp['fold_actors']}); each "
            "fold trains on the other actors' clips, as recorded and through the telephone "
            "path, and scores its own actors' clips; the shipped speech head is then trained "
            "on every actor. Nothing in the features was trained on RAVDESS (Whisper's "
            "weights are its authors'; prosody is measured), so every fold is "
            "speaker-independent. Text + speech pairs are simulated (no corpus "
            "has both): dev comments x clips of actors 1-18 fit the fusion weights, test "
            "comments x clips of actors 19-22 score it.",
            "",
            "## Metrics",
            "",
            *_table(rows),
            "",
            "The profile vector is not used by the emotion head (see docs/understanding.md)."
            + (
                " Callers pass the message text to `Understanding.predict_many(..., texts=...)` "
                "for the lexical branch; without it the head reads the embedding alone, less "
                "accurately."
                if buckets
                else ""
            ),
            "",
            *_reproduce(report),
        ]
    )
