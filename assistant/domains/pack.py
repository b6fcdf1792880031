"""A domain pack as loaded: frozen dataclasses, no I/O.

A pack is a folder (docs/domains.md specifies it):

    domain.toml        name, language, description; overrides of the conversation answers
    intents/*.toml     one intent per file: description, examples, the answer, handoff hints
    events.toml        optional: the behaviour events, their phrases and the intents they hint at

`assistant.domains.loading` builds a `DomainPack` from those files, or reports every
problem with its file and line.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field

DOMAIN_FILE = "domain.toml"
INTENTS_DIR = "intents"
EVENTS_FILE = "events.toml"
# Where `assistant domain train` writes the weights, model card and evaluation; never read
# by the loader.
TRAINED_DIR = "trained"

# The turns that are no question about the business; the assistant answers each with its
# own default (the shipped knowledge base's conversation answers) unless the pack overrides
# it in domain.toml. The names are the knowledge base's.
CONVERSATION_INTENTS: tuple[str, ...] = ("greeting", "thanks", "goodbye", "out_of_scope", "handoff")

# A letter, then letters, digits, "_", "-" or "?" (Banking77 spells one "reverted_card_payment?").
INTENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_?-]{0,63}$")
# Labels that already mean something to the assistant, so no pack intent may take them.
RESERVED_NAMES = frozenset({*CONVERSATION_INTENTS, "oos", "out-of-scope"})

# Below MIN_EXAMPLES an intent cannot be trained at all (cross-validation needs a few per
# fold); below ADVISED_EXAMPLES it trains, but its figures are mostly noise.
MIN_EXAMPLES = 5
ADVISED_EXAMPLES = 10

# What `assistant domain import-csv` writes as the answer of an intent it creates; `check`
# refuses a pack while any answer still starts with it.
TODO_MARK = "TODO"


def example_key(text: str) -> str:
    """Examples that differ only in case or spacing are the same example."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True, slots=True)
class Answer:
    """What the assistant says to an intent: the knowledge base's fields for one entry."""

    title: str  # a short noun phrase, used in clarifying questions
    text: str  # the reply; its first sentence stands alone
    facts: tuple[str, ...]
    follow_ups: tuple[str, ...] = ()  # questions, each ending with "?"
    offer_human: bool = False  # always offer a person with this answer
    voice_answer: str | None = None  # the answer as a phone call says it


@dataclass(frozen=True, slots=True)
class HandoffHints:
    """How the handoff policy should treat an intent, beyond its defaults."""

    immediate: bool = False  # hand the conversation to a person as soon as it is recognised
    anger_threshold: float | None = None  # hand off at this anger score instead of the policy's
    note: str | None = None  # what the person taking over should know


@dataclass(frozen=True, slots=True)
class Intent:
    name: str
    description: str
    examples: tuple[str, ...]  # how customers ask it: the training texts
    answer: Answer
    handoff: HandoffHints = field(default_factory=HandoffHints)
    source: str = ""  # the file it came from, relative to the pack


@dataclass(frozen=True, slots=True)
class ConversationAnswer:
    """A pack's own answer to one of `CONVERSATION_INTENTS`."""

    text: str
    facts: tuple[str, ...] = ()
    follow_ups: tuple[str, ...] = ()
    voice_answer: str | None = None


@dataclass(frozen=True, slots=True)
class EventPhrase:
    """One behaviour event of the pack's catalogue, as the profile summary words it."""

    name: str
    phrase: str  # a clause with {placeholders} from the event's props
    meaning: str = ""
    props: tuple[str, ...] | None = None  # the props the event carries; None: not declared
    hints: tuple[str, ...] = ()  # the intents the event makes likelier
    problem: bool = False  # something failed or went wrong: such notes come first

    def placeholders(self) -> tuple[str, ...]:
        return placeholders(self.phrase)


def placeholders(phrase: str) -> tuple[str, ...]:
    """The `{names}` of a phrase, in order, once each."""
    names = (name for _, name, _, _ in string.Formatter().parse(phrase) if name is not None)
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True, slots=True)
class DomainPack:
    name: str
    language: str
    description: str
    intents: tuple[Intent, ...]  # in file-name order: the intent head's label order
    conversation: Mapping[str, ConversationAnswer] = field(default_factory=dict)
    events: tuple[EventPhrase, ...] = ()

    @property
    def intent_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.intents)

    def intent(self, name: str) -> Intent | None:
        return next((i for i in self.intents if i.name == name), None)
