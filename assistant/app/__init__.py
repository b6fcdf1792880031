"""The wiring on top: settings, the runtime that builds everything, the command line, pages."""

__all__: list[str] = []
