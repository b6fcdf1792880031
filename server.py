"""The network edge: WebSocket routes, HTTP endpoints (health, metrics, pages), signals.

Routes: /chat, /operator, /voice and /voice/twilio (the table in ROUTES); HTTP: /healthz,
/readyz, /metrics, /console (operator console) and /widget (chat widget demo), with /static/*
files. The command line is assistant/app/cli.py; `python server.py` and `assistant` run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
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
    TWILIO_SIGNATURE_HEADER,
    ChatConnection,
    Models,
    NativeConnection,
    OperatorConnection,
    ResponseGenerator,
    Runtime,
    Settings,
    Transport,
    TransportClosed,
    TwilioConnection,
    VoiceModels,
    single_threaded_blas,
    static_asset,
    twilio_refusal,
    twilio_stream_url,
)
from assistant.app.cli import run as run_cli

# How long a thread may hold the GIL while another waits for it.
SWITCH_INTERVAL_S = 0.0005

log = logging.getLogger("server")

# After the drain, how long chat connections get to send what they have queued and close.
CLOSE_GRACE_S = 5.0


class _Floor(logging.Filter):
    """Drops a logger's records below a level, whatever the configured log level."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


# Polled every few seconds by load balancers, orchestrators and Prometheus.
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


class _QuietProbes(_Floor):
    """websockets' server logger: below INFO it logs frames; at INFO, two lines for every HTTP
    answer and WebSocket ("HTTP response sent", "connection closed"), which for probes would
    be most of the log. Their warnings and errors stay."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if not super().filter(record):
            return False
        # Each connection's records carry it (websockets' LoggerAdapter), a weak proxy.
        connection = getattr(record, "websocket", None)
        try:
            request = getattr(connection, "request", None)
        except ReferenceError:
            return True
        return request is None or request.path.partition("?")[0] not in PROBES


# Libraries that log every frame, or every SQL statement with its parameters, below these
# levels: that is message text, which never goes to the logs whatever ASSISTANT_LOG_LEVEL says.
PAYLOAD_FLOORS = {
    "websockets.server": _QuietProbes(),
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


# Each WebSocket path and the connection that serves it, given the transport and the client's
# address. Any other path is an HTTP page or a 404.
ROUTES: dict[str, Callable[[Runtime, Transport, str], RouteConnection]] = {
    "/chat": lambda runtime, transport, _: ChatConnection(runtime.chat, transport),
    "/operator": lambda runtime, transport, address: OperatorConnection(
        runtime.operators, transport, address
    ),
    "/voice": lambda runtime, transport, _: NativeConnection(runtime.voice, transport),
    "/voice/twilio": lambda runtime, transport, _: TwilioConnection(runtime.voice, transport),
}


def _address(connection: ServerConnection) -> str:
    remote = connection.remote_address
    return str(remote[0]) if remote else ""


def _route(connection: ServerConnection) -> str:
    return connection.request.path.partition("?")[0] if connection.request else "/chat"


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
        if path == TwilioConnection.ROUTE:
            unsigned = self._unsigned_stream(connection, request)
            if unsigned is not None:
                return unsigned
        if self._over_limit(_address(connection)):
            self.runtime.metrics.upgrade_refused(path, "too_many_connections")
            return connection.respond(
                HTTPStatus.TOO_MANY_REQUESTS, "too many connections from this address\n"
            )
        return None

    def _unsigned_stream(self, connection: ServerConnection, request: Request) -> Response | None:
        """HTTP 403 for a Twilio stream without Twilio's signature, when the server has the
        auth token to check it (docs/voice.md#signed-streams)."""
        settings = self.runtime.settings
        if settings.twilio_auth_token is None:
            return None
        url = twilio_stream_url(request.path, request.headers.get_all("Host"), settings.public_url)
        refusal = twilio_refusal(
            settings.twilio_auth_token, url, request.headers.get_all(TWILIO_SIGNATURE_HEADER)
        )
        if refusal is None:
            return None
        self.runtime.metrics.upgrade_refused(TwilioConnection.ROUTE, refusal)
        # The URL checked, without its query, tells a misconfigured ASSISTANT_PUBLIC_URL apart.
        log.warning("refused a Twilio stream: %s for %s", refusal, url.partition("?")[0])
        return connection.respond(HTTPStatus.FORBIDDEN, f"{refusal}\n")

    async def connected(self, connection: ServerConnection) -> None:
        """websockets' handler: counts the connection by route around `handle`."""
        route = _route(connection)
        address = _address(connection)
        if self._over_limit(address):
            # Handshakes that passed process_request together, beyond the limit.
            await connection.close(CLOSE_TRY_AGAIN, "too many connections from this address")
            return
        self.per_address[address] += 1
        self.open[connection] = route
        self.runtime.metrics.opened(route)
        try:
            await self.handle(connection, route, address)
        finally:
            self.runtime.metrics.closed(route)
            del self.open[connection]
            self.per_address[address] -= 1
            if not self.per_address[address]:
                del self.per_address[address]

    async def handle(self, connection: ServerConnection, route: str, address: str) -> None:
        transport = WebSocketTransport(connection)
        chat = ROUTES[route](self.runtime, transport, address)
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
    load_speech: bool = False,
) -> AsyncIterator[RunningServer]:
    """Start the whole server (store, models, routes); stop everything on exit.
    `load_speech`: load the speech models now, in the background, /readyz answering 503 until
    they are loaded (else they load with the first call, unless `voice` brings them)."""
    for name, floor in PAYLOAD_FLOORS.items():
        if floor not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(floor)
    runtime = Runtime(settings, models, generator, voice)
    await runtime.start(migrate_db=migrate_db, load_speech=load_speech)
    if settings.twilio_auth_token is None:
        log.warning("ASSISTANT_TWILIO_AUTH_TOKEN is not set: Twilio streams are not verified")
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


async def serve_forever(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then drain: the `assistant serve` command."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Event loops without signal support (Windows) stop on Ctrl-C through KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with running(settings, load_speech=True) as srv:
        # Probes are answered while the speech models load (/readyz: 503); calls should not
        # wait for them, so they are loaded before saying we listen.
        await srv.runtime.speech_loaded()
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


def main(argv: Sequence[str] | None = None) -> int:
    """The `assistant` command (and `python server.py`): its serve command runs this edge."""
    return run_cli(argv, serve_forever)


if __name__ == "__main__":
    sys.exit(main())
