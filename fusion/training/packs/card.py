"""The model card of a pack's intent head, written from its evaluation report."""

from __future__ import annotations

from typing import Any

__all__ = ["pack_card"]


def _pct(x: float | None) -> str:
    return "not measured" if x is None else f"{100 * x:.1f}%"


def pack_card(report: dict[str, Any]) -> str:
    pack, cv, cal = report["pack"], report["cross_validation"], report["calibration"]
    neg, oos_test = report["negatives"], report["oos_test"]
    config = report["config"]
    weakest = sorted(cv["per_intent_accuracy"].items(), key=lambda kv: (kv[1], kv[0]))[:5]
    lines = [
        f"# Intent head of the `{pack['name']}` pack",
        "",
        f"An ensemble of {config['folds']} one-hidden-layer MLPs ({config['hidden']} units) over "
        "frozen all-MiniLM-L6-v2 sentence embeddings, each with a lexical branch over hashed "
        f"words ({config['lexicon_buckets']} buckets), predicting the pack's {pack['intents']} "
        "intents and out of scope. Trained by `assistant domain train`; loaded by "
        "`fusion.heads.checkpoint.load_intent`. No profile conditioning.",
        "",
        "## Data",
        "",
        f"- {pack['examples']} examples of {pack['intents']} intents from the pack "
        f"(content digest `{pack['digest']}`), language `{pack['language']}`.",
        f"- Out-of-scope negatives: {neg['source']} ({neg['train']} to train, {neg['val']} to "
        f"calibrate, {neg['test']} to test).",
        "",
        "## Cross-validated figures",
        "",
        f"{cv['note']}; temperature and threshold fitted on the same predictions.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| accuracy, no out-of-scope detection | {_pct(cv['accuracy_no_oos_detection'])} |",
        f"| in-scope accuracy, with it | {_pct(cv['in_scope_accuracy'])} |",
        f"| in-scope examples called out of scope | {_pct(cv['in_scope_called_oos'])} |",
        f"| out-of-scope recall (oos_val) | {_pct(cv['oos_val_recall'])} |",
        f"| baseline: logistic regression on the embeddings | "
        f"{_pct(cv['baseline_logreg_accuracy'])} |",
        f"| out-of-scope recall on held-out negatives (oos_test, served path) | "
        f"{_pct(None if oos_test is None else oos_test['recall'])} |",
        f"| temperature | {cal['temperature']:.3f} |",
        f"| out-of-scope threshold | {cal['oos_threshold']:.2f} |",
        f"| expected calibration error before / after | {cal['ece_before']:.3f} / "
        f"{cal['ece_after']:.3f} |",
        "",
        "Weakest intents (out-of-fold accuracy): "
        + ", ".join(f"`{name}` {_pct(acc)}" for name, acc in weakest)
        + ".",
        "",
    ]
    if cv["confusions"]:
        lines += [
            "Most frequent confusions: "
            + "; ".join(
                f"`{c['intent']}` taken for `{c['taken_for']}` ({c['n']})"
                for c in cv["confusions"][:5]
            )
            + ". More examples that tell these apart help most.",
            "",
        ]
    lines += [
        "## Reproduce",
        "",
        "```sh",
        report["command"] or "assistant domain train DIR",
        "```",
        "",
        f"Run time {report['runtime_s']:.0f} s on {report['machine']}, {report['trained']}, "
        f"torch {report['torch']}.",
        "",
    ]
    return "\n".join(lines)
