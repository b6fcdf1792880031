"""Training of the intent and emotion heads (`fusion.heads`): `python -m fusion.training.heads
intent|emotion ...`, or `assistant train intent|emotion ...`.

- `members`: ensemble members (an MLP, with or without a lexical branch) and their folds;
- `intent`, `intent_figures`, `film`: the intent head, its served test figures, and the FiLM
  stage trained on simulated sessions;
- `emotion`, `speech_head`, `scores`: the emotion head's text and speech experts and their
  product, and how they are scored;
- `cards`: the model cards; `command`: the command line.

Text features are frozen all-MiniLM-L6-v2 embeddings (`fusion.training.features`). Every
choice is made on training data or validation splits; official test splits are only scored.
"""

from fusion.training.heads.command import main

__all__ = ["main"]
