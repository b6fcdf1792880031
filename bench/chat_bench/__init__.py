"""bench/chat.py's parts: the figures, the server under test, the clients, the models alone,
py-spy profiling, the phases and the printed report."""

__all__: list[str] = []
