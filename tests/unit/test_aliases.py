"""Alias resolution with glob patterns: exact aliases, then model ids, then the most specific
pattern (fnmatch semantics), table by table; and what /v1/models lists."""

from __future__ import annotations

import pytest

from cortex.fleet.catalogue import catalogue_view
from cortex.fleet.state import (
    CatalogueEntry,
    FleetSnapshot,
    ModelSlot,
    NodeState,
    is_pattern,
    resolve_alias,
)

ALIASES = {
    "claude-*": "coder",
    "claude-*-haiku-*": "small-coder",
    "claude-3-5-haiku-20241022": "tiny",  # exact beats every pattern
    "gpt-4o?": "coder",
    "o[134]-mini": "small-coder",
    "*": "fallback",
    "sonnet": "coder",
}


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("claude-3-5-haiku-20241022", "tiny"),
        ("claude-haiku-4-5-20251001", "coder"),  # "-haiku-" needs a part before it
        ("claude-3-haiku-20240307", "small-coder"),
        ("claude-sonnet-4-5", "coder"),
        ("claude-opus-4-1-20250805", "coder"),
        ("sonnet", "coder"),
        ("gpt-4o1", "coder"),
        ("gpt-4o", "fallback"),  # "?" is exactly one character
        ("o3-mini", "small-coder"),
        ("o2-mini", "fallback"),
        ("Claude-3-haiku-x", "fallback"),  # case-sensitive
        ("anything", "fallback"),
    ],
)
def test_resolve_alias(name: str, target: str) -> None:
    assert resolve_alias(name, ALIASES) == target


def test_no_match_is_none_and_specificity_breaks_ties_deterministically() -> None:
    assert resolve_alias("x", {"a*": "one"}) is None
    # Same literal length: fewer wildcards first, then the key itself.
    assert resolve_alias("ab", {"a?": "one", "*b": "two"}) == "two"
    assert resolve_alias("abc", {"a*c": "one", "?bc": "two"}) == "two"
    assert resolve_alias("abc", {"?b?": "one", "a*": "two"}) == "two"


@pytest.mark.parametrize(
    ("key", "pattern"),
    [("claude-*", True), ("gpt-4o?", True), ("o[13]-mini", True), ("qwen2.5-coder", False)],
)
def test_is_pattern(key: str, pattern: bool) -> None:
    assert is_pattern(key) is pattern


def snapshot() -> FleetSnapshot:
    catalogue = {
        m: CatalogueEntry(id=m) for m in ("coder", "small-coder", "tiny", "fallback", "claude-x")
    }
    node = NodeState(
        name="n1", endpoint="http://n1", models=(ModelSlot("resident-only", "n1", "ready"),)
    )
    return FleetSnapshot(nodes={"n1": node}, catalogue=catalogue, aliases=ALIASES)


@pytest.mark.parametrize(
    ("name", "model_id"),
    [
        ("claude-x", "claude-x"),  # a catalogue id is itself, though "claude-*" matches it
        ("resident-only", "resident-only"),  # so is a model some node holds
        ("claude-3-haiku-1", "small-coder"),
        ("sonnet", "coder"),
        ("whatever", "fallback"),
    ],
)
def test_snapshot_resolve(name: str, model_id: str) -> None:
    assert snapshot().resolve(name) == model_id


def test_the_catalogue_lists_exact_aliases_but_not_patterns() -> None:
    ids = [entry["id"] for entry in catalogue_view(snapshot())["data"]]
    assert "sonnet" in ids and "claude-3-5-haiku-20241022" in ids
    assert not [i for i in ids if is_pattern(i)]
