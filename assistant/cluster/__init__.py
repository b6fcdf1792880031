"""Several replicas as one service over Redis: the bus, typed messages, presence and routing."""

__all__: list[str] = []
