"""Several replicas as one service: where a session lives, presence of live sessions,
operators' commands and live watch across replicas, and sessions parked for another replica.

Without Redis, or while it is down, the cluster is this process alone: the local sessions
are all there is, nobody else holds a session and nothing can be parked. Every remote
operation answers "nobody" rather than failing, so callers keep one code path.

Redis names (all start with the configured prefix, "assistant:" by default):

    replicas             sorted set: replica id -> time of its last heartbeat
    presence:{replica}   hash: session id -> JSON summary of a live session; expires
                         unless the replica refreshes it
    operators:{replica}  string: how many operators who may take a session over are signed
                         in there; expires with the presence
    replica:{replica}    channel: Calls for that replica, and Answers to the Calls it made
    live:{session}       channel: /operator frames about the session (turns, state)
    parked:{session}     string: a SessionSnapshot waiting to be resumed anywhere
    rate:{key}           integer: shared rate-limit counters (assistant.chat.rate_limits)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from redis.asyncio import Redis

from assistant.cluster.bus import RedisLink
from assistant.cluster.messages import (
    Action,
    Answer,
    Call,
    LiveFrame,
    SessionSnapshot,
    decode_live,
    decode_message,
    decode_snapshot,
    encode_live,
    encode_message,
    encode_snapshot,
)

log = logging.getLogger(__name__)

Summary = dict[str, Any]
T = TypeVar("T")

# Live frames waiting for the publisher; beyond this the oldest are dropped (watchers miss
# them, nothing else depends on them).
MAX_OUTGOING = 10_000


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    replica_id: str
    redis_url: str | None = None
    prefix: str = "assistant:"
    # A replica that has not refreshed its presence for this long counts as gone.
    presence_ttl_s: float = 15.0
    # How often changes to the local sessions' summaries are written.
    presence_interval_s: float = 0.5
    call_timeout_s: float = 5.0
    # How long a parked session waits to be resumed.
    parked_ttl_s: float = 300.0


class Replica(Protocol):
    """What the cluster asks of this replica's services."""

    def session_summaries(self) -> dict[str, Summary]:
        """Summaries of the sessions held here, as operators' sessions.list shows them."""
        ...

    def operators_signed_in(self) -> int:
        """How many operators who may take a session over are signed in here."""
        ...

    async def handle_call(self, call: Call) -> Answer: ...

    def deliver_live(self, session_id: str, frame: dict[str, Any]) -> None:
        """A frame another replica published about a session that operators here watch."""
        ...


