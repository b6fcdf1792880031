"""Train and evaluate the fusion model on the simulated benchmark (every figure: simulated).

    python -m fusion.training.fusion_model --data ../shared/data --folds 5  # assistant train fusion

1. Features are computed once and cached under var/cache/: MiniLM embeddings of the Banking77
   train utterances and speech features of the RAVDESS clips.
2. `fusion.training.simulator` draws the sessions (fixed, documented config).
3. k-fold cross-validation over the simulator's folds (no utterance and no actor in two folds)
   trains every ablation variant on k-1 folds and tests it on the last
   (`fusion.training.fusion_model.ablation`): text only, speech only, behaviour only, each
   fusion strategy with all modalities (also tested with each one modality hidden), and the
   shipped strategy trained on each pair of modalities. Every fold's weights and metrics are
   checkpointed under var/runs/<run>/, so an interrupted run resumes.
4. A report (JSON + Markdown) with mean +- std over folds, overall and on the ambiguous subset
   (`criteria`, `report`).
5. The shipped strategy is trained on all sessions and saved to fusion/weights/fusion.pt with
   a model card (fusion/weights/fusion.md); the report is copied to docs/fusion_report.*.

`--dev` runs the development check instead (`dev_check`).
"""

from fusion.training.fusion_model.command import main

__all__ = ["main"]
