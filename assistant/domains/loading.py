"""Parse and check a domain pack: every problem with its file and line, or the pack.

`parse_pack` is pure: it takes the pack's files as texts (relative path -> text) and returns
the pack and its warnings, or raises `PackError` with every problem found, warnings included;
it never returns half a pack. `load_pack` reads a folder and calls it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from types import MappingProxyType
from typing import Any

from assistant.domains.locate import Lines, locate
from assistant.domains.pack import (
    ADVISED_EXAMPLES,
    CONVERSATION_INTENTS,
    DOMAIN_FILE,
    EVENTS_FILE,
    INTENT_NAME,
    INTENTS_DIR,
    MIN_EXAMPLES,
    RESERVED_NAMES,
    TODO_MARK,
    Answer,
    ConversationAnswer,
    DomainPack,
    EventPhrase,
    HandoffHints,
    Intent,
    example_key,
    placeholders,
)
from assistant.domains.problems import PackError, Problem, Severity

_TOML_LINE = re.compile(r"\(at line (\d+), column \d+\)")
_PACK_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_DOMAIN_KEYS = ("name", "language", "description", "answers")
_CONVERSATION_KEYS = ("answer", "facts", "follow_ups", "voice_answer")
_INTENT_KEYS = (
    "name",
    "description",
    "examples",
    "title",
    "answer",
    "facts",
    "follow_ups",
    "offer_human",
    "voice_answer",
    "handoff",
)
_HANDOFF_KEYS = ("immediate", "anger_threshold", "note")
_EVENT_KEYS = ("name", "phrase", "meaning", "props", "hints", "problem")


@dataclass(frozen=True, slots=True)
class LoadedPack:
    pack: DomainPack
    warnings: tuple[Problem, ...]


def _normal(text: str) -> str:
    """One paragraph, single spaces: how TOML multi-line strings are read."""
    return " ".join(text.split())


class _File:
    """One file's document, lines and problems, and typed readers that report as they read."""

    def __init__(self, name: str, problems: list[Problem]) -> None:
        self.name = name
        self.problems = problems
        self.lines = Lines({})

    def report(self, severity: Severity, path: tuple[str | int, ...], message: str) -> None:
        line = self.lines.at(*path) if path else None
        self.problems.append(Problem(severity, self.name, line, message))

    def error(self, path: tuple[str | int, ...], message: str) -> None:
        self.report(Severity.ERROR, path, message)

    def parse(self, text: str) -> dict[str, Any] | None:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            match = _TOML_LINE.search(str(exc))
            line = int(match.group(1)) if match else text.count("\n") + 1
            self.problems.append(Problem(Severity.ERROR, self.name, line, f"not valid TOML: {exc}"))
            return None
        self.lines = locate(text)
        return document

    def known(
        self, raw: Mapping[str, Any], allowed: tuple[str, ...], at: tuple[str | int, ...] = ()
    ) -> None:
        for key in raw:
            if key not in allowed:
                self.error((*at, key), f"unknown key {key!r} (known: {', '.join(allowed)})")

    def text(
        self,
        raw: Mapping[str, Any],
        key: str,
        at: tuple[str | int, ...] = (),
        *,
        required: bool = True,
    ) -> str | None:
        if key not in raw:
            if required:
                self.error(at, f"missing {key!r}")
            return None
        value = raw[key]
        if not isinstance(value, str) or not value.strip():
            self.error((*at, key), f"{key!r} must be a non-empty string")
            return None
        return _normal(value)

    def texts(
        self, raw: Mapping[str, Any], key: str, at: tuple[str | int, ...] = (), *, required: bool
    ) -> tuple[str, ...] | None:
        """A list of non-empty strings; () when absent and not required; None on a problem."""
        if key not in raw:
            if required:
                self.error(at, f"missing {key!r}")
                return None
            return ()
        value = raw[key]
        if not isinstance(value, list):
            self.error((*at, key), f"{key!r} must be a list of strings")
            return None
        good = True
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.error((*at, key, i), f"{key!r}: item {i + 1} must be a non-empty string")
                good = False
        return tuple(_normal(v) for v in value) if good else None

    def flag(self, raw: Mapping[str, Any], key: str, at: tuple[str | int, ...] = ()) -> bool:
        value = raw.get(key, False)
        if not isinstance(value, bool):
            self.error((*at, key), f"{key!r} must be true or false")
            return False
        return value

    def table(
        self, raw: Mapping[str, Any], key: str, at: tuple[str | int, ...] = ()
    ) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.error((*at, key), f"{key!r} must be a table")
            return {}
        return value

    def follow_ups(self, raw: Mapping[str, Any], at: tuple[str | int, ...] = ()) -> tuple[str, ...]:
        follow_ups = self.texts(raw, "follow_ups", at, required=False) or ()
        for i, question in enumerate(follow_ups):
            if not question.endswith("?"):
                self.error((*at, "follow_ups", i), "follow-ups are questions: end it with '?'")
        return follow_ups


