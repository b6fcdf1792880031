"""The bottom of the conversation side, imported by every room and importing none of them.

- logs: Structured logs: one JSON object per line, tagged with the session and user concerned.
- metrics: Prometheus metrics of one server: connections, turns, latency, errors, micro-batches and
  the chat model's fallbacks.
- outbox: A connection's bounded send queue and the one task that drains it, in order.
- redaction: Redaction of card numbers, IBANs, emails and phone numbers before text is stored or
  logged.
- settings: The error every room's settings raise when the environment holds a value it cannot
  use.
- wire: What the three wire protocols (/chat, /operator, /voice) share: pure code, no I/O.

Other rooms import from these modules by name; nothing is re-exported here.
"""

__all__: list[str] = []
