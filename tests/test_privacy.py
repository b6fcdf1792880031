"""Privacy: personal identifiers are redacted in stored turns, prompts and logs; logs carry no
message text.

The redaction cases are the table in docs/reliability.md, parsed here so the document stays
true. End to end, a real server with a chat model at the LLM boundary (LangChain's fake chat
model, recording its prompts) takes a conversation full of identifiers.
"""

from __future__ import annotations

import itertools
import logging
import re
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from websockets.asyncio.client import connect

from assistant import Models, ResponseGenerator, Settings, redact
from server import running
from tests.conftest import Client
from tests.support.operator_helpers import make_operator, operator_client
from tests.test_knowledge_base import shared_kb, shared_retriever

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
CASE_ROW = re.compile(r"^\| `(?P<text>[^`]*)` \| `(?P<redacted>[^`]*)` \|$")

CARD = "4111 1111 1111 1111"
IBAN = "GB82 WEST 1234 5698 7654 32"
EMAIL = "wilhelmina.quux@example.org"
PHONE = "+44 20 7946 0958"
# Words that occur only in what the customer and the operator write, and the user's identity.
SECRET_WORDS = ("Marmalade", "xylophone", "Tangerine", "secretpath", "Wilhelmina", "zebraquux")
IDENTIFIERS = (CARD, "4111", IBAN, "WEST", EMAIL, "7946")


def holds(text: str, identifier: str) -> bool:
    """`identifier` in `text` as a token of its own: ids, timestamps and vector values hold
    runs like "4111" or "7946" by chance, inside longer runs of digits and letters."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(identifier)}(?![0-9A-Za-z])", text) is not None


def documented_cases() -> list[tuple[str, str]]:
    section = DOC.read_text(encoding="utf-8").split("### Redaction cases", 1)[1]
    rows = [CASE_ROW.match(line) for line in section.splitlines()]
    return [(m["text"], m["redacted"]) for m in rows if m is not None]


def test_the_table_has_cases_of_every_kind() -> None:
    cases = documented_cases()
    assert len(cases) >= 20
    kinds = {label for _, out in cases for label in re.findall(r"\[[A-Z]+\]", out)}
    assert kinds == {"[CARD]", "[IBAN]", "[EMAIL]", "[PHONE]"}
    assert any(text == out for text, out in cases), "and cases that must be left alone"


@pytest.mark.parametrize(("text", "redacted"), documented_cases())
def test_documented_redaction(text: str, redacted: str) -> None:
    assert redact(text) == redacted
    assert redact(redacted) == redacted


class PromptRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.prompts: list[list[BaseMessage]] = []

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        self.prompts.extend(messages)


def everything_logged(records: Sequence[logging.LogRecord]) -> Iterator[str]:
    """Each record's message, traceback and extra fields, as any formatter could show them."""
    plain = set(vars(logging.makeLogRecord({})))
    for record in records:
        yield record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            yield "".join(traceback.format_exception(record.exc_info[1]))
        for name, value in vars(record).items():
            if name not in plain:
                yield f"{name}={value!r}"


async def test_identifiers_redacted_in_turns_prompts_exports_and_logs_hold_no_text(
    models: Models, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = PromptRecorder()
    model = GenericFakeChatModel(
        messages=itertools.cycle([AIMessage(content="I can help with that card payment.")]),
        callbacks=[recorder],
    )
    generator = ResponseGenerator(shared_kb(), shared_retriever(), chat_model=model)
    settings = replace(Settings(), host="127.0.0.1", port=0, db_url=sqlite_url, device="cpu")
    async with running(settings, models=models, generator=generator) as srv:
        key = await make_operator(srv, "privacy-agent", "admin")
        caplog.set_level(logging.DEBUG)
        async with connect(srv.url + "/chat") as ws, operator_client(srv, key) as operator:
            client = Client(ws)
            welcome = await client.hello(
                user={"external_id": "zebraquux-7", "name": "Wilhelmina Quux"}
            )
            session_id, user_id = welcome["session_id"], welcome["user_id"]
            await operator.ok("session.watch", session_id=session_id)
            texts = [
                f"Marmalade xylophone: my card {CARD} was declined, why?",
                f"Please refund to {IBAN} or mail {EMAIL}, phone {PHONE}",
            ]
            replies = []
            for index, text in enumerate(texts):
                await client.send({"type": "message", "id": f"p{index}", "text": text})
                replies.append((await client.recv_until("reply"))[-1]["text"])
            await client.send(
                {
                    "type": "event",
                    "id": "ev-p",
                    "name": "page_view",
                    "at": "2026-11-30T06:00:00Z",
                    "props": {"path": "/secretpath"},
                }
            )
            assert (await client.recv())["type"] == "ack"
            await operator.ok("session.takeover", session_id=session_id)
            await operator.ok(
                "session.say", session_id=session_id, text=f"Tangerine: I called {PHONE}"
            )
            exported = await operator.ok("profile.export", user_id=user_id)
        logged = "\n".join(
            everything_logged([r for r in caplog.records if r.name != "websockets.client"])
        )
        caplog.set_level(logging.WARNING)
        stored = await srv.runtime.store.list_turns(session_id)

    # Stored turns: the customer's and the operator's, with identifiers replaced.
    by_role = {(t.role, t.client_id): t.text for t in stored}
    assert by_role[("user", "p0")] == "Marmalade xylophone: my card [CARD] was declined, why?"
    assert by_role[("user", "p1")] == "Please refund to [IBAN] or mail [EMAIL], phone [PHONE]"
    assert [t.text for t in stored if t.role == "operator"] == ["Tangerine: I called [PHONE]"]
    # Prompts: the model saw the redacted turns and never an identifier.
    prompts = ["\n".join(m.text for m in prompt) for prompt in recorder.prompts]
    assert len(prompts) == 2
    assert "my card [CARD] was declined" in prompts[0]
    assert "[IBAN]" in prompts[1] and "[EMAIL]" in prompts[1] and "[PHONE]" in prompts[1]
    # Exports hold what was stored.
    assert not any(holds(str(exported), identifier) for identifier in IDENTIFIERS)
    for identifier in IDENTIFIERS:
        assert not any(identifier in prompt for prompt in prompts), identifier
    # Logs: something was logged at DEBUG, and none of it is message text or identity.
    assert logged, "the conversation was logged at DEBUG"
    for identifier in IDENTIFIERS:
        assert not holds(logged, identifier), f"{identifier!r} appears in the logs"
    for secret in (*SECRET_WORDS, "[CARD]", "[IBAN]", *replies):
        assert secret not in logged, f"{secret!r} appears in the logs"
