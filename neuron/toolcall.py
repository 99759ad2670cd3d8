"""Tool calls: how tools reach the prompt, the grammar that shapes a call, and its parsing.

Pure (the schema → GBNF conversion comes from `engine.grammar`, which runs no model). The call
syntax is the Hermes/Qwen one, `<tool_call>{"name": …, "arguments": {…}}</tool_call>`:
* a template that renders `tools` itself gets them (Qwen, Hermes and most recent templates
  describe exactly this syntax); any other template gets a system turn that describes the tools
  and the syntax;
* a forced call (a named function, `required`) is constrained from the first token by a grammar
  admitting only a call to the allowed functions, with arguments matching their schemas;
* `auto` leaves text free and arms the same grammar lazily: it applies from the moment the model
  writes `<tool_call>`, so a reply in words stays words and a call is always well formed. One
  generation either way: the prompt is read once.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from neuron.engine.grammar import schema_grammar
from neuron.engine.types import Grammar

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CLOSE) + r"|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolPlan:
    """What a tool-bearing request adds to its generation."""

    messages: list[dict[str, Any]]
    tools_for_template: list[dict[str, Any]] | None
    grammar: Grammar


def _names(tools: list[dict[str, Any]], choice: Any) -> list[str]:
    if isinstance(choice, dict):
        return [choice["function"]["name"]]
    return [tool["function"]["name"] for tool in tools]


def call_grammar(tools: list[dict[str, Any]], choice: Any) -> Grammar:
    """A grammar for one call to an allowed function; lazy (armed by `<tool_call>`) for auto."""
    allowed = set(_names(tools, choice))
    variants = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool["function"]["name"]},
                "arguments": tool["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
        }
        for tool in tools
        if tool["function"]["name"] in allowed
    ]
    schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
    body = schema_grammar(schema, param="tools", prop_order=["name", "arguments"])
    wrapper = (
        f"tool-call ::= {json.dumps(OPEN)} tool-call-ws root tool-call-ws {json.dumps(CLOSE)}\n"
        "tool-call-ws ::= [ \\n]{0,2}\n"
    )
    triggers = (OPEN,) if choice == "auto" else ()
    return Grammar(wrapper + body, root="tool-call", triggers=triggers, param="tools")


def _describe(tools: list[dict[str, Any]]) -> str:
    lines = [
        "You can call functions. To call one, answer with exactly one block like this and "
        "nothing after it:",
        f'{OPEN}\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n{CLOSE}',
        "Available functions:",
    ]
    for tool in tools:
        function = tool["function"]
        lines.append(
            f"- {function['name']}: {function.get('description', '')}\n"
            f"  parameters: {json.dumps(function.get('parameters') or {})}"
        )
    return "\n".join(lines)


def history_for_template(messages: list[dict[str, Any]], native: bool) -> list[dict[str, Any]]:
    """Messages any template can render: past calls as dicts (native) or written out as text."""
    out = []
    for message in messages:
        calls = message.get("tool_calls") or []
        if native:
            if calls:
                message = {**message, "tool_calls": [_call_for_template(c) for c in calls]}
            out.append({**message, "content": message.get("content") or ""})
            continue
        text = message.get("content") or ""
        for call in calls:
            function = call.get("function") or {}
            text += f'\n{OPEN}\n{{"name": {json.dumps(function.get("name"))}, '
            text += f'"arguments": {function.get("arguments") or "{}"}}}\n{CLOSE}'
        out.append({"role": message["role"], "content": text.strip()})
    return out


def _call_for_template(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):
            function["arguments"] = json.loads(arguments)
    return {**call, "function": function}


def plan_tools(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]], choice: Any, native: bool
) -> ToolPlan:
    """How a request with `tools` (and `tool_choice` other than none) is prompted and shaped."""
    history = history_for_template(messages, native)
    if not native:
        guide = _describe(tools)
        if history and history[0]["role"] == "system":
            history[0] = {**history[0], "content": f"{history[0]['content']}\n\n{guide}"}
        else:
            history.insert(0, {"role": "system", "content": guide})
    return ToolPlan(history, tools if native else None, call_grammar(tools, choice))


@dataclass(frozen=True)
class ParsedReply:
    content: str | None
    tool_calls: list[dict[str, Any]]


def parse_reply(text: str) -> ParsedReply:
    """Split generated text into words and `<tool_call>` blocks (OpenAI `tool_calls`)."""
    calls = []
    for match in _CALL.finditer(text):
        try:
            call = json.loads(match.group(1))
        except ValueError:
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            continue
        arguments = call.get("arguments", call.get("parameters", {}))
        calls.append(
            {
                "id": f"call_{secrets.token_hex(12)}",
                "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(arguments)},
            }
        )
    if not calls:
        return ParsedReply(text, [])
    words = text[: text.find(OPEN)].strip()
    return ParsedReply(words or None, calls)
