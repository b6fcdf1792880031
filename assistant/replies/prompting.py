"""The reply chain: request values -> ChatPromptTemplate -> chat model -> text, as LCEL.

    chain = build_reply_chain(model)
    async for piece in chain.astream(ChainInput(...)): ...

`ChainInput` holds one turn of one user: the (redacted) utterance, what the models
understood, the user's profile summary, the conversation window, the retrieved passages, the
known details of the thing in question (a "Known details" block: the model may state those
and no other merchant, amount or date) and the composer's plan, whose decisions (clarify, be
brief, offer a person, mention the failed payment, name the payment's details) become
instructions, so the model and the composer follow one policy. Nothing else enters the
prompt: no other user's data can, because a chain input is built per request and the chain
keeps no state between calls. What the model writes is still checked against the same
grounds (`assistant.replies.grounding`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import Runnable, RunnableLambda

from assistant.replies.composer import ReplyKind, ReplyPlan
from assistant.replies.details import EMPTY, Details, describe, prompt_lines
from assistant.replies.profile_summary import ProfileSummary
from assistant.replies.retrieval import Passage, passage_text
from assistant.replies.understanding import Understanding

Role = Literal["user", "assistant", "operator"]

SYSTEM_TEMPLATE = """\
You are the customer-service assistant of a bank, chatting with one customer.

Rules:
- Answer only from the knowledge-base passages below. If they do not cover the question, say \
so and offer to bring in a member of the team.
- Never invent fees, amounts, dates, limits, phone numbers, addresses or links.
- Name a merchant, amount, date, card or transfer recipient only as the known details below or \
the customer's own messages give it; never state one that is not there, and add no currency \
to an amount whose currency is not known.
- Never ask for a full card number, PIN, passcode or security code.
- Use the customer details only to make the answer specific to them.
- Plain text, no headings or lists, at most {max_sentences} sentences.

What the models understood of the customer's latest message:
{understanding}

About this customer:
{profile}

Known details of what the customer is asking about:
{details}

Knowledge-base passages:
{passages}

How to reply:
{guidance}"""

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", SYSTEM_TEMPLATE),
        MessagesPlaceholder("history"),
        ("human", "{utterance}"),
    ]
)


@dataclass(frozen=True, slots=True)
class ConversationTurn:
    """One earlier turn of this conversation, its text already redacted."""

    role: Role
    text: str


@dataclass(frozen=True, slots=True)
class ChainInput:
    utterance: str
    understanding: Understanding
    profile: ProfileSummary
    window: tuple[ConversationTurn, ...]
    passages: tuple[Passage, ...]
    plan: ReplyPlan
    details: Details = EMPTY


def describe_understanding(u: Understanding) -> str:
    lines = []
    if u.intent is None:
        lines.append("- intent: unknown (no intent model ran; do not say what the customer wants)")
    else:
        confidence = f" (confidence {u.confidence:.2f})" if u.confidence is not None else ""
        lines.append(f"- intent: {u.intent}{confidence}")
        if u.top2 is not None and u.top2[1][0] != u.intent:
            label, p = u.top2[1]
            lines.append(f"- second guess: {label} ({p:.2f})")
    if u.emotion is None:
        lines.append("- emotion: unknown (no emotion model ran)")
    else:
        score = u.emotion_scores.get(u.emotion)
        lines.append(f"- emotion: {u.emotion}" + (f" ({score:.2f})" if score is not None else ""))
    return "\n".join(lines)


def describe_details(details: Details) -> str:
    lines = prompt_lines(details)
    if not lines:
        return "- none: state no merchant, amount or date the customer did not write"
    return "\n".join(f"- {line}" for line in lines)


def describe_profile(summary: ProfileSummary) -> str:
    lines = summary.lines()
    return "\n".join(f"- {line}" for line in lines) if lines else "- nothing known yet"


TONE: dict[str, str] = {
    "angry": "The customer is angry: acknowledge it and apologise in one short sentence first.",
    "frustrated": "The customer is frustrated: be brief and direct, no pleasantries.",
    "anxious": "The customer is worried: reassure them calmly before the answer.",
    "sad": "The customer is sad: acknowledge it with empathy in a few words.",
    "confused": "The customer is confused: explain simply, one step at a time.",
    "satisfied": "The customer is content: keep a warm, friendly tone.",
}


def guidance(plan: ReplyPlan) -> str:
    """The composer's decisions as instructions to the model."""
    entry = plan.entry
    lines: list[str] = []
    if plan.kind is ReplyKind.HANDOFF:
        lines.append(
            "The conversation is being passed to a member of the team: tell the customer so "
            "in one or two sentences, as passage "
            f"[{entry.id}] says; do not answer the question yourself."
        )
    elif plan.kind is ReplyKind.SMALL_TALK:
        lines.append(f"Reply to {entry.title} in one short sentence, like passage [{entry.id}].")
    elif plan.kind is ReplyKind.OUT_OF_SCOPE:
        lines.append(
            "The request is outside what you can help with: say so politely and say what you "
            f"can help with, as passage [{entry.id}] does."
        )
    elif plan.kind is ReplyKind.CLARIFY:
        if len(plan.choices) >= 2:
            a, b = plan.choices[0], plan.choices[1]
            lines.append(
                f"It is unclear whether the customer means {a.title} [{a.id}] or {b.title} "
                f"[{b.id}]: ask one short question to find out which; do not answer yet."
            )
        elif plan.choices:
            lines.append(
                f"You are not sure the customer means {plan.choices[0].title} "
                f"[{plan.choices[0].id}]: ask them to confirm or to say more."
            )
        else:
            lines.append("The request is unclear: ask the customer to say more about it.")
    else:
        lines.append(f"Answer with the facts of passage [{entry.id}].")
        thing = describe(plan.details, entry.about) if entry.about is not None else None
        if thing is not None:
            lines.append(f"Refer to it as {thing}.")
    if plan.brief:
        lines.append("Keep it to one or two sentences.")
    if plan.emotion in TONE:
        lines.append(TONE[plan.emotion or ""])
    if plan.note is not None:
        lines.append(f"Mention that {plan.note.text}.")
    if plan.offer_human:
        lines.append("End by offering to bring in a member of the team.")
    return "\n".join(f"- {line}" for line in lines)


def history_messages(window: Sequence[ConversationTurn]) -> list[BaseMessage]:
    out: list[BaseMessage] = []
    for turn in window:
        if turn.role == "user":
            out.append(HumanMessage(content=turn.text))
        elif turn.role == "operator":
            out.append(AIMessage(content=f"(a member of the team wrote) {turn.text}"))
        else:
            out.append(AIMessage(content=turn.text))
    return out


def prompt_values(inputs: ChainInput) -> dict[str, Any]:
    """The template's variables for one request."""
    return {
        "max_sentences": 2 if inputs.plan.brief else 5,
        "understanding": describe_understanding(inputs.understanding),
        "profile": describe_profile(inputs.profile),
        "details": describe_details(inputs.details),
        "passages": "\n\n".join(passage_text(p.entry) for p in inputs.passages)
        or "(none retrieved)",
        "guidance": guidance(inputs.plan),
        "history": history_messages(inputs.window),
        "utterance": inputs.utterance,
    }


def build_reply_chain(model: BaseChatModel) -> Runnable[ChainInput, str]:
    """ChainInput -> prompt -> model -> text; `astream` yields text pieces as they arrive."""
    values: Runnable[ChainInput, dict[str, Any]] = RunnableLambda(prompt_values)
    return (values | PROMPT | model | StrOutputParser()).with_config(run_name="reply")
