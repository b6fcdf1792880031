"""Where things are in a TOML file: the line of each table, key and array element.

tomllib reports the line of a syntax error but a parsed document has no positions, so a
problem found later ("this intent name is used twice") needs its line found again. This is
a light scanner for files tomllib has already accepted: it follows headers, keys, strings,
arrays and inline tables closely enough to record where each starts, and nothing else.

Paths name what a parsed document holds: `("name",)`, `("answer", "facts")`, the third
string of that array `("answer", "facts", 2)`, the second `[[event]]` table `("event", 1)`
and its key `("event", 1, "phrase")`.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

Path = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ArraySpan:
    """Where an array is in the text: its brackets and the end of its last element."""

    opening: int  # index of "["
    closing: int  # index of "]"
    last_end: int | None  # index just past the last element; None when it is empty
    trailing_comma: bool  # a comma follows the last element


@dataclass(frozen=True, slots=True)
class Lines:
    """The 1-based line where each path starts."""

    starts: dict[Path, int]

    def at(self, *path: str | int) -> int | None:
        """The line of `path`, else of its longest recorded prefix; None when none is."""
        for end in range(len(path), 0, -1):
            line = self.starts.get(path[:end])
            if line is not None:
                return line
        return None


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.starts: dict[Path, int] = {}
        self.arrays: dict[Path, ArraySpan] = {}
        self.first_table: int | None = None
        self.table_counts: dict[tuple[str, ...], int] = {}

    def line(self, i: int) -> int:
        return bisect.bisect_left(self.newlines, i) + 1

    def char(self, i: int) -> str:
        return self.text[i] if i < len(self.text) else ""

    def blank(self, i: int, *, newlines: bool) -> int:
        """Past spaces (and, with `newlines`, line ends and comments)."""
        while i < len(self.text):
            c = self.text[i]
            if c in " \t" or (newlines and c in "\r\n"):
                i += 1
            elif c == "#" and newlines:
                end = self.text.find("\n", i)
                i = len(self.text) if end < 0 else end
            else:
                break
        return i

    def string(self, i: int) -> tuple[str, int]:
        """The string starting at `i` (quotes included in the scan) and the index after it."""
        for quote in ('"""', "'''", '"', "'"):
            if self.text.startswith(quote, i):
                break
        j = i + len(quote)
        while j < len(self.text):
            if quote[0] == '"' and self.text[j] == "\\":
                j += 2
                continue
            if self.text.startswith(quote, j):
                end = j + len(quote)
                # A multi-line string may end with up to two more quote characters.
                while len(quote) == 3 and self.char(end) == quote[0] and end - j < 5:
                    end += 1
                body = self.text[i + len(quote) : end - len(quote)]
                return (_ESCAPE.sub(r"\1", body) if quote[0] == '"' else body), end
            j += 1
        return self.text[i + len(quote) :], len(self.text)

    def key(self, i: int) -> tuple[tuple[str, ...], int]:
        parts: list[str] = []
        while True:
            i = self.blank(i, newlines=False)
            if self.char(i) in ('"', "'"):
                part, i = self.string(i)
            else:
                match = _BARE.match(self.text, i)
                part, i = (match.group(), match.end()) if match else ("", i + 1)
            parts.append(part)
            i = self.blank(i, newlines=False)
            if self.char(i) != ".":
                return tuple(parts), i
            i += 1

    def value(self, i: int, path: Path) -> int:
        c = self.char(i)
        if c in ('"', "'"):
            return self.string(i)[1]
        if c == "[":
            return self.array(i, path)
        if c == "{":
            return self.inline_table(i)
        while i < len(self.text) and self.text[i] not in ",]}\r\n#":
            i += 1
        return i

    def array(self, i: int, path: Path) -> int:
        opening = i
        i += 1
        index = 0
        last_end: int | None = None
        comma = False
        while i < len(self.text):
            i = self.blank(i, newlines=True)
            if self.char(i) == "]":
                self.arrays[path] = ArraySpan(opening, i, last_end, comma)
                return i + 1
            self.starts[(*path, index)] = self.line(i)
            i = last_end = self.value(i, (*path, index))
            i = self.blank(i, newlines=True)
            comma = self.char(i) == ","
            if comma:
                i += 1
            index += 1
        return i

    def inline_table(self, i: int) -> int:
        depth = 0
        while i < len(self.text):
            c = self.text[i]
            if c in ('"', "'"):
                i = self.string(i)[1]
                continue
            depth += (c in "{[") - (c in "}]")
            i += 1
            if depth == 0:
                return i
        return i

    def scan(self) -> dict[Path, int]:
        table: Path = ()
        i = 0
        while True:
            i = self.blank(i, newlines=True)
            if i >= len(self.text):
                return self.starts
            if self.char(i) == "[" and self.first_table is None:
                self.first_table = i
            if self.text.startswith("[[", i):
                name, i = self.key(i + 2)
                count = self.table_counts.get(name, 0)
                self.table_counts[name] = count + 1
                table = (*name, count)
                self.starts.setdefault(table[:-1], self.line(i))
                self.starts[table] = self.line(i)
                i = self.text.find("]]", i) + 2
            elif self.char(i) == "[":
                name, i = self.key(i + 1)
                # A sub-table of the latest [[array]] entry belongs to that entry.
                entry = next(
                    (
                        (n, c - 1)
                        for n, c in self.table_counts.items()
                        if name[: len(n)] == n and len(n) < len(name)
                    ),
                    None,
                )
                table = (*entry[0], entry[1], *name[len(entry[0]) :]) if entry else name
                self.starts[table] = self.line(i)
                i = self.text.find("]", i) + 1
            else:
                line = self.line(i)
                name, i = self.key(i)
                path = (*table, *name)
                self.starts[path] = line
                i = self.blank(i, newlines=False)
                i = self.value(self.blank(i + 1, newlines=False), path)  # past "="


def locate(text: str) -> Lines:
    """The lines of `text`, a document tomllib accepted."""
    return Lines(_Scanner(text).scan())


def arrays(text: str) -> tuple[dict[Path, ArraySpan], int | None]:
    """The span of every array in `text` (a document tomllib accepted) and the index of its
    first table header (None when it has none): what an edit needs to add items in place."""
    scanner = _Scanner(text)
    scanner.scan()
    return scanner.arrays, scanner.first_table
