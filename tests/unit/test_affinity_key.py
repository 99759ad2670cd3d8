"""cortex.fleet.affinity: one key per conversation, never the text it comes from."""

from __future__ import annotations

import pytest

from cortex.fleet.affinity import affinity_key, explicit_key

SYSTEM = {"role": "system", "content": "You are a coding agent."}


def chat(*messages: dict) -> dict:
    return {"model": "m", "messages": list(messages)}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


TURN_1 = chat(SYSTEM, user("fix the bug in parser.py"))
TURN_2 = chat(SYSTEM, user("fix the bug in parser.py"), assistant("done"), user("now tests"))
OTHER_USER = chat(SYSTEM, user("add a README"))


def test_later_turns_of_a_conversation_keep_its_key() -> None:
    assert affinity_key(None, TURN_1) == affinity_key(None, TURN_2) is not None


def test_two_conversations_on_one_system_prompt_differ() -> None:
    assert affinity_key(None, TURN_1) != affinity_key(None, OTHER_USER)


def test_the_system_prompt_is_part_of_the_opening() -> None:
    other_agent = chat({"role": "system", "content": "Be brief."}, user("fix the bug in parser.py"))
    assert affinity_key(None, TURN_1) != affinity_key(None, other_agent)


def test_a_client_key_wins_over_the_opening_and_is_not_the_opening_of_its_text() -> None:
    assert affinity_key("session-1", TURN_1) == affinity_key("session-1", OTHER_USER)
    assert affinity_key("session-1", TURN_1) != affinity_key("session-2", TURN_1)
    assert affinity_key("fix the bug in parser.py", {}) != affinity_key(None, TURN_1)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "prompt": "def f():"},
        {"model": "m", "input": "embed me"},
        chat(SYSTEM),
        {"model": "m", "messages": "not a list"},
        chat("not a message", SYSTEM),  # type: ignore[arg-type]
    ],
)
def test_no_conversation_no_key(body: dict) -> None:
    assert affinity_key(None, body) is None
    assert affinity_key("", body) is None


def test_the_key_holds_no_text_and_takes_any_content() -> None:
    secret = "sk-very-secret"
    key = affinity_key(None, chat({"role": "developer", "content": secret}, user("\ud800")))
    assert key is not None and len(key) == 32 and secret not in key
    parts = chat(user([{"type": "text", "text": "hi"}]))  # type: ignore[arg-type]
    assert affinity_key(None, parts) != affinity_key(None, chat(user("hi")))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"prompt_cache_key": "k", "user": "u"}, "k"),
        ({"user": "u"}, "u"),
        ({"prompt_cache_key": "", "user": "u"}, "u"),
        ({"prompt_cache_key": 7}, None),
        ({}, None),
    ],
)
def test_explicit_key_of_an_openai_body(body: dict, expected: str | None) -> None:
    assert explicit_key(body) == expected
