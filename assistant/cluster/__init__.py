"""Several replicas as one service over Redis. Above core; below replies, chat and the routes.

- bus: This replica's link to Redis (redis.asyncio): commands, pub/sub, and riding out outages.
- messages: What replicas say to each other over Redis: typed messages and their JSON, no I/O.
- replicas: Several replicas as one service: where a session lives, presence of live sessions,

Other rooms import from these modules by name; nothing is re-exported here.
"""

__all__: list[str] = []
