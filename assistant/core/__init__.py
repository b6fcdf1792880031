"""The bottom of the conversation side: settings errors, logs, metrics, redaction, the wire base
and the outbox every route sends through."""

__all__: list[str] = []
