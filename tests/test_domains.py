"""Domain packs: the example pack, every kind of broken pack with its file and line, the CSV
import, and a pack trained here whose weights the server's loader reads."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from assistant.app.cli import run
from assistant.app.settings import Settings
from assistant.domains import PackError, Severity, import_csv, load_pack, parse_pack
from fusion.heads.checkpoint import load_emotion, load_intent
from fusion.heads.inference import Understanding
from fusion.training.features import text_features
from fusion.training.packs import Negatives, PackData, PackTrainConfig, load_negatives, train_pack

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "domains" / "telecom"
ASSISTANT = Path(sys.executable).parent / "assistant"
DOCS = ROOT / "docs" / "domains.md"

EXAMPLES = {
    "order_status": [
        "Where is my order?",
        "My parcel hasn't arrived yet",
        "When will my plants be delivered?",
        "Can you track my delivery?",
        "Has my order shipped?",
        "The delivery is late",
        "I ordered a week ago and nothing came",
        "What's the status of order 1234?",
        "Is my seed order on its way?",
        "How long until my delivery arrives?",
    ],
    "returns": [
        "How do I return a plant?",
        "The pot arrived broken, I want a refund",
        "Can I send this back?",
        "My tree died after a week, can I get my money back?",
        "What is your returns policy?",
        "I want to exchange the hose for a longer one",
        "Refund my order please",
        "The wrong bulbs were sent to me",
        "Do I pay for return shipping?",
        "How long do refunds take?",
    ],
    "opening_hours": [
        "When are you open?",
        "What time does the garden centre close today?",
        "Are you open on Sunday?",
        "Opening hours over the holidays?",
        "Is the shop open on bank holidays?",
        "What time do you open tomorrow morning?",
        "Are you open late on Thursdays?",
        "When does the café open?",
        "Can I visit the nursery this evening?",
        "What are your weekend hours?",
    ],
}

DOMAIN = 'name = "garden"\nlanguage = "en"\ndescription = "A garden centre."\n'


def intent_file(name: str, examples: list[str], extra: str = "") -> str:
    """An intent file whose lines are known: name 1, description 2, examples 3, the
    examples 4.., then `]`, title, answer, facts, follow_ups, then `extra`."""
    items = "".join(f"  {json.dumps(e)},\n" for e in examples)
    return (
        f'name = "{name}"\n'
        f'description = "Customers asking about {name}."\n'
        f"examples = [\n{items}]\n"
        f'title = "{name.replace("_", " ")}"\n'
        f'answer = "Here is what to know about {name}."\n'
        f'facts = ["A fact about {name}."]\n'
        'follow_ups = ["Is there anything else?"]\n'
        f"{extra}"
    )


def garden_files() -> dict[str, str]:
    files = {"domain.toml": DOMAIN}
    for name, examples in EXAMPLES.items():
        files[f"intents/{name}.toml"] = intent_file(name, examples)
    return files


def write_pack(folder: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder


def problems_of(files: dict[str, str]) -> list[tuple[str, str, int | None, str]]:
    with pytest.raises(PackError) as caught:
        parse_pack(files)
    return [(p.severity.value, p.file, p.line, p.message) for p in caught.value.problems]


def cli(argv: list[str]) -> int:
    async def serve(settings: Settings) -> None:
        raise AssertionError("the domain commands never serve")

    return run(argv, serve)


# -- the example pack ------------------------------------------------------------------------


def test_the_example_pack_checks_clean() -> None:
    loaded = load_pack(EXAMPLE)
    pack = loaded.pack
    assert loaded.warnings == ()
    assert pack.name == "telecom" and pack.language == "en"
    assert len(pack.intents) >= 12  # the shipped non-banking example is meant to be a full pack
    assert all(len(intent.examples) >= 12 for intent in pack.intents)
    assert pack.events and all(set(e.hints) <= set(pack.intent_names) for e in pack.events)
    assert {"greeting", "out_of_scope"} <= set(pack.conversation)
    contract = pack.intent("cancel_contract")
    assert contract is not None and contract.answer.offer_human and contract.handoff.note


def test_check_command_on_the_example_pack(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert cli(["domain", "check", "examples/domains/telecom"]) == 0
    out = capsys.readouterr().out
    # The page shows this very line.
    assert out.strip() in DOCS.read_text()


def test_the_documented_toml_is_the_example_pack() -> None:
    text = DOCS.read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    for block in blocks:
        tomllib.loads(block)
    shown = text.split("The whole of `examples/domains/telecom/intents/pay_bill.toml`:")[1]
    whole = re.search(r"```toml\n(.*?)```", shown, flags=re.S)
    assert whole is not None
    assert whole.group(1) == (EXAMPLE / "intents" / "pay_bill.toml").read_text()
    for block in blocks:
        if block.startswith("[[event]]"):
            assert block in (EXAMPLE / "events.toml").read_text()


# -- broken packs: each problem with its file and line ---------------------------------------


def test_a_valid_pack_loads_whole() -> None:
    pack = parse_pack(garden_files()).pack
    assert pack.intent_names == ("opening_hours", "order_status", "returns")  # file order
    assert pack.intent("returns") is not None
    assert pack.intent("returns").examples[0] == "How do I return a plant?"  # type: ignore[union-attr]


def test_a_pack_needs_domain_toml_and_two_intents() -> None:
    files = garden_files()
    assert problems_of({"intents/returns.toml": files["intents/returns.toml"]}) == [
        ("error", "domain.toml", None, "missing: every pack has one"),
        ("error", "intents", None, "a pack needs at least two intents"),
    ]
    assert problems_of({"domain.toml": DOMAIN}) == [
        ("error", "intents", None, "no intent files (intents/*.toml)")
    ]


def test_toml_syntax_error_reports_tomllib_line() -> None:
    files = garden_files()
    files["intents/returns.toml"] = (
        'name = "returns"\ndescription = "x"\nexamples = [\n  "a" "b",\n]\n'
    )
    [(severity, file, line, message)] = problems_of(files)
    assert (severity, file, line) == ("error", "intents/returns.toml", 4)
    assert message.startswith("not valid TOML")


def test_unknown_keys_missing_fields_and_bad_types() -> None:
    files = garden_files()
    files["intents/returns.toml"] = intent_file(
        "returns", EXAMPLES["returns"], 'colour = "green"\n'
    ).replace('title = "returns"\n', "")
    files["intents/order_status.toml"] = intent_file(
        "order_status",
        EXAMPLES["order_status"],
        "offer_human = 1\n[handoff]\nimmediate = true\nsoon = 2\n",
    )
    found = problems_of(files)
    assert (
        "error",
        "intents/returns.toml",
        18,  # the title's line is gone
        "unknown key 'colour' (known: name, description, "
        "examples, title, answer, facts, follow_ups, offer_human, voice_answer, handoff)",
    ) in found
    assert ("error", "intents/returns.toml", None, "missing 'title'") in found
    assert (
        "error",
        "intents/order_status.toml",
        19,
        "'offer_human' must be true or false",
    ) in found
    assert any(
        f == "intents/order_status.toml" and line == 22 and "'soon'" in m for _, f, line, m in found
    )


def test_duplicate_intent_names() -> None:
    files = garden_files()
    files["intents/refunds.toml"] = intent_file("returns", [f"refund case {i}" for i in range(10)])
    found = problems_of(files)
    assert found == [
        (
            "error",
            "intents/returns.toml",
            1,
            "intent 'returns' is already defined in intents/refunds.toml (line 1)",
        )
    ]


def test_repeated_examples_within_and_across_intents() -> None:
    files = garden_files()
    files["intents/returns.toml"] = intent_file(
        "returns", [*EXAMPLES["returns"], "can I  SEND this back?", "Are you open on Sunday?"]
    )
    found = problems_of(files)
    assert (
        "error",
        "intents/returns.toml",
        14,
        "example 'can I SEND this back?' repeats the one on line 6",
    ) in found
    assert (
        "error",
        "intents/returns.toml",
        15,
        "example 'Are you open on Sunday?' is also an example of 'opening_hours' "
        "(intents/opening_hours.toml:6)",
    ) in found


def test_too_few_examples_is_an_error_and_a_few_a_warning(tmp_path: Path) -> None:
    files = garden_files()
    files["intents/returns.toml"] = intent_file("returns", EXAMPLES["returns"][:4])
    assert problems_of(files) == [
        ("error", "intents/returns.toml", 3, "4 example(s): an intent needs at least 5")
    ]
    files["intents/returns.toml"] = intent_file("returns", EXAMPLES["returns"][:7])
    loaded = parse_pack(files)
    assert [(p.severity, p.file, p.line) for p in loaded.warnings] == [
        (Severity.WARNING, "intents/returns.toml", 3)
    ]
    # Warnings alone: the check passes.
    assert cli(["domain", "check", str(write_pack(tmp_path, files))]) == 0


def test_unwritten_answers_and_follow_ups_that_ask_nothing() -> None:
    files = garden_files()
    files["intents/returns.toml"] = (
        intent_file("returns", EXAMPLES["returns"])
        .replace('answer = "Here', 'answer = "TODO: here')
        .replace('["Is there anything else?"]', '["Is there anything else?", "Call us."]')
    )
    found = problems_of(files)
    assert found == [
        (
            "error",
            "intents/returns.toml",
            16,
            "the answer is not written yet (it starts with TODO)",
        ),
        ("error", "intents/returns.toml", 18, "follow-ups are questions: end it with '?'"),
    ]


def test_reserved_names_and_conversation_answers() -> None:
    files = garden_files()
    files["domain.toml"] = (
        DOMAIN + '\n[answers.greeting]\nanswer = "Hi!"\n\n[answers.weather]\nanswer = "Sunny"\n'
    )
    files["intents/greeting.toml"] = intent_file(
        "greeting", [f"hello number {i}" for i in range(10)]
    )
    found = problems_of(files)
    assert found[0][:3] == ("error", "domain.toml", 8) and "'weather'" in found[0][3]
    assert found[1][:3] == ("error", "intents/greeting.toml", 1)
    assert "[answers.greeting]" in found[1][3]


def test_event_placeholders_and_hints() -> None:
    files = garden_files()
    files["events.toml"] = (
        "[[event]]\n"
        'name = "delivery_late"\n'
        'props = ["carrier"]\n'
        'phrase = "a delivery by {carrier} is late by {days} days"\n'
        'hints = ["order_status", "lost_parcel"]\n'
        "\n[[event]]\n"
        'name = "delivery_late"\n'
        'phrase = "a {} was late"\n'
        "\n[[event]]\n"
        'name = "refund_sent"\n'
        'phrase = "a refund of {amount:.2f} was sent {when"\n'
        "\n[[event]]\n"
        'name = "parcel_lost"\n'
        'phrase = "a parcel sent by {carrier!r} was lost"\n'
        "problem = 1\n"
    )
    found = problems_of(files)
    assert found == [
        (
            "error",
            "events.toml",
            4,
            "placeholder {days} is not among the event's props (carrier)",
        ),
        ("error", "events.toml", 5, "hint names no intent of this pack: 'lost_parcel'"),
        ("error", "events.toml", 8, "event 'delivery_late' is declared twice (first on line 2)"),
        ("error", "events.toml", 9, "placeholder {} must name a prop, such as {merchant}"),
        (
            "error",
            "events.toml",
            13,
            "the phrase's braces do not pair up: expected '}' before end of string",
        ),
        ("error", "events.toml", 17, "placeholder {carrier} takes no format or conversion"),
        ("error", "events.toml", 18, "'problem' must be true or false"),
    ]


def test_every_problem_of_every_file_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = garden_files()
    del files["domain.toml"]
    files["intents/returns.toml"] = "name = 'returns'\nexamples = [\n"
    files["intents/order_status.toml"] = intent_file("order_status", EXAMPLES["order_status"][:2])
    folder = write_pack(tmp_path, files)
    assert cli(["domain", "check", str(folder)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{folder}/domain.toml: error: missing: every pack has one"
    assert err[1] == (
        f"{folder}/intents/order_status.toml:3: error: 2 example(s): an intent needs at least 5"
    )
    assert err[2].startswith(f"{folder}/intents/returns.toml:3: error: not valid TOML")
    assert err[3] == f"{folder}: 3 error(s), 0 warning(s)"


def test_the_installed_command_exits_1_on_errors(tmp_path: Path) -> None:
    files = garden_files()
    files["intents/returns.toml"] = intent_file(
        "returns", EXAMPLES["returns"], "[handoff]\nimmediate = 'yes'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    done = subprocess.run(
        [str(ASSISTANT), "domain", "check", str(write_pack(tmp_path, files))],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert (
        f"{tmp_path}/intents/returns.toml:20: error: 'immediate' must be true or false"
        in done.stderr
    )


# -- CSV import ------------------------------------------------------------------------------


def test_csv_import_with_header_bom_quotes_and_duplicates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = garden_files()
    files["intents/returns.toml"] = "# Returns and refunds.\n" + intent_file(
        "returns", EXAMPLES["returns"]
    ).replace("]\ntitle", "  # more from the chat logs below\n]\ntitle")
    pack = write_pack(tmp_path / "pack", files)
    csv_path = tmp_path / "export.csv"
    csv_path.write_bytes(
        "\ufeffintent,text\n"
        'returns,"The lid was cracked, can I return it?"\n'
        "returns,How do I return a plant?\n"  # already in the pack
        "order_status,Where's my compost?\n"
        "order_status,where's my   COMPOST?\n"  # earlier in this CSV
        'order_status,"Has my order\nshipped?"\n'  # a quoted line break: already in the pack
        "returns,Are you open on Sunday?\n"  # an example of another intent
        "gift_cards,Do you sell gift cards?\n"
        "gift_cards,Can I buy a voucher?\n"
        "only one column\n"
        "\n".encode()
    )
    assert cli(["domain", "import-csv", str(csv_path), str(pack)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "read 9 row(s) from export.csv"
    assert out[1] == "added 4 example(s): 2 to gift_cards, 1 to order_status, 1 to returns"
    assert out[2].startswith("created 1 intent file(s): intents/gift_cards.toml")
    assert out[3] == "skipped 3 duplicate(s) already in the pack or the CSV"
    assert out[4] == "skipped 2 row(s):"
    assert out[5] == "  export.csv:11: expected 2 columns (intent,text), got 1"
    assert out[6] == (
        "  export.csv:8: 'Are you open on Sunday?' is already an example of 'opening_hours': "
        "not added to 'returns'"
    )
    returns = (pack / "intents" / "returns.toml").read_text()
    assert returns.startswith("# Returns and refunds.\n")
    assert '  "Do I pay for return shipping?",\n  "How long do refunds take?",\n' in returns
    assert "  # more from the chat logs below\n" in returns
    assert returns.index("# more from") < returns.index('"The lid was cracked, can I return it?"')
    # The new intent needs its answer written: the check says so, with the line.
    with pytest.raises(PackError) as caught:
        load_pack(pack)
    assert {(p.file, p.line, p.message.split(" (")[0]) for p in caught.value.errors} == {
        ("intents/gift_cards.toml", 4, "the description is not written yet"),
        ("intents/gift_cards.toml", 5, "2 example(s): an intent needs at least 5"),
        ("intents/gift_cards.toml", 9, "the title is not written yet"),
        ("intents/gift_cards.toml", 10, "the answer is not written yet"),
        ("intents/gift_cards.toml", 11, "the fact is not written yet"),
    }
    order = (pack / "intents" / "order_status.toml").read_text()
    assert order.count("compost") == 1


def test_csv_import_without_header_into_a_new_pack(tmp_path: Path) -> None:
    csv_path = tmp_path / "rows.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerows((intent, text) for intent, texts in EXAMPLES.items() for text in texts)
        writer.writerow(("returns", "How do I return a plant?"))
    plan = import_csv(csv_path, tmp_path / "new")
    assert plan.rows == 31 and plan.duplicates == 1
    assert plan.added == {name: 10 for name in EXAMPLES}
    assert sorted(plan.created) == sorted(f"intents/{n}.toml" for n in EXAMPLES)
    # Importing again adds nothing.
    again = import_csv(csv_path, tmp_path / "new")
    assert again.added == {} and again.duplicates == 31


def test_files_that_are_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = garden_files()
    pack = write_pack(tmp_path / "pack", files)
    (pack / "intents" / "returns.toml").write_bytes(
        files["intents/returns.toml"].encode("cp1252") + "caf\xe9".encode("cp1252")
    )
    with pytest.raises(PackError) as caught:
        load_pack(pack)
    assert [(p.file, p.line) for p in caught.value.errors] == [("intents/returns.toml", None)]
    assert caught.value.errors[0].message.startswith("not UTF-8 text")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("returns,Remboursement re\xe7u ?\n".encode("latin-1"))
    assert cli(["domain", "import-csv", str(latin), str(pack)]) == 1
    assert capsys.readouterr().err.startswith(f"{latin}: error: not UTF-8 text")


def test_csv_import_into_a_one_line_array(tmp_path: Path) -> None:
    files = garden_files()
    files["intents/returns.toml"] = (
        'name = "returns"\nexamples = ["Refund please", "Send it back"]  # short so far\n'
        "[handoff]\nimmediate = false\n"
    )
    files["intents/order_status.toml"] = (
        'name = "order_status"\nexamples = [\n    "Where is it?",\n    "Any news?"\n]\n'
    )
    pack = write_pack(tmp_path, files)
    csv_path = tmp_path / "more.csv"
    csv_path.write_text(
        'returns,"A ""quoted"" word \\ and a backslash"\norder_status,Is it late?\n',
        encoding="utf-8",
    )
    import_csv(csv_path, pack)
    # A multi-line array keeps its indentation, and its last item gets its comma.
    assert (pack / "intents" / "order_status.toml").read_text() == (
        'name = "order_status"\nexamples = [\n    "Where is it?",\n    "Any news?",\n'
        '    "Is it late?",\n]\n'
    )
    document = tomllib.loads((pack / "intents" / "returns.toml").read_text())
    assert document["examples"] == [
        "Refund please",
        "Send it back",
        'A "quoted" word \\ and a backslash',
    ]
    assert document["handoff"] == {"immediate": False}


# -- training --------------------------------------------------------------------------------

OFF_TOPIC = (
    "What's the weather like tomorrow?",
    "Tell me a joke",
    "Who won the football last night?",
    "Book me a table for two at eight",
    "How do I reset my router?",
    "What is the capital of Peru?",
    "Play some music",
    "Translate hello into French",
    "How many calories are in a banana?",
    "Set an alarm for 7am",
    "What's my horoscope today?",
    "Recommend a good film",
    "How tall is Mount Everest?",
    "Order me a taxi",
    "What's two plus two?",
    "Find me a cheap flight to Rome",
    "When was the Eiffel Tower built?",
    "Help me write a poem",
)


def test_without_negatives_the_threshold_alone_decides(tmp_path: Path) -> None:
    negatives = load_negatives(tmp_path)  # no CLINC150 there
    assert negatives.train == negatives.val == negatives.test == ()
    assert negatives.source.startswith("none")
    pack = parse_pack(garden_files()).pack
    data = PackData(
        pack.name, pack.language, pack.intent_names, tuple(i.examples for i in pack.intents)
    )
    config = PackTrainConfig(folds=3, hidden=32, epochs=20, threads=1, progress=False)
    report = train_pack(data, negatives, tmp_path / "trained", config, torch.device("cpu"))
    assert report["oos_test"] is None
    assert report["cross_validation"]["oos_val_recall"] is None
    assert 0.0 < report["calibration"]["oos_threshold"] < 1.0
    assert (
        "| out-of-scope recall (oos_val) | not measured |"
        in (tmp_path / "trained" / "model_card.md").read_text()
    )


def test_a_pack_trains_and_the_server_loader_reads_it(tmp_path: Path) -> None:
    pack = parse_pack(garden_files()).pack
    data = PackData(
        pack.name, pack.language, pack.intent_names, tuple(i.examples for i in pack.intents)
    )
    negatives = Negatives("hand-written", OFF_TOPIC[:8], OFF_TOPIC[8:12], OFF_TOPIC[12:])
    config = PackTrainConfig(folds=3, hidden=64, epochs=40, threads=1, progress=False)
    out = tmp_path / "trained"
    cpu = torch.device("cpu")
    report = train_pack(data, negatives, out, config, cpu, "pytest")

    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation == report
    cv = evaluation["cross_validation"]
    assert cv["accuracy_no_oos_detection"] >= 0.8
    assert set(cv["per_intent_accuracy"]) == set(pack.intent_names)
    assert evaluation["oos_test"]["n"] == 6
    assert evaluation["artifact"]["labels"] == [*pack.intent_names, "out_of_scope"]
    card = (out / "model_card.md").read_text()
    assert (
        "`garden` pack" in card and "hand-written (8 to train, 4 to calibrate, 6 to test)" in card
    )

    # The artifact is the server's format: its loader reads it, and the served heads (ONNX
    # Runtime graphs on a CPU) classify the pack's own examples.
    artifact = load_intent(out / "intent.pt")
    assert artifact.intents == (*pack.intent_names, "out_of_scope")
    assert artifact.metadata["pack_digest"] == data.digest()
    heads = Understanding(artifact, load_emotion()[0], cpu)
    texts, labels = data.rows()
    results = heads.predict_many(text_features(texts, cpu), texts=list(texts))
    right = sum(r.intent == pack.intent_names[y] for r, y in zip(results, labels, strict=True))
    assert right >= 0.9 * len(texts)
    [weather] = heads.predict_many(text_features(["Is it going to rain this weekend?"], cpu))
    assert weather.intent == "out_of_scope"
