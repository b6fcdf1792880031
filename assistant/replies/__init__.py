"""What the assistant says in a turn. Above core and cluster; the chat pipeline calls it.

- composer: The default reply writer: no language model, grounded in the knowledge base,
  deterministic.
- conversation: Conversation intents (greeting, thanks, goodbye, a request for a person),
  recognised before the handoff policy counts the turn.
- deltas: How a finished reply is cut into streamed deltas.
- generation: Response generation for one turn: retrieve, plan, then write with the chat model
  or composer.
- handoff: When the bot hands a conversation to a person: pure policy functions, no I/O.
- knowledge_base: The assistant's knowledge base: one written answer per supported intent,
  loaded and checked.
- llm_backends: The chat model that writes replies, chosen by GenerationConfig; None means the
  composer.
- llm_config: Which chat model writes replies, and its limits: one frozen dataclass read from
  the environment.
- profile_summary: A short, prompt-safe summary of one user's profile, built by a pure function.
- prompting: The reply chain: request values -> ChatPromptTemplate -> chat model -> text, as
  LCEL.
- retrieval: Retrieval over the knowledge base: the same text encoder as the models, weighted by
  intent.
- understanding: What the models made of one user turn, as the reply side sees it: plain values,
  no tensors.
- waiting: What a customer waiting for a person is told: pure policy, no I/O.

Other rooms import from these modules by name; nothing is re-exported here.
"""

__all__: list[str] = []