class Cluster:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.replica_id = config.replica_id
        self._channel = self._key("replica", self.replica_id)
        self._link = (
            RedisLink(config.redis_url, self._received, on_up=self._reconnected)
            if config.redis_url
            else None
        )
        self._replica: Replica | None = None
        self._pending: dict[str, asyncio.Future[Answer]] = {}
        self._handling: set[asyncio.Task[None]] = set()
        self._outgoing: deque[tuple[str, str]] = deque(maxlen=MAX_OUTGOING)
        self._outgoing_ready = asyncio.Event()
        self._presence_written: dict[str, str] = {}
        self._operators_written: int | None = None
        self._presence_wake = asyncio.Event()
        # Set by `leave`: this replica no longer announces itself (it is draining).
        self._left = False
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def single(cls, replica_id: str = "local") -> Cluster:
        return cls(ClusterConfig(replica_id))

    @property
    def up(self) -> bool:
        return self._link is not None and self._link.up

    def _key(self, *parts: str) -> str:
        return self.config.prefix + ":".join(parts)

    def attach(self, replica: Replica) -> None:
        self._replica = replica

    async def start(self) -> None:
        if self._link is None:
            return
        await self._link.start({self._channel})
        self._tasks = [
            asyncio.create_task(self._presence(), name="cluster-presence"),
            asyncio.create_task(self._publisher(), name="cluster-publisher"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = [*self._tasks, *self._handling], []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        await self.leave()
        if self._link is not None:
            await self._link.stop()

    async def leave(self) -> None:
        """Take this replica's presence out of Redis (its sessions are parked or gone)."""

        async def remove(client: Redis) -> None:
            pipe = client.pipeline(transaction=False)
            pipe.delete(self._key("presence", self.replica_id))
            pipe.delete(self._key("operators", self.replica_id))
            pipe.zrem(self._key("replicas"), self.replica_id)
            await pipe.execute()

        self._left = True
        await self._run(remove)
        self._presence_written = {}
        self._operators_written = None

    async def _run(self, operation: Callable[[Redis], Awaitable[T]]) -> T | None:
        return None if self._link is None else await self._link.run(operation)

    # presence

    def presence_changed(self) -> None:
        """Write the sessions' summaries now rather than at the next interval."""
        self._presence_wake.set()

    def _reconnected(self) -> None:
        # Redis may have restarted empty or expired our keys during the outage.
        self._presence_written = {}
        self._operators_written = None
        self._presence_wake.set()

    async def _presence(self) -> None:
        last_beat = 0.0
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
            # cancellation that stops this loop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.presence_interval_s):
                    await self._presence_wake.wait()
            self._presence_wake.clear()
            if not self.up or self._replica is None or self._left:
                continue
            due = time.monotonic() - last_beat >= self.config.presence_ttl_s / 3
            if await self._write_presence(due):
                last_beat = time.monotonic() if due else last_beat

    async def _write_presence(self, heartbeat: bool) -> bool:
        assert self._replica is not None
        current = {
            sid: json.dumps(summary, ensure_ascii=False)
            for sid, summary in self._replica.session_summaries().items()
        }
        operators = self._replica.operators_signed_in()
        written = self._presence_written
        changed = {sid: text for sid, text in current.items() if written.get(sid) != text}
        removed = [sid for sid in written if sid not in current]
        if not (changed or removed or heartbeat or operators != self._operators_written):
            return True
        key = self._key("presence", self.replica_id)
        ttl_ms = int(self.config.presence_ttl_s * 1000)

        async def write(client: Redis) -> bool:
            pipe = client.pipeline(transaction=False)
            if changed:
                pipe.hset(key, mapping=changed)
            if removed:
                pipe.hdel(key, *removed)
            pipe.pexpire(key, ttl_ms)
            pipe.set(self._key("operators", self.replica_id), operators, px=ttl_ms)
            now = time.time()
            pipe.zadd(self._key("replicas"), {self.replica_id: now})
            # Replicas that died without leaving.
            pipe.zremrangebyscore(self._key("replicas"), "-inf", now - 4 * ttl_ms / 1000)
            await pipe.execute()
            return True

        if await self._run(write):
            self._presence_written = current
            self._operators_written = operators
            return True
        return False

    async def peers(self) -> list[str]:
        """The other replicas alive now (an empty list without Redis)."""
        since = time.time() - self.config.presence_ttl_s
        ids = await self._run(lambda c: c.zrangebyscore(self._key("replicas"), since, "+inf"))
        return [i.decode() for i in ids or () if i.decode() != self.replica_id]

    async def remote_sessions(self) -> list[Summary]:
        """Summaries of the sessions every other live replica holds."""
        peers = await self.peers()
        if not peers:
            return []

        async def read(client: Redis) -> list[list[bytes]]:
            pipe = client.pipeline(transaction=False)
            for peer in peers:
                pipe.hvals(self._key("presence", peer))
            return list(await pipe.execute())

        summaries: list[Summary] = []
        for values in await self._run(read) or ():
            for raw in values:
                with contextlib.suppress(ValueError):
                    summaries.append(json.loads(raw))
        return summaries

    async def operators_elsewhere(self) -> int:
        """How many operators who may take a session over are signed in on other replicas."""
        peers = await self.peers()
        if not peers:
            return 0
        counts = await self._run(lambda c: c.mget([self._key("operators", p) for p in peers]))
        total = 0
        for raw in counts or ():
            with contextlib.suppress(TypeError, ValueError):
                total += int(raw)
        return total

    async def locate(self, session_id: str) -> tuple[str, Summary] | None:
        """The other replica holding `session_id`, and its summary; None: nobody else."""
        peers = await self.peers()
        if not peers:
            return None

        async def read(client: Redis) -> list[bytes | None]:
            pipe = client.pipeline(transaction=False)
            for peer in peers:
                pipe.hget(self._key("presence", peer), session_id)
            return list(await pipe.execute())

        for peer, raw in zip(peers, await self._run(read) or (), strict=False):
            if raw is not None:
                with contextlib.suppress(ValueError):
                    return peer, json.loads(raw)
        return None

    # live watch

    def publish_live(self, session_id: str, frame: dict[str, Any]) -> None:
        """Tell operators on other replicas who watch `session_id` (queued, never blocks)."""
        if not self.up:
            return
        live = LiveFrame(self.replica_id, session_id, frame)
        self._outgoing.append((self._key("live", session_id), encode_live(live)))
        self._outgoing_ready.set()

    async def _publisher(self) -> None:
        while True:
            await self._outgoing_ready.wait()
            self._outgoing_ready.clear()
            batch = list(self._outgoing)
            self._outgoing.clear()

            async def send(client: Redis, batch: list[tuple[str, str]] = batch) -> None:
                pipe = client.pipeline(transaction=False)
                for channel, data in batch:
                    pipe.publish(channel, data)
                await pipe.execute()

            await self._run(send)

    async def follow(self, session_id: str) -> None:
        """Receive what any replica publishes about `session_id` (while operators watch it)."""
        if self._link is not None:
            await self._link.subscribe(self._key("live", session_id))

    async def unfollow(self, session_id: str) -> None:
        if self._link is not None:
            await self._link.unsubscribe(self._key("live", session_id))

    # calls

    def new_call(self, action: Action, **fields: Any) -> Call:
        return Call(id=uuid.uuid4().hex, origin=self.replica_id, action=action, **fields)

    async def call(self, replica: str, call: Call, timeout_s: float | None = None) -> Answer | None:
        """Send `call` to `replica` and wait for its answer; None: no answer (gone, down)."""
        if self._link is None:
            return None
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[call.id] = future
        try:
            delivered = await self._link.publish(
                self._key("replica", replica), encode_message(call)
            )
            if not delivered:
                return None
            async with asyncio.timeout(timeout_s or self.config.call_timeout_s):
                return await future
        except TimeoutError:
            return None
        finally:
            self._pending.pop(call.id, None)

    async def call_all(self, call: Call) -> list[Answer | None]:
        """`call` to every other live replica, in parallel."""
        peers = await self.peers()
        return list(await asyncio.gather(*(self.call(peer, call) for peer in peers)))

    def _received(self, channel: str, data: bytes) -> None:
        if channel == self._channel:
            message = decode_message(data)
            if isinstance(message, Answer):
                future = self._pending.get(message.id)
                if future is not None and not future.done():
                    future.set_result(message)
            elif isinstance(message, Call):
                task = asyncio.create_task(self._answer(message), name=f"call-{message.action}")
                self._handling.add(task)
                task.add_done_callback(self._handling.discard)
            return
        live = decode_live(data)
        if live is not None and live.origin != self.replica_id and self._replica is not None:
            self._replica.deliver_live(live.session_id, live.frame)

    async def _answer(self, call: Call) -> None:
        try:
            if self._replica is None:
                answer = Answer(call.id, code="unavailable", message="replica is starting")
            else:
                answer = await self._replica.handle_call(call)
        except Exception:
            log.exception("cluster call failed", extra={"type": call.action})
            answer = Answer(call.id, code="internal", message="the command failed")
        if self._link is not None:
            await self._link.publish(self._key("replica", call.origin), encode_message(answer))

    # parked sessions

    async def park(self, snapshots: Sequence[SessionSnapshot]) -> bool:
        """Keep `snapshots` in Redis for any replica to resume; False when Redis is down."""
        if not snapshots:
            return True
        ttl_ms = int(self.config.parked_ttl_s * 1000)

        async def write(client: Redis) -> bool:
            pipe = client.pipeline(transaction=False)
            for snapshot in snapshots:
                pipe.set(
                    self._key("parked", snapshot.session_id), encode_snapshot(snapshot), px=ttl_ms
                )
            await pipe.execute()
            return True

        return bool(await self._run(write))

    async def unpark(self, session_id: str, user_id: str) -> SessionSnapshot | None:
        """Take `user_id`'s parked session, if there is one: only one replica gets it."""
        key = self._key("parked", session_id)
        raw = await self._run(lambda c: c.get(key))
        snapshot = None if raw is None else decode_snapshot(raw)
        if snapshot is None or snapshot.user_id != user_id:
            return None
        # GETDEL decides between replicas resuming the same session at the same moment.
        taken = await self._run(lambda c: c.getdel(key))
        return None if taken is None else decode_snapshot(taken)

    async def forget(self, session_id: str) -> None:
        """Drop a parked copy of a session that ended (closed, erased)."""
        await self._run(lambda c: c.delete(self._key("parked", session_id)))

    # rate limits

    async def count(self, key: str, ttl_s: float) -> int | None:
        """INCR a shared counter that expires after `ttl_s`; None without Redis."""
        name = self._key("rate", key)

        async def hit(client: Redis) -> int:
            pipe = client.pipeline(transaction=True)
            pipe.incr(name)
            pipe.pexpire(name, max(1, int(ttl_s * 1000)))
            count, _ = await pipe.execute()
            return int(count)

        result: int | None = await self._run(hit)
        return result
