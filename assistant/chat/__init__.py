"""The /chat route and the conversation itself: voice calls and operators ride on its sessions.

- connection: One /chat WebSocket: ChatConnection turns its frames into the work of a session.
- identity: Who is on the other end of a chat or a call, by the same rules on every route.
- journal: The frame journal: every chat session frame is stored before it is sent.
- protocol: The /chat wire protocol: pure parsing and serialization, no I/O.
- rate_limits: Message rate limits per connection and per user, in fixed windows.
- recovery: What a restarted server owes a session that nobody holds any more: pure, no I/O.
- service: The /chat route's shared state: every live session, owned by ChatService.
- session: A chat session: its numbered frame stream, its replay buffer and the queue of its
  turns.
- turns: The turn pipeline: a message read by the models, answered, and stored with its labels.
- voice_notes: Voice notes arriving in parts: what a session holds of each until it is whole.
- widget_tokens: Widget identity tokens: HMAC-SHA256 over a JSON claim set, issued by the
  customer's backend.

A route's service holds what its connections share; a connection is one WebSocket.

Other rooms import from these modules by name; nothing is re-exported here.
"""

__all__: list[str] = []