def _domain(
    file: _File, document: Mapping[str, Any]
) -> tuple[str | None, str | None, str | None, dict[str, ConversationAnswer]]:
    file.known(document, _DOMAIN_KEYS)
    name = file.text(document, "name")
    if name is not None and not _PACK_NAME.match(name):
        file.error(("name",), "'name' is lowercase letters, digits, '_' and '-' (a folder name)")
    language = file.text(document, "language")
    if language is not None and not _LANGUAGE.match(language):
        file.error(("language",), "'language' is a language tag such as 'en' or 'pt-BR'")
    description = file.text(document, "description")
    answers: dict[str, ConversationAnswer] = {}
    for intent, raw in file.table(document, "answers").items():
        at = ("answers", intent)
        if intent not in CONVERSATION_INTENTS:
            file.error(
                at,
                f"no conversation intent {intent!r} to answer "
                f"(they are: {', '.join(CONVERSATION_INTENTS)})",
            )
            continue
        if not isinstance(raw, dict):
            file.error(at, f"answers.{intent} must be a table")
            continue
        file.known(raw, _CONVERSATION_KEYS, at)
        text = file.text(raw, "answer", at)
        facts = file.texts(raw, "facts", at, required=False) or ()
        follow_ups = file.follow_ups(raw, at)
        voice = file.text(raw, "voice_answer", at, required=False)
        if text is not None:
            answers[intent] = ConversationAnswer(text, facts, follow_ups, voice)
    return name, language, description, answers


def _handoff(file: _File, document: Mapping[str, Any]) -> HandoffHints:
    raw = file.table(document, "handoff")
    at = ("handoff",)
    file.known(raw, _HANDOFF_KEYS, at)
    threshold = raw.get("anger_threshold")
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0.0 < threshold <= 1.0
    ):
        file.error((*at, "anger_threshold"), "'anger_threshold' is a number in (0, 1]")
        threshold = None
    return HandoffHints(
        immediate=file.flag(raw, "immediate", at),
        anger_threshold=None if threshold is None else float(threshold),
        note=file.text(raw, "note", at, required=False),
    )


@dataclass(frozen=True, slots=True)
class _IntentFile:
    """What the cross-file checks need of an intent file, read even when it has errors."""

    file: _File
    name: str | None
    examples: tuple[str, ...]
    intent: Intent | None  # None when the file has an error


