"""bench/conversations.py's parts:

- script: the seeded conversations (Banking77 test utterances, held-out follow-ups)
- client: one conversation through the chat protocol
- figures: what each server made of the turns, and the targets
- report: the printed table

follow_ups.toml holds the held-out follow-up phrasings.
"""

__all__: list[str] = []
