"""Composition root and the only I/O edge: WebSocket routes, HTTP probes, signals, the CLI.

assistant serve [--host H] [--port P]     (also: python server.py --host H --port P)
assistant migrate
assistant refuse                          (after a fusion model upgrade)
assistant train fusion|speech|intent|emotion [ARGS] [--with-corrections]
assistant token EXTERNAL_ID [--tenant T] [--ttl S]
assistant operators create NAME --role viewer|agent|admin   (prints the key once)
assistant operators list
assistant operators revoke NAME

Pages: /console (operator console) and /widget (chat widget demo), with /static/* files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from http import HTTPStatus
from typing import Protocol

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from assistant import (
    CLOSE_POLICY,
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN,
    CSP,
    MAX_FRAME_BYTES,
    METRICS_CONTENT_TYPE,
    ROLES,
    TRAINERS,
    Models,
    ResponseGenerator,
    Runtime,
    Settings,
    SettingsError,
    TransportClosed,
    VoiceModels,
    configure_logging,
    create_operator,
    issue_token,
    list_operators,
    migrate_database,
    refuse_database,
    revoke_operator,
    single_threaded_blas,
    static_asset,
    train,
)

# How long a thread may hold the GIL while another waits for it.
SWITCH_INTERVAL_S = 0.0005

log = logging.getLogger("server")

# After the drain, how long chat connections get to send what they have queued and close.
CLOSE_GRACE_S = 5.0

ROUTES = frozenset({"/chat", "/operator", "/voice", "/voice/twilio"})


class _Floor(logging.Filter):
    """Drops a logger's records below a level, whatever the configured log level."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


# Libraries that log every frame, or every SQL statement with its parameters, below these
# levels: that is message text, which never goes to the logs whatever ASSISTANT_LOG_LEVEL says.
PAYLOAD_FLOORS = {
    "websockets.server": _Floor(logging.INFO),
    "aiosqlite": _Floor(logging.INFO),
    "sqlalchemy.engine.Engine": _Floor(logging.WARNING),
}


class WebSocketTransport:
    """The assistant's Transport over one websockets connection."""

    def __init__(self, connection: ServerConnection) -> None:
        self._connection = connection

    async def send(self, data: str | bytes) -> None:
        try:
            await self._connection.send(data)
        except ConnectionClosed as exc:
            raise TransportClosed from exc

    async def close(self, code: int, reason: str) -> None:
        try:
            await self._connection.close(code, reason)
        except ConnectionClosed as exc:
            raise TransportClosed from exc


class RouteConnection(Protocol):
    """What each route's connection object (chat, operator, ...) offers the I/O loop."""

    @property
    def started(self) -> bool:
        """The opening frame (hello, auth, start) was accepted."""
        ...

    async def on_text(self, text: str) -> None: ...

    async def on_binary(self, data: bytes) -> None: ...

    async def closed(self) -> None: ...


def _address(connection: ServerConnection) -> str:
    remote = connection.remote_address
    return str(remote[0]) if remote else ""