def _intent(file: _File, document: Mapping[str, Any]) -> _IntentFile:
    before = len(file.problems)
    file.known(document, _INTENT_KEYS)
    name = file.text(document, "name")
    if name is not None and not INTENT_NAME.match(name):
        file.error(("name",), "an intent name is a letter then letters, digits, '_', '-' or '?'")
    if name is not None and name in RESERVED_NAMES:
        file.error(
            ("name",),
            f"{name!r} is a conversation intent: answer it in {DOMAIN_FILE} under [answers.{name}]",
        )
    description = file.text(document, "description")
    examples = file.texts(document, "examples", required=True)
    title = file.text(document, "title")
    answer = file.text(document, "answer")
    facts = file.texts(document, "facts", required=True)
    for key, value in (("description", description), ("title", title), ("answer", answer)):
        if value is not None and value.startswith(TODO_MARK):
            file.error((key,), f"the {key} is not written yet (it starts with {TODO_MARK})")
    for i, fact in enumerate(facts or ()):
        if fact.startswith(TODO_MARK):
            file.error(("facts", i), f"the fact is not written yet (it starts with {TODO_MARK})")
    if facts == ():
        file.error(("facts",), "'facts' needs at least one fact the answer rests on")
    follow_ups = file.follow_ups(document)
    voice = file.text(document, "voice_answer", required=False)
    offer_human = file.flag(document, "offer_human")
    handoff = _handoff(file, document)
    if examples is not None:
        seen: dict[str, int] = {}
        for i, example in enumerate(examples):
            key = example_key(example)
            if key in seen:
                first = file.lines.at("examples", seen[key])
                file.error(("examples", i), f"example {example!r} repeats the one on line {first}")
            else:
                seen[key] = i
        count = len(seen)
        if count < MIN_EXAMPLES:
            file.error(
                ("examples",), f"{count} example(s): an intent needs at least {MIN_EXAMPLES}"
            )
        elif count < ADVISED_EXAMPLES:
            file.report(
                Severity.WARNING,
                ("examples",),
                f"{count} examples: {ADVISED_EXAMPLES} or more make a dependable intent",
            )
    if any(p.severity is Severity.ERROR for p in file.problems[before:]):
        return _IntentFile(file, name, examples or (), None)
    assert name and description and examples and title and answer and facts is not None
    intent = Intent(
        name=name,
        description=description,
        examples=examples,
        answer=Answer(title, answer, facts, follow_ups, offer_human, voice),
        handoff=handoff,
        source=file.name,
    )
    return _IntentFile(file, name, examples, intent)


def _events(file: _File, document: Mapping[str, Any], intents: set[str]) -> list[EventPhrase]:
    file.known(document, ("event",))
    tables = document.get("event", [])
    if not isinstance(tables, list):
        file.error(("event",), "events are [[event]] tables")
        return []
    out: list[EventPhrase] = []
    seen: dict[str, int | None] = {}
    for k, raw in enumerate(tables):
        at: tuple[str | int, ...] = ("event", k)
        if not isinstance(raw, dict):
            file.error(at, "events are [[event]] tables")
            continue
        file.known(raw, _EVENT_KEYS, at)
        name = file.text(raw, "name", at)
        if name is not None:
            if name in seen:
                file.error(
                    (*at, "name"), f"event {name!r} is declared twice (first on line {seen[name]})"
                )
            seen.setdefault(name, file.lines.at(*at, "name"))
        phrase = file.text(raw, "phrase", at)
        props = file.texts(raw, "props", at, required=False) if "props" in raw else None
        hints = file.texts(raw, "hints", at, required=False) or ()
        for i, hint in enumerate(hints):
            if hint not in intents:
                file.error((*at, "hints", i), f"hint names no intent of this pack: {hint!r}")
        meaning = file.text(raw, "meaning", at, required=False) or ""
        problem = file.flag(raw, "problem", at)
        fields: tuple[str, ...] = ()
        if phrase is not None:
            try:
                fields = placeholders(phrase)
                formatted = [
                    f for _, f, spec, conversion in Formatter().parse(phrase) if spec or conversion
                ]
            except ValueError as exc:
                file.error((*at, "phrase"), f"the phrase's braces do not pair up: {exc}")
                phrase = None
            else:
                for placeholder in formatted:
                    file.error(
                        (*at, "phrase"),
                        f"placeholder {{{placeholder}}} takes no format or conversion",
                    )
        for placeholder in fields:
            if not _IDENTIFIER.match(placeholder):
                file.error(
                    (*at, "phrase"),
                    f"placeholder {{{placeholder}}} must name a prop, such as {{merchant}}",
                )
            elif props is not None and placeholder not in props:
                file.error(
                    (*at, "phrase"),
                    f"placeholder {{{placeholder}}} is not among the event's props "
                    f"({', '.join(props) or 'none'})",
                )
        if name is not None and phrase is not None:
            out.append(EventPhrase(name, phrase, meaning, props, hints, problem))
    return out


