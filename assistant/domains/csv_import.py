"""`assistant domain import-csv CSV DIR`: `intent,text` rows added to a pack's examples.

A team exports what customers wrote from its chat logs, labelled, as CSV: two columns,
`intent` then `text` (a header row naming them is optional and may put them the other way
round), quoted as CSV quotes, UTF-8 with or without a byte-order mark. Each new text is
added to its intent's `examples` in place, so the file keeps its comments and layout; an
intent the pack does not have yet gets a file of its own whose answer is a TODO, which
`assistant domain check` refuses until someone writes it. A text the pack already has, under
the same intent or earlier in the CSV, is skipped and counted; one the pack has under
another intent is skipped and reported with its line.

Parsing, planning and editing are pure functions of texts; `import_csv` reads and writes.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from assistant.domains.loading import pack_files
from assistant.domains.locate import arrays
from assistant.domains.pack import INTENT_NAME, INTENTS_DIR, RESERVED_NAMES, TODO_MARK, example_key
from assistant.domains.problems import PackError, Problem, Severity


@dataclass(frozen=True, slots=True)
class CsvRow:
    line: int  # where the row ends in the CSV (a quoted text may span lines)
    intent: str
    text: str


@dataclass(frozen=True, slots=True)
class ImportPlan:
    """What an import changes: the files' new texts, and what it skipped."""

    files: dict[str, str]  # relative path -> new text, for every file written or created
    added: dict[str, int]  # intent -> examples added
    created: tuple[str, ...]  # the intent files created
    duplicates: int  # rows already in the pack under their intent, or earlier in the CSV
    skipped: tuple[Problem, ...]  # rows not imported: malformed, or under another intent
    rows: int


@dataclass(frozen=True, slots=True)
class _Target:
    path: str
    text: str
    new: list[str] = field(default_factory=list)


def parse_csv(text: str, source: str) -> tuple[list[CsvRow], list[Problem]]:
    """The rows of an `intent,text` CSV, and a problem for each malformed row."""
    text = text.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[CsvRow] = []
    problems: list[Problem] = []
    columns = (0, 1)
    first = True
    for record in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        if first:
            first = False
            heading = [cell.strip().lower() for cell in record]
            if {"intent", "text"} <= set(heading):
                columns = (heading.index("intent"), heading.index("text"))
                continue
        if len(record) <= max(columns) or (columns == (0, 1) and len(record) != 2):
            problems.append(
                Problem(
                    Severity.ERROR,
                    source,
                    line,
                    f"expected 2 columns (intent,text), got {len(record)}",
                )
            )
            continue
        intent, sentence = record[columns[0]].strip(), " ".join(record[columns[1]].split())
        if not INTENT_NAME.match(intent) or intent in RESERVED_NAMES:
            problems.append(
                Problem(Severity.ERROR, source, line, f"{intent!r} cannot name an intent")
            )
        elif not sentence:
            problems.append(Problem(Severity.ERROR, source, line, "the text is empty"))
        else:
            rows.append(CsvRow(line, intent, sentence))
    return rows, problems


def toml_string(text: str) -> str:
    """`text` as a TOML basic string (JSON's escapes are TOML's, but for DEL)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def file_name(intent: str, taken: Iterable[str]) -> str:
    """The file a new intent goes in: its name, with what a file name should not hold
    replaced, made unique among `taken`."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", intent)
    used = set(taken)
    path, n = f"{INTENTS_DIR}/{stem}.toml", 2
    while path in used:
        path, n = f"{INTENTS_DIR}/{stem}-{n}.toml", n + 1
    return path


def new_intent_file(intent: str, examples: Sequence[str], source: str) -> str:
    items = "".join(f"  {toml_string(e)},\n" for e in examples)
    return (
        f"# Created by `assistant domain import-csv` from {source}: write the description, title,\n"
        "# answer and facts, then run `assistant domain check`.\n"
        f"name = {toml_string(intent)}\n"
        f'description = "{TODO_MARK}: what customers mean by this intent."\n'
        f"examples = [\n{items}]\n"
        f'title = "{TODO_MARK}: a short noun phrase, such as \\"a late delivery\\""\n'
        f'answer = "{TODO_MARK}: the answer the assistant gives."\n'
        f'facts = ["{TODO_MARK}: a fact the answer rests on."]\n'
        "follow_ups = []\n"
    )


