"""What `assistant domain check` reports: a problem in a pack's file, with its line.

Errors stop a pack from loading; warnings (say, an intent with fewer examples than training
needs to do well) are reported and the pack still loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    severity: Severity
    file: str  # relative to the pack's folder, with "/" separators
    line: int | None  # 1-based; None when the problem is the file (or folder) as a whole
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.severity}: {self.message}"


def sort_key(problem: Problem) -> tuple[str, int, str]:
    return (problem.file, problem.line or 0, problem.message)


class PackError(ValueError):
    """A pack that did not load, with every problem found in it (warnings included)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(sorted(problems, key=sort_key))
        errors = sum(p.severity is Severity.ERROR for p in self.problems)
        super().__init__(f"the pack has {errors} error(s):\n" + "\n".join(map(str, self.problems)))

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.ERROR)
