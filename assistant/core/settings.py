"""The error every room's settings raise when the environment holds a value it cannot use."""

from __future__ import annotations

__all__ = ["SettingsError"]


class SettingsError(ValueError):
    """An environment variable holds a value the server cannot use."""