def append_examples(text: str, examples: Sequence[str]) -> str:
    """`text`, an intent file, with `examples` added at the end of its `examples` array,
    everything else as it was. Raises ValueError when the edit would not read back right."""
    before = tomllib.loads(text).get("examples")
    if before is not None and not isinstance(before, list):
        raise ValueError("'examples' is not an array")
    spans, first_table = arrays(text)
    span = spans.get(("examples",))
    if span is None:
        block = "examples = [\n" + "".join(f"  {toml_string(e)},\n" for e in examples) + "]\n"
        at = len(text) if first_table is None else text.rfind("\n", 0, first_table) + 1
        if at == len(text) and text and not text.endswith("\n"):
            block = "\n" + block
        out = text[:at] + block + text[at:]
    else:
        line_start = text.rfind("\n", 0, span.closing) + 1
        own_line = not text[line_start : span.closing].strip()
        if own_line and span.last_end is not None:
            # A multi-line array: new lines go just above its closing bracket, indented as
            # its last item is.
            head = text[: span.last_end] + ("" if span.trailing_comma else ",")
            middle = text[span.last_end : line_start]
            last_line = text[text.rfind("\n", 0, span.last_end) + 1 :]
            indent = last_line[: len(last_line) - len(last_line.lstrip(" \t"))] or "  "
            items = "".join(f"{indent}{toml_string(e)},\n" for e in examples)
            out = head + middle + items + text[line_start:]
        else:
            # A one-line (or empty) array becomes a multi-line one.
            every = (*(before or []), *examples)
            body = "[\n" + "".join(f"  {toml_string(e)},\n" for e in every) + "]"
            out = text[: span.opening] + body + text[span.closing + 1 :]
    after = tomllib.loads(out).get("examples")
    if after != [*(before or []), *examples]:
        raise ValueError("the examples did not read back as written")
    return out


def plan_import(files: Mapping[str, str], rows: Sequence[CsvRow], source: str) -> ImportPlan:
    """What importing `rows` into the pack `files` (as `pack_files` reads them) changes."""
    targets: dict[str, _Target] = {}
    owner: dict[str, str] = {}  # example key -> intent
    for path, text in files.items():
        if not path.startswith(INTENTS_DIR + "/"):
            continue
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PackError(
                [Problem(Severity.ERROR, path, None, f"not valid TOML ({exc}): fix it first")]
            ) from None
        name = document.get("name")
        if isinstance(name, str) and name not in targets:
            targets[name] = _Target(path, text)
            examples = document.get("examples", [])
            for example in examples if isinstance(examples, list) else []:
                if isinstance(example, str):
                    owner.setdefault(example_key(example), name)
    duplicates = 0
    skipped: list[Problem] = []
    created: list[str] = []
    for row in rows:
        key = example_key(row.text)
        known = owner.get(key)
        if known == row.intent:
            duplicates += 1
            continue
        if known is not None:
            skipped.append(
                Problem(
                    Severity.WARNING,
                    source,
                    row.line,
                    f"{row.text!r} is already an example of {known!r}: not added to {row.intent!r}",
                )
            )
            continue
        owner[key] = row.intent
        target = targets.get(row.intent)
        if target is None:
            path = file_name(row.intent, [*files, *created])
            target = targets[row.intent] = _Target(path, "")
            created.append(path)
        target.new.append(row.text)
    out: dict[str, str] = {}
    for name, target in targets.items():
        if not target.new:
            continue
        if target.path in created:
            out[target.path] = new_intent_file(name, target.new, source)
        else:
            try:
                out[target.path] = append_examples(target.text, target.new)
            except ValueError as exc:
                raise PackError(
                    [Problem(Severity.ERROR, target.path, None, f"cannot add examples: {exc}")]
                ) from None
    return ImportPlan(
        files=out,
        added={n: len(t.new) for n, t in targets.items() if t.new},
        created=tuple(created),
        duplicates=duplicates,
        skipped=tuple(skipped),
        rows=len(rows),
    )


def import_csv(csv_path: Path, directory: Path) -> ImportPlan:
    """Import `csv_path` into the pack in `directory` (created when missing); raises
    `PackError` when the CSV is not UTF-8 or an intent file cannot be edited, and then
    writes nothing."""
    source = csv_path.name
    try:
        text = csv_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problem = Problem(Severity.ERROR, str(csv_path), None, f"not UTF-8 text: {exc}")
        raise PackError([problem]) from None
    rows, malformed = parse_csv(text, source)
    directory.mkdir(parents=True, exist_ok=True)
    files, problems = pack_files(directory)
    if problems:
        raise PackError(problems)
    plan = plan_import(files, rows, source)
    for relative, content in plan.files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(content, encoding="utf-8")
        tmp.replace(path)
    return ImportPlan(
        files=plan.files,
        added=plan.added,
        created=plan.created,
        duplicates=plan.duplicates,
        skipped=(*malformed, *plan.skipped),
        rows=plan.rows + len(malformed),
    )


def summary(plan: ImportPlan, source: str) -> list[str]:
    """The lines `import-csv` prints."""
    added = sum(plan.added.values())
    lines = [f"read {plan.rows} row(s) from {source}"]
    if added:
        per = ", ".join(f"{n} to {intent}" for intent, n in sorted(plan.added.items()))
        lines.append(f"added {added} example(s): {per}")
    else:
        lines.append("added no examples")
    if plan.created:
        lines.append(
            f"created {len(plan.created)} intent file(s): {', '.join(plan.created)} "
            "(write their answers, then run `assistant domain check`)"
        )
    lines.append(f"skipped {plan.duplicates} duplicate(s) already in the pack or the CSV")
    if plan.skipped:
        lines.append(f"skipped {len(plan.skipped)} row(s):")
        lines.extend(f"  {p.file}:{p.line}: {p.message}" for p in plan.skipped)
    return lines
