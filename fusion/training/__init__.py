"""Training apart from serving: trainers, data loaders, the simulator and model-card writers.

- `data`: where the data sets, caches, runs and reports are, and the public data sets'
  loaders; `features`: the cached MiniLM embeddings; `ravdess`: RAVDESS's clips and their
  cached speech and voice features; `corrections`: operators' relabels as training rows;
- `calibration`: temperatures, calibration error and decision rules fitted on held-out data;
- `heads/`: the intent and emotion heads (`python -m fusion.training.heads`);
- `fusion_model/`: the fusion model's ablation and weights (`python -m
  fusion.training.fusion_model`), on sessions of `simulator` (tables in `simulator_tables`);
- `speech_encoder`: the speech encoder (`python -m fusion.training.speech_encoder`);
- `packs/`: a domain pack's intent head (`assistant domain train`, docs/domains.md).

Serving code never imports this package; it imports serving.
"""

__all__: list[str] = []
