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
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from assistant import (
    CSP,
    MAX_FRAME_BYTES,
    ROLES,
    TRAINERS,
    ChatConnection,
    Models,
    OperatorConnection,
    ResponseGenerator,
    Runtime,
    Settings,
    SettingsError,
    create_operator,
    issue_token,
    list_operators,
    migrate_database,
    refuse_database,
    revoke_operator,
    static_asset,
    train,
)

log = logging.getLogger("server")

ROUTES = frozenset({"/chat", "/operator"})


class WebSocketTransport:
    """The assistant's Transport over one websockets connection."""

    def __init__(self, connection: ServerConnection) -> None:
        self._connection = connection

    async def send(self, text: str) -> None:
        await self._connection.send(text)

    async def close(self, code: int, reason: str) -> None:
        await self._connection.close(code, reason)


class App:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path = request.path.partition("?")[0]
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if await self.runtime.ready():
                return connection.respond(HTTPStatus.OK, "ready\n")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "database unreachable\n")
        if path not in ROUTES:
            asset = static_asset(path)
            if asset is not None and request.headers.get("Upgrade") is None:
                return _page(asset.content_type, asset.body)
            return connection.respond(HTTPStatus.NOT_FOUND, f"no route {path}\n")
        return None

    async def handle(self, connection: ServerConnection) -> None:
        transport = WebSocketTransport(connection)
        path = connection.request.path.partition("?")[0] if connection.request else "/chat"
        if path == "/operator":
            chat: ChatConnection | OperatorConnection = self.runtime.operators.connection(transport)
        else:
            chat = self.runtime.chat.connection(transport)
        try:
            async for message in connection:
                if isinstance(message, str):
                    await chat.on_text(message)
                else:
                    await chat.on_binary(message)
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
    def __init__(self, server: Server, runtime: Runtime) -> None:
        self.server = server
        self.runtime = runtime

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.runtime.settings.host
        return f"ws://{host}:{self.port}"


@asynccontextmanager
async def running(
    settings: Settings,
    *,
    models: Models | None = None,
    generator: ResponseGenerator | None = None,
    migrate_db: bool = False,
) -> AsyncIterator[RunningServer]:
    """Start the whole server (store, models, routes); stop everything on exit."""
    runtime = Runtime(settings, models, generator)
    await runtime.start(migrate_db=migrate_db)
    app = App(runtime)
    origins = [None, *settings.allowed_origins] if settings.allowed_origins else None
    try:
        async with serve(
            app.handle,
            settings.host,
            settings.port,
            process_request=app.process_request,
            max_size=MAX_FRAME_BYTES,
            origins=origins,  # type: ignore[arg-type]
        ) as server:
            yield RunningServer(server, runtime)
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
        print(f"listening on {srv.url}", flush=True)
        log.info("ready on %s (models on %s)", srv.url, srv.runtime.models.device)
        await stop.wait()
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
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
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
