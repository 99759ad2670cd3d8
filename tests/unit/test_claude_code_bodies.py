"""Claude Code's real request shapes (tests/fixtures/claude_code/*.json) through the Anthropic
translator: the billing header never reaches the prompt, mid-conversation system messages stay
in place, thinking history is dropped, and a conversation's prompt only ever grows at its end."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from cortex.dialects.anthropic import to_openai_request

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "claude_code"
NAMES = sorted(path.stem for path in FIXTURES.glob("*.json"))


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def prompt_text(chat: dict[str, Any]) -> str:
    return json.dumps(chat["messages"], ensure_ascii=False)


def test_the_fixtures_are_there() -> None:
    assert NAMES == ["billing_many_tools", "mid_conversation_system", "thinking_history"]


@pytest.mark.parametrize("name", NAMES)
def test_each_body_translates_without_the_volatile_or_opaque_parts(name: str) -> None:
    body = fixture(name)
    chat = to_openai_request(body)
    text = prompt_text(chat)
    assert "x-anthropic-billing-header" not in text and "cch=" not in text
    assert "signature" not in text and "EmwKAhgB" not in text  # thinking history is dropped
    assert [m["role"] for m in chat["messages"]].count("system") == 1
    assert chat["messages"][0]["role"] == "system"
    assert chat["messages"][0]["content"].startswith("You are Claude Code")
    assert len(chat["tools"]) == len(body["tools"]) == 15
    assert chat["temperature"] == 1 and chat["stream"] is True
    for ignored in ("thinking", "context_management", "metadata"):
        assert ignored not in chat


def test_a_mid_conversation_system_message_is_a_reminder_in_place() -> None:
    chat = to_openai_request(fixture("mid_conversation_system"))
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    last = chat["messages"][-1]["content"]
    assert last.startswith("<system-reminder>\nThe user changed the working directory")
    assert last.endswith("</system-reminder>\n\nAnd which directory does it test?")
    assert chat["messages"][2]["content"] == "Let me look at the Makefile."  # thinking dropped


def test_the_billing_nonce_changes_nothing() -> None:
    one, two = fixture("billing_many_tools"), fixture("billing_many_tools")
    two["system"][0]["text"] = "x-anthropic-billing-header: cc_version=2.1.37.0d9; cch=0b1c2;"
    assert to_openai_request(one) == to_openai_request(two)


def next_turn(body: dict[str, Any], reply: str, question: str, nonce: str) -> dict[str, Any]:
    """The request Claude Code sends next: the reply appended, a new question, a new nonce."""
    turn = copy.deepcopy(body)
    turn["system"][0]["text"] = f"x-anthropic-billing-header: cc_version=2.1.37.0d9; cch={nonce};"
    turn["messages"] += [
        {"role": "assistant", "content": [{"type": "text", "text": reply}]},
        {"role": "system", "content": "Token usage: 2,311 of 200,000."},
        {"role": "user", "content": [{"type": "text", "text": question}]},
    ]
    return turn


@pytest.mark.parametrize("name", NAMES)
def test_a_later_turn_only_appends_to_the_prompt(name: str) -> None:
    first = fixture(name)
    second = next_turn(first, "It runs pytest.", "Thanks.", "9f9f9")
    third = next_turn(second, "You're welcome.", "Bye.", "1a2b3")
    turns = [to_openai_request(body) for body in (first, second, third)]
    for earlier, later in itertools.pairwise(turns):
        assert later["tools"] == earlier["tools"]
        assert later["messages"][: len(earlier["messages"])] == earlier["messages"]
