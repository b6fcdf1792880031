"""The /chat route: its protocol, connections, sessions and their replay, the turn pipeline,
journal, recovery, widget tokens and rate limits."""

__all__: list[str] = []