class App:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # Every open WebSocket and its route: for the connections gauge and the drain.
        self.open: dict[ServerConnection, str] = {}
        # Open WebSockets per client address, for ASSISTANT_MAX_CONNECTIONS_PER_IP.
        self.per_address: Counter[str] = Counter()

    def _over_limit(self, address: str) -> bool:
        limit = self.runtime.settings.max_connections_per_ip
        return bool(limit) and self.per_address[address] >= limit

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path = request.path.partition("?")[0]
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            reason = await self.runtime.unready()
            if reason is None:
                return connection.respond(HTTPStatus.OK, "ready\n")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"{reason}\n")
        if path == "/metrics":
            return _page(METRICS_CONTENT_TYPE, self.runtime.metrics.render())
        if path not in ROUTES:
            asset = static_asset(path)
            if asset is not None and request.headers.get("Upgrade") is None:
                return _page(asset.content_type, asset.body)
            return connection.respond(HTTPStatus.NOT_FOUND, f"no route {path}\n")
        if self._over_limit(_address(connection)):
            return connection.respond(
                HTTPStatus.TOO_MANY_REQUESTS, "too many connections from this address\n"
            )
        return None

    async def connected(self, connection: ServerConnection) -> None:
        """websockets' handler: counts the connection by route around `handle`."""
        route = connection.request.path.partition("?")[0] if connection.request else "/chat"
        address = _address(connection)
        if self._over_limit(address):
            # Handshakes that passed process_request together, beyond the limit.
            await connection.close(CLOSE_TRY_AGAIN, "too many connections from this address")
            return
        self.per_address[address] += 1
        self.open[connection] = route
        self.runtime.metrics.opened(route)
        try:
            await self.handle(connection)
        finally:
            self.runtime.metrics.closed(route)
            del self.open[connection]
            self.per_address[address] -= 1
            if not self.per_address[address]:
                del self.per_address[address]

    async def handle(self, connection: ServerConnection) -> None:
        transport = WebSocketTransport(connection)
        path = connection.request.path.partition("?")[0] if connection.request else "/chat"
        chat: RouteConnection
        if path == "/operator":
            chat = self.runtime.operators.connection(transport, _address(connection))
        elif path == "/voice/twilio":
            chat = self.runtime.voice.twilio(transport)
        elif path == "/voice":
            chat = self.runtime.voice.native(transport)
        else:
            chat = self.runtime.chat.connection(transport)
        hello_timeout = self.runtime.settings.hello_timeout_s
        # A connection that never opens its session would hold a slot for nothing.
        deadline = asyncio.timeout(hello_timeout or None)
        try:
            async with deadline:
                async for message in connection:
                    if isinstance(message, str):
                        await chat.on_text(message)
                    else:
                        await chat.on_binary(message)
                    if chat.started:
                        deadline.reschedule(None)
        except TimeoutError:
            if not deadline.expired():
                raise
            await connection.close(CLOSE_POLICY, "no hello in time")
        except ConnectionClosed:
            pass
        finally:
            await chat.closed()


def _page(content_type: str, body: bytes) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", CSP),
            ("Connection", "close"),
        ]
    )
    return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)


class RunningServer:
    def __init__(self, server: Server, app: App) -> None:
        self.server = server
        self.app = app
        self.runtime = app.runtime

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.runtime.settings.host
        return f"ws://{host}:{self.port}"

    async def drain(self) -> None:
        """Stop accepting, finish the turns in flight, park the sessions for other replicas
        and close every connection with 1012, so that clients reconnect and resume."""
        self.server.server.close()
        await self.runtime.drain()
        # The chat connections close after sending the frames they still had queued.
        closing = [
            asyncio.create_task(connection.wait_closed())
            for connection, route in self.app.open.items()
            if route == "/chat"
        ]
        if closing:
            _, late = await asyncio.wait(closing, timeout=CLOSE_GRACE_S)
            for task in late:
                task.cancel()
        self.server.close(code=CLOSE_SERVICE_RESTART, reason="service restart")
        await self.server.wait_closed()


@asynccontextmanager
async def running(
    settings: Settings,
    *,
    models: Models | None = None,
    generator: ResponseGenerator | None = None,
    voice: VoiceModels | None = None,
    migrate_db: bool = False,
) -> AsyncIterator[RunningServer]:
    """Start the whole server (store, models, routes); stop everything on exit."""
    for name, floor in PAYLOAD_FLOORS.items():
        if floor not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(floor)
    runtime = Runtime(settings, models, generator, voice)
    await runtime.start(migrate_db=migrate_db)
    app = App(runtime)
    origins = [None, *settings.allowed_origins] if settings.allowed_origins else None
    try:
        async with serve(
            app.connected,
            settings.host,
            settings.port,
            process_request=app.process_request,
            max_size=MAX_FRAME_BYTES,
            origins=origins,  # type: ignore[arg-type]
            ping_interval=settings.ping_interval_s or None,
            ping_timeout=settings.ping_timeout_s or None,
            close_timeout=settings.close_timeout_s,
            # Off by default: chat frames are small, and a deflate context costs each
            # connection about 50 kB and each frame CPU (docs/performance.md).
            compression="deflate" if settings.ws_compression == "deflate" else None,
        ) as server:
            yield RunningServer(server, app)
            server.close()
            await server.wait_closed()
    finally:
        await runtime.stop()


