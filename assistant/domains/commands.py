"""`assistant domain check|import-csv|train`: the pack commands' arguments and output.

Training needs the trainers in `fusion.training`, which only the wiring (`assistant.app`)
may import, so `run` takes the trainer as an argument, as the command line's `serve` does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from assistant.domains.csv_import import import_csv, summary
from assistant.domains.loading import load_pack
from assistant.domains.pack import DomainPack
from assistant.domains.problems import PackError, Problem

# Trains `pack`, loaded from the folder, with the `train` options below; the exit status.
Train = Callable[[DomainPack, Path, argparse.Namespace], int]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `domain` command and its subcommands, on the command line's subparsers."""
    domain = sub.add_parser("domain", help="check, import into and train a domain pack")
    commands = domain.add_subparsers(dest="domain_command", required=True)
    check = commands.add_parser(
        "check", help="report every problem of a pack with its file and line (exit 1 on errors)"
    )
    check.add_argument("dir", type=Path, help="the pack's folder")
    imported = commands.add_parser(
        "import-csv", help="add the examples of an intent,text CSV to a pack's intents"
    )
    imported.add_argument("csv", type=Path)
    imported.add_argument("dir", type=Path, help="the pack's folder (created when missing)")
    train = commands.add_parser(
        "train",
        help="train the pack's intent head with out-of-scope detection; writes the weights, "
        "model card and evaluation into the pack",
    )
    train.add_argument("dir", type=Path, help="the pack's folder")
    train.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data folder with CLINC150, for out-of-scope negatives (ASSISTANT_DATA_DIR)",
    )
    train.add_argument(
        "--folds", type=int, default=5, help="cross-validation folds, one ensemble member each"
    )
    train.add_argument("--hidden", type=int, default=256, help="hidden units per member")
    train.add_argument("--epochs", type=int, default=60)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto, cpu or cuda")
    train.add_argument("--threads", type=int, default=2, help="torch threads")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")


def _show(problems: Iterable[Problem], directory: Path) -> None:
    """Each problem on stderr, its file named from here, so an editor can open it."""
    for problem in problems:
        print(replace(problem, file=(directory / problem.file).as_posix()), file=sys.stderr)


def _check(directory: Path) -> int:
    try:
        loaded = load_pack(directory)
    except PackError as exc:
        _show(exc.problems, directory)
        errors = len(exc.errors)
        warnings = len(exc.problems) - errors
        print(f"{directory}: {errors} error(s), {warnings} warning(s)", file=sys.stderr)
        return 1
    _show(loaded.warnings, directory)
    pack = loaded.pack
    examples = sum(len(i.examples) for i in pack.intents)
    print(
        f"{directory}: pack {pack.name!r} ({pack.language}): {len(pack.intents)} intents, "
        f"{examples} examples, {len(pack.events)} events, "
        f"{len(loaded.warnings)} warning(s), no errors"
    )
    return 0


def _import(csv_path: Path, directory: Path) -> int:
    try:
        plan = import_csv(csv_path, directory)
    except PackError as exc:
        csv_problems = [p for p in exc.problems if p.file == str(csv_path)]
        for problem in csv_problems:
            print(problem, file=sys.stderr)
        _show([p for p in exc.problems if p not in csv_problems], directory)
        return 1
    for line in summary(plan, csv_path.name):
        print(line)
    return 0


def _train(args: argparse.Namespace, train: Train) -> int:
    directory: Path = args.dir
    try:
        loaded = load_pack(directory)
    except PackError as exc:
        _show(exc.problems, directory)
        print(f"{directory}: not trained; fix the errors above first", file=sys.stderr)
        return 1
    _show(loaded.warnings, directory)
    return train(loaded.pack, directory, args)


def run(args: argparse.Namespace, train: Train) -> int:
    """Run the parsed `domain` command; the exit status."""
    if args.domain_command == "check":
        return _check(args.dir)
    if args.domain_command == "import-csv":
        return _import(args.csv, args.dir)
    return _train(args, train)
