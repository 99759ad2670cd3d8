"""A whole OpenAI chat.completion → an Anthropic Message, and the helpers the stream shares.

`to_anthropic_response` maps one non-streaming response; `_ToolIds` (tool-use ids),
`parse_tool_input`, `_usage`, `_stop_reason`, `_first_choice` and `_tool_call_list` are shared
with `stream` (the leading underscore: private to the package).

Invariants:
* Pure: no I/O, no clock, no randomness; ids come from the caller (`message_id`, and a
  `tool_id` factory called once per generated tool-use id).
* Never raises on odd upstream output; it maps what it can (a non-object response is an empty
  one, unparseable tool arguments are {}).
* No text block is ever empty or whitespace-only (Anthropic rejects such blocks when a client
  sends the history back); nameless tool calls are dropped.
* Tool-use ids are ``toolu_`` + ``[A-Za-z0-9_-]+`` (what Anthropic accepts back) and unique
  within a message: the upstream id when it already is such and unused, else `tool_id()`
  prefixed ``toolu_`` unless it already is (so `tool_id` must return such characters).
* Usage counts cache reads apart from `input_tokens`, as Anthropic does (OpenAI includes them
  in `prompt_tokens`); `stop_sequence` is set only when the upstream names the matched stop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

_TOOL_ID = re.compile(r"[A-Za-z0-9_-]{1,256}")


class _ToolIds:
    """Hands out `toolu_…` tool-use ids: the upstream one when it already is such an id and
    unused, else a fresh one (engines name calls `call_…`; Anthropic clients expect `toolu_`)."""

    def __init__(self, factory: Callable[[], str]) -> None:
        self._factory = factory
        self._used: set[str] = set()

    def assign(self, upstream: Any) -> str:
        if (
            isinstance(upstream, str)
            and upstream.startswith("toolu_")
            and _TOOL_ID.fullmatch(upstream)
            and upstream not in self._used
        ):
            chosen = upstream
        else:
            chosen = self._factory()
            if not chosen.startswith("toolu_"):
                chosen = "toolu_" + chosen
        self._used.add(chosen)
        return chosen


def parse_tool_input(arguments: Any) -> dict[str, Any]:
    """OpenAI `arguments` (a JSON string) as Anthropic `input` (an object).

    Empty, unparseable or non-object arguments give {}: `input` must be an object, and a
    client that validates it against the tool's schema then tells the model what is missing —
    a recoverable turn instead of a failed response. A double-encoded object is unwrapped."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
        if isinstance(value, str):
            value = json.loads(value)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    prompt = _count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = min(_count(details.get("cached_tokens")) if isinstance(details, dict) else 0, prompt)
    # Anthropic counts cache reads apart from input_tokens; OpenAI includes them in prompt_tokens.
    return {
        "input_tokens": prompt - cached,
        "output_tokens": _count(usage.get("completion_tokens")),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def _stop_reason(
    finish_reason: Any, matched: Any, has_tools: bool, stop_sequences: Sequence[str]
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). OpenAI's finish_reason "stop" does not say which stop
    string matched; only an upstream that names it (vLLM's choice `stop_reason`) can give
    `stop_sequence` — otherwise "end_turn" is the honest answer."""
    if finish_reason == "length":
        return "max_tokens", None
    if has_tools:
        # Also when an engine reports "stop" after tool calls: clients look for tool_use here.
        return "tool_use", None
    if finish_reason == "content_filter":
        return "refusal", None
    if isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return "end_turn", None


def _first_choice(response: dict[str, Any]) -> dict[str, Any]:
    choices = response.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                return choice
    return {}


def _tool_call_list(message: dict[str, Any]) -> list[dict[str, Any]]:
    calls = message.get("tool_calls")
    if not calls and isinstance(message.get("function_call"), dict):
        calls = [{"index": 0, "function": message["function_call"]}]  # legacy single call
    return [call for call in calls if isinstance(call, dict)] if isinstance(calls, list) else []


def to_anthropic_response(
    openai_response: dict[str, Any],
    *,
    model: str,
    message_id: str,
    tool_id: Callable[[], str],
    stop_sequences: Sequence[str] = (),
) -> dict[str, Any]:
    """An OpenAI chat.completion as an Anthropic Message: text first (skipped when blank), then
    one tool_use block per tool call (nameless calls are dropped)."""
    response = openai_response if isinstance(openai_response, dict) else {}
    choice = _first_choice(response)
    message = value if isinstance(value := choice.get("message"), dict) else {}
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):  # some servers answer with content parts
        parts = [part.get("text") for part in text if isinstance(part, dict)]
        text = "".join(part for part in parts if isinstance(part, str))
    if isinstance(text, str) and text.strip():
        content.append({"type": "text", "text": text})
    ids = _ToolIds(tool_id)
    for call in _tool_call_list(message):
        function = value if isinstance(value := call.get("function"), dict) else {}
        name = function.get("name")
        if isinstance(name, str) and name:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": ids.assign(call.get("id")),
                "name": name,
            }
            block["input"] = parse_tool_input(function.get("arguments"))
            content.append(block)
    stop_reason, stop_sequence = _stop_reason(
        choice.get("finish_reason"),
        choice.get("stop_reason"),
        any(block["type"] == "tool_use" for block in content),
        stop_sequences,
    )
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _usage(response.get("usage")),
    }