async def _serve_forever(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Event loops without signal support (Windows) stop on Ctrl-C through KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with running(settings) as srv:
        # Calls should not wait for the speech models: load them before saying we listen.
        await srv.runtime.voice.load()
        # The models are half a million Python objects that live as long as the process: a
        # full garbage collection walks them all (about 0.3 s on 2 cores), stalling every turn
        # in flight. Frozen, the collector only looks at what turns allocate.
        gc.collect()
        gc.freeze()
        # The model workers give the GIL up around every torch op and need it back right
        # after; with the default 5 ms switch interval a thread running Python (the event
        # loop, the store) keeps them waiting that long. Measured in docs/performance.md.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        single_threaded_blas()
        print(f"listening on {srv.url}", flush=True)
        log.info("ready on %s (models on %s)", srv.url, srv.runtime.models.device)
        await stop.wait()
        log.info("draining")
        await srv.drain()
        log.info("stopping")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assistant", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    serve_p = sub.add_parser("serve", help="run the server")
    for p in (parser, serve_p):
        p.add_argument("--host", help="bind address (ASSISTANT_HOST, default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port, 0 picks a free one (ASSISTANT_PORT)")
        p.add_argument("--db-url", help="database URL (ASSISTANT_DB_URL)")
    sub.add_parser("migrate", help="upgrade the database to the latest schema")
    sub.add_parser(
        "refuse",
        help="rebuild every stored profile with the shipped fusion model",
    )
    train_p = sub.add_parser(
        "train", help="train models; `assistant train KIND --help` lists a trainer's options"
    )
    train_p.add_argument(
        "kind", choices=sorted(TRAINERS), help="; ".join(f"{k}: {v}" for k, v in TRAINERS.items())
    )
    train_p.add_argument("args", nargs=argparse.REMAINDER, help="passed to the trainer")
    token_p = sub.add_parser("token", help="print a signed widget token (needs the widget secret)")
    token_p.add_argument("external_id")
    token_p.add_argument("--tenant", default="default")
    token_p.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token_p.add_argument("--name")
    ops_p = sub.add_parser("operators", help="create, list and revoke operator keys")
    ops_sub = ops_p.add_subparsers(dest="operators_command", required=True)
    create_p = ops_sub.add_parser("create", help="add an operator and print its key once")
    create_p.add_argument("name")
    create_p.add_argument("--role", required=True, choices=ROLES)
    ops_sub.add_parser("list", help="list operators (never their keys)")
    revoke_p = ops_sub.add_parser("revoke", help="revoke an operator's key")
    revoke_p.add_argument("name")
    return parser


def _operators(settings: Settings, args: argparse.Namespace) -> int:
    if args.operators_command == "create":
        try:
            operator, key = asyncio.run(create_operator(settings, args.name, args.role))
        except ValueError as exc:
            print(f"assistant: {exc}", file=sys.stderr)
            return 1
        print(f"created operator {operator.name} ({operator.role}); its key, shown only once:")
        print(key)
        return 0
    if args.operators_command == "list":
        for op in asyncio.run(list_operators(settings)):
            revoked = f"revoked {op.revoked_at:%Y-%m-%d %H:%M}" if op.revoked_at else "active"
            print(f"{op.name}\t{op.role}\tcreated {op.created_at:%Y-%m-%d %H:%M}\t{revoked}")
        return 0
    revoked_op = asyncio.run(revoke_operator(settings, args.name))
    if revoked_op is None:
        print(f"assistant: no operator named {args.name!r}", file=sys.stderr)
        return 1
    print(f"revoked operator {revoked_op.name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"assistant: {exc}", file=sys.stderr)
        return 2
    overrides = {
        k: v
        for k, v in (("host", args.host), ("port", args.port), ("db_url", args.db_url))
        if v is not None
    }
    settings = replace(settings, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    command = args.command or "serve"
    if command == "migrate":
        migrate_database(settings.db_url)
        print("database is at the latest revision")
        return 0
    if command == "refuse":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        report = asyncio.run(refuse_database(settings))
        print(
            f"re-fused {report.profiles} profiles of {report.users} users from "
            f"{report.observations} observations with {report.model_version}"
        )
        return 0
    if command == "train":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            return train(args.kind, args.args, db_url=settings.db_url)
        except ValueError as e:
            print(f"assistant: {e}", file=sys.stderr)
            return 2
    if command == "operators":
        return _operators(settings, args)
    if command == "token":
        if settings.widget_secret is None:
            print("assistant: set ASSISTANT_WIDGET_SECRET first", file=sys.stderr)
            return 2
        print(
            issue_token(
                settings.widget_secret,
                args.external_id,
                tenant=args.tenant,
                ttl_s=args.ttl,
                name=args.name,
            )
        )
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    asyncio.run(_serve_forever(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
