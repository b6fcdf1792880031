"""The `assistant` command line: settings from the environment and flags, then one command.

assistant serve [--host H] [--port P]     (also: python server.py --host H --port P)
assistant migrate
assistant re-fuse                         (after a fusion model upgrade)
assistant train fusion|speech|intent|emotion [ARGS] [--with-corrections]
assistant token EXTERNAL_ID [--tenant T] [--ttl S]
assistant operators create NAME --role viewer|agent|admin   (prints the key once)
assistant operators list
assistant operators revoke NAME
assistant domain check DIR | import-csv CSV DIR | train DIR [ARGS]   (docs/domains.md)

Serving needs the network edge, which lives in server.py above this package: server.py's
`main` passes its serve function in, so that nothing here imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from assistant.app.operator_accounts import create_operator, list_operators, revoke_operator
from assistant.app.re_fusion import re_fuse_database
from assistant.app.runtime import migrate_database
from assistant.app.settings import Settings
from assistant.app.training import TRAINERS, train
from assistant.chat.widget_tokens import issue_token
from assistant.core.logs import configure_logging
from assistant.core.settings import SettingsError
from assistant.domains import TRAINED_DIR, DomainPack
from assistant.domains.commands import add_parser as add_domain_parser
from assistant.domains.commands import run as run_domain
from assistant.operators.roles import ROLES

Serve = Callable[[Settings], Coroutine[Any, Any, None]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assistant", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    serve_p = sub.add_parser("serve", help="run the server")
    for p in (parser, serve_p):
        p.add_argument("--host", help="bind address (ASSISTANT_HOST, default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port, 0 picks a free one (ASSISTANT_PORT)")
        p.add_argument("--db-url", help="database URL (ASSISTANT_DB_URL)")
    sub.add_parser("migrate", help="upgrade the database to the latest schema")
    sub.add_parser("re-fuse", help="rebuild every stored profile with the shipped fusion model")
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
    add_domain_parser(sub)
    return parser


def _fail(message: str, status: int) -> int:
    print(f"assistant: {message}", file=sys.stderr)
    return status


def _re_fuse(settings: Settings) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = asyncio.run(re_fuse_database(settings))
    print(
        f"re-fused {report.profiles} profiles of {report.users} users from "
        f"{report.observations} observations with {report.model_version}"
    )
    return 0


def _train(settings: Settings, args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return train(args.kind, args.args, db_url=settings.db_url)
    except ValueError as exc:
        return _fail(str(exc), 2)


def _train_domain(pack: DomainPack, directory: Path, options: argparse.Namespace) -> int:
    """`assistant domain train`: the pack's intent head, written into the pack's trained/."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fusion.device import select_device
    from fusion.training.packs import PackData, PackTrainConfig, load_negatives, train_pack

    data = PackData(
        pack.name,
        pack.language,
        pack.intent_names,
        tuple(intent.examples for intent in pack.intents),
    )
    config = PackTrainConfig(
        folds=options.folds,
        hidden=options.hidden,
        epochs=options.epochs,
        seed=options.seed,
        threads=options.threads,
        progress=not options.no_progress,
    )
    command = shlex.join(["assistant", *sys.argv[1:]])
    negatives = load_negatives(options.data)
    if not negatives.train:
        print(
            "no CLINC150 in the data folder (--data or ASSISTANT_DATA_DIR): training without "
            "out-of-scope negatives, out of scope decided by the confidence threshold alone",
            file=sys.stderr,
        )
    try:
        report = train_pack(
            data,
            negatives,
            directory / TRAINED_DIR,
            config,
            select_device(options.device),
            command,
        )
    except ValueError as exc:
        return _fail(str(exc), 1)
    cv = report["cross_validation"]
    recall = report["oos_test"]["recall"] if report["oos_test"] else None
    print(
        f"trained {directory / TRAINED_DIR} in {report['runtime_s']:.0f} s: cross-validated "
        f"accuracy {cv['accuracy_no_oos_detection']:.3f} (baseline "
        f"{cv['baseline_logreg_accuracy']:.3f}), in scope with out-of-scope detection "
        f"{cv['in_scope_accuracy']:.3f}, out-of-scope recall on held-out negatives "
        + ("not measured (no negatives)" if recall is None else f"{recall:.3f}")
    )
    return 0


def _token(settings: Settings, args: argparse.Namespace) -> int:
    if settings.widget_secret is None:
        return _fail("set ASSISTANT_WIDGET_SECRET first", 2)
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


def _operators(settings: Settings, args: argparse.Namespace) -> int:
    if args.operators_command == "create":
        try:
            operator, key = asyncio.run(create_operator(settings, args.name, args.role))
        except ValueError as exc:
            return _fail(str(exc), 1)
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
        return _fail(f"no operator named {args.name!r}", 1)
    print(f"revoked operator {revoked_op.name}")
    return 0


def run(argv: Sequence[str] | None, serve: Serve) -> int:
    """Parse `argv` (sys.argv when None), run its command; the exit status."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return _fail(str(exc), 2)
    overrides = {
        k: v
        for k, v in (("host", args.host), ("port", args.port), ("db_url", args.db_url))
        if v is not None
    }
    settings = replace(settings, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    command = args.command or "serve"
    if command == "migrate":
        report = migrate_database(settings.db_url)
        if report.history_reordered is not None:
            print(
                f"turn history: {report.history_reordered} stored conversations put in the "
                "order they were said"
            )
        print("database is at the latest revision")
        return 0
    if command == "re-fuse":
        return _re_fuse(settings)
    if command == "train":
        return _train(settings, args)
    if command == "operators":
        return _operators(settings, args)
    if command == "token":
        return _token(settings, args)
    if command == "domain":
        return run_domain(args, _train_domain)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    asyncio.run(serve(settings))
    return 0