def _across(intents: list[_IntentFile]) -> None:
    """Checks between intent files: names used twice, examples under two intents."""
    named: dict[str, _IntentFile] = {}
    for entry in intents:
        if entry.name is None:
            continue
        first = named.setdefault(entry.name, entry)
        if first is not entry:
            entry.file.error(
                ("name",),
                f"intent {entry.name!r} is already defined in {first.file.name} "
                f"(line {first.file.lines.at('name')})",
            )
    owner: dict[str, tuple[_IntentFile, int]] = {}
    for entry in intents:
        for i, example in enumerate(entry.examples):
            key = example_key(example)
            seen = owner.setdefault(key, (entry, i))
            if seen[0] is not entry and seen[0].name != entry.name:
                other, j = seen
                entry.file.error(
                    ("examples", i),
                    f"example {example!r} is also an example of {other.name!r} "
                    f"({other.file.name}:{other.file.lines.at('examples', j)})",
                )


def _read(name: str, text: str, problems: list[Problem]) -> tuple[_File, dict[str, Any] | None]:
    file = _File(name, problems)
    return file, file.parse(text)


def parse_pack(files: Mapping[str, str], found: Sequence[Problem] = ()) -> LoadedPack:
    """The pack in `files` (relative path with "/" -> text), checked whole; `found`: problems
    met while reading them.

    Raises `PackError` with every problem (warnings included) when there is any error.
    """
    problems: list[Problem] = list(found)
    domain_text = files.get(DOMAIN_FILE)
    header: tuple[str | None, str | None, str | None, dict[str, ConversationAnswer]] = (
        None,
        None,
        None,
        {},
    )
    if domain_text is None:
        problems.append(Problem(Severity.ERROR, DOMAIN_FILE, None, "missing: every pack has one"))
    else:
        file, document = _read(DOMAIN_FILE, domain_text, problems)
        if document is not None:
            header = _domain(file, document)
    prefix = INTENTS_DIR + "/"
    paths = sorted(p for p in files if p.startswith(prefix) and p.endswith(".toml"))
    intent_files: list[_IntentFile] = []
    for path in paths:
        file, document = _read(path, files[path], problems)
        if document is not None:
            intent_files.append(_intent(file, document))
    # Files that could not be read still count: their problem is reported already.
    count = len(paths) + len({p.file for p in found if p.file.startswith(prefix)})
    if count == 0:
        problems.append(
            Problem(Severity.ERROR, INTENTS_DIR, None, "no intent files (intents/*.toml)")
        )
    elif count < 2:
        problems.append(
            Problem(Severity.ERROR, INTENTS_DIR, None, "a pack needs at least two intents")
        )
    _across(intent_files)
    events: list[EventPhrase] = []
    if EVENTS_FILE in files:
        file, document = _read(EVENTS_FILE, files[EVENTS_FILE], problems)
        names = {f.name for f in intent_files if f.name is not None}
        if document is not None:
            events = _events(file, document, names)
    if any(p.severity is Severity.ERROR for p in problems):
        raise PackError(problems)
    name, language, description, answers = header
    assert name and language and description
    pack = DomainPack(
        name=name,
        language=language,
        description=description,
        intents=tuple(f.intent for f in intent_files if f.intent is not None),
        conversation=MappingProxyType(answers),
        events=tuple(events),
    )
    return LoadedPack(pack, tuple(problems))


def pack_files(directory: Path) -> tuple[dict[str, str], list[Problem]]:
    """The files `parse_pack` reads from a pack's folder (others, such as the trained weights
    or the model card, are left alone), and a problem for each that is not UTF-8 text."""
    if not directory.is_dir():
        raise PackError([Problem(Severity.ERROR, str(directory), None, "no such folder")])
    paths = [directory / DOMAIN_FILE, directory / EVENTS_FILE]
    paths += sorted((directory / INTENTS_DIR).glob("*.toml"))
    out: dict[str, str] = {}
    problems: list[Problem] = []
    for path in paths:
        if not path.is_file():
            continue
        relative = path.relative_to(directory).as_posix()
        try:
            # utf-8-sig: a byte-order mark, which some editors write, is no error.
            out[relative] = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            problems.append(Problem(Severity.ERROR, relative, None, f"not UTF-8 text: {exc}"))
    return out, problems


def load_pack(directory: Path) -> LoadedPack:
    """The pack in `directory`, checked; `PackError` with every problem when it has errors."""
    files, problems = pack_files(directory)
    return parse_pack(files, problems)
