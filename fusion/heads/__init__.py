"""The intent and emotion heads over the text embedding, the user's profile and voice features.

- `labels`: the label sets and their mappings onto the service emotions;
- `lexical`: the hashed words, symbols and bigrams both heads read beside the embedding;
- `modules`: the `nn.Module`s (ensembles, FiLM, lexical branch, intent and emotion models);
- `checkpoint`: the weights on disk (`fusion/weights/intent.pt`, `emotion.pt`);
- `serving`: the heads with their constants folded, run in torch on a GPU;
- `graph`: the same folded heads as ONNX Runtime graphs, run on a CPU;
- `inference`: `Understanding`, the wrapper the server calls.

Their trainer is the training package's `heads` (training/heads/ beside this package);
nothing here reads data sets.
"""

from fusion.heads.inference import Understanding, UnderstandingResult
from fusion.heads.labels import OUT_OF_SCOPE, SERVICE_EMOTIONS

__all__ = ["OUT_OF_SCOPE", "SERVICE_EMOTIONS", "Understanding", "UnderstandingResult"]
