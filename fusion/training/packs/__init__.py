"""Training of a domain pack's intent head (`assistant domain train DIR`).

- `negatives`: the out-of-scope negatives (CLINC150's oos utterances, or none);
- `trainer`: the cross-fitted ensemble, its temperature and out-of-scope threshold, the
  cross-validated figures, and the artifact `fusion.heads.checkpoint.load_intent` reads;
- `card`: the model card written beside the weights.

The recipe is the Banking77 head's (`fusion.training.heads`) with the pack's labels and no
profile stage: the members and folds of `fusion.training.heads.members`, the calibration of
`fusion.training.calibration`, the threshold rule of `fusion.training.heads.intent_figures`.
"""

from fusion.training.packs.negatives import Negatives, load_negatives
from fusion.training.packs.trainer import PackData, PackTrainConfig, train_pack

__all__ = ["Negatives", "PackData", "PackTrainConfig", "load_negatives", "train_pack"]
