"""Domain packs: the folder a business writes to make the assistant its own.

- pack: the loaded pack as frozen dataclasses (intents, answers, events) and the format's
  constants;
- problems: a problem with its file and line, and the error that carries them all;
- locate: the lines of a TOML file's tables, keys and array items;
- loading: parsing and checking a pack, every problem at once, never half a pack;
- csv_import: `intent,text` rows added to a pack's examples;
- commands: `assistant domain check|import-csv|train`.

docs/domains.md specifies the format.
"""

from assistant.domains.csv_import import ImportPlan, import_csv
from assistant.domains.loading import LoadedPack, load_pack, parse_pack
from assistant.domains.pack import (
    CONVERSATION_INTENTS,
    TRAINED_DIR,
    Answer,
    ConversationAnswer,
    DomainPack,
    EventPhrase,
    HandoffHints,
    Intent,
)
from assistant.domains.problems import PackError, Problem, Severity

__all__ = [
    "CONVERSATION_INTENTS",
    "TRAINED_DIR",
    "Answer",
    "ConversationAnswer",
    "DomainPack",
    "EventPhrase",
    "HandoffHints",
    "ImportPlan",
    "Intent",
    "LoadedPack",
    "PackError",
    "Problem",
    "Severity",
    "import_csv",
    "load_pack",
    "parse_pack",
]
