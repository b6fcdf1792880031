"""Errors the store raises; callers never see driver exceptions."""

from __future__ import annotations


class StoreError(Exception):
    """Base class for store failures."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or refused the operation for a transient reason."""


class NotFound(StoreError):
    """The row the caller named does not exist."""


class Conflict(StoreError):
    """The write would break a uniqueness rule (for example, an operator name already taken)."""
