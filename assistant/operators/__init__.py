"""The /operator route: people who review profiles, watch and take over conversations.

- connection: One /operator WebSocket: OperatorConnection signs the operator in, then answers
  commands.
- keys: Operator API keys: generated once, shown once, stored only as a salted scrypt hash.
- protocol: The /operator wire protocol: pure parsing and serialization, no I/O.
- roles: Which operator role may run which /operator command. Pure policy, no I/O.
- service: The /operator route's shared state: OperatorService, one for all operators'
  connections.
- sign_in_throttle: Failed sign-ins per client address: a guesser is slowed down, then locked
  out for a while.
- views: The store's records as the JSON the /operator protocol sends. Pure functions, no I/O.

Other rooms import from these modules by name; nothing is re-exported here.
"""

__all__: list[str] = []
