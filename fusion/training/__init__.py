"""Training apart from serving: trainers, data loaders, the simulator and model-card writers.

Serving code never imports this package; it imports serving."""

__all__: list[str] = []
