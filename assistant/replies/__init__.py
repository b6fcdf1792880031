"""What the assistant says in a turn. Above core and cluster; the chat pipeline calls it.

- composer: The default reply writer: no language model, grounded in the knowledge base,
  deterministic.
- conversation: Conversation intents (greeting, thanks, goodbye, a request for a person),
  recognised before the handoff policy counts the turn.
- deltas: How a finished reply is cut into streamed deltas.
- details: The details of what a customer asks about (merchant, amount, date, card,
  transfer), read from behaviour events and from the customer's words.
- dialogue: The conversation's dialogue state (topic, open question, details) and how each
  message is read against it: new topic, follow-up or clarification.
- follow_up_model: The follow-up detector: how much a message leans on what was said before
  it, a linear model over its embedding and surface cues.
- generation: Response generation for one turn: retrieve, plan, then write with the chat model
  or composer.
- grounding: The guard on a chat model's reply: it may state an amount, a date or a merchant
  only when the conversation already did.
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
