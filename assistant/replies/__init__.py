"""What the assistant says: the understanding it receives, retrieval, the knowledge base, the
composer, prompting, LLM backends, the profile summary and the handoff policy."""

__all__: list[str] = []
