"""Tool-call syntaxes per model family: detection, grammars, parsing (pure, table-driven)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neuron.engine.gbnf import check_gbnf
from neuron.toolcall import HERMES, LLAMA3, MISTRAL, call_grammar, detect_syntax, parse_reply

TEMPLATES = Path(__file__).resolve().parent.parent / "fixtures" / "templates"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("template", "family", "native"),
    [
        ("hermes.jinja", "hermes", True),
        ("llama3.jinja", "llama3", True),
        ("mistral.jinja", "mistral", True),
        ("plain.jinja", "hermes", False),  # no tools of its own: described in a system turn
        (None, "hermes", False),
    ],
)
def test_detect_syntax(template: str | None, family: str, native: bool) -> None:
    text = (TEMPLATES / template).read_text() if template else None
    syntax = detect_syntax(text)
    assert (syntax.family, syntax.native) == (family, native)


@pytest.mark.parametrize("syntax", [HERMES, LLAMA3, MISTRAL], ids=lambda s: s.family)
@pytest.mark.parametrize("choice", ["auto", "required", {"function": {"name": "get_time"}}])
def test_call_grammars_are_valid_gbnf(syntax, choice) -> None:
    grammar = call_grammar([WEATHER, TIME], choice, syntax)
    check_gbnf(grammar.gbnf)
    assert grammar.root == "tool-call"
    assert bool(grammar.triggers) == (choice == "auto")
    names = ("get_weather", "get_time") if not isinstance(choice, dict) else ("get_time",)
    for name in ("get_weather", "get_time"):
        assert (json.dumps(name)[1:-1] in grammar.gbnf) == (name in names)


@pytest.mark.parametrize(
    ("syntax", "text", "content", "calls"),
    [
        (
            HERMES,
            'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
            "</tool_call>",
            "Let me check.",
            [("get_weather", {"city": "Oslo"})],
        ),
        (
            HERMES,
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n'
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>',
            None,
            [("get_time", {}), ("get_weather", {"city": "Rome"})],
        ),
        (
            LLAMA3,
            '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Lima"}}',
            None,
            [("get_weather", {"city": "Lima"})],
        ),
        (
            LLAMA3,
            '{"name": "get_weather", "parameters": "{\\"city\\": \\"Kyiv\\"}"}',  # a JSON string
            None,
            [("get_weather", {"city": "Kyiv"})],
        ),
        (
            MISTRAL,
            '[TOOL_CALLS][{"name": "get_time", "arguments": {}}, '
            '{"name": "get_weather", "arguments": {"city": "Nice"}}]',
            None,
            [("get_time", {}), ("get_weather", {"city": "Nice"})],
        ),
        # a model that ignores its template's syntax but writes another family's still parses
        (
            MISTRAL,
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
            None,
            [("get_time", {})],
        ),
        # free text stays text, JSON in prose is not a Llama 3 call
        (HERMES, "It is sunny in Oslo.", "It is sunny in Oslo.", []),
        (
            LLAMA3,
            'Use {"name": "x", "parameters": {}} like this.',
            'Use {"name": "x", "parameters": {}} like this.',
            [],
        ),
        (HERMES, "<tool_call>{not json</tool_call>", "<tool_call>{not json</tool_call>", []),
    ],
)
def test_parse_reply(syntax, text: str, content: str | None, calls: list) -> None:
    reply = parse_reply(text, syntax)
    assert reply.content == content
    got = [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in reply.tool_calls
    ]
    assert got == calls
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in reply.tool_calls)
