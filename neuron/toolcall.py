"""Tool calls: how tools reach the prompt, the grammar that shapes a call, and its parsing.

Pure (the schema → GBNF conversion comes from `engine.grammar`, which runs no model). Each model
family writes calls its own way, and the model's chat template says which (`detect_syntax`):

* Hermes / Qwen:  `<tool_call>{"name": …, "arguments": {…}}</tool_call>`
* Llama 3.x:      `{"name": …, "parameters": {…}}` (optionally after `<|python_tag|>`)
* Mistral:        `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`
* any other template (no tools of its own): the Hermes syntax, described in a system turn.

A template that renders `tools` itself gets them and the history's calls as objects; others get
the system turn. A forced call (a named function, `required`) is constrained from the first token
by a grammar admitting only calls to the allowed functions with arguments matching their schemas;
`auto` leaves text free and arms the same grammar lazily when the model writes the family's
opening (`<tool_call>`, `{"name"`, `[TOOL_CALLS]`), so words stay words and a call always
parses. One generation either way: the prompt is read once.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

from neuron.engine.grammar import schema_grammar
from neuron.engine.types import Grammar


@dataclass(frozen=True)
class ToolSyntax:
    """How one family writes a call: the text that opens it (also the lazy trigger), the text
    that closes it, the key holding the arguments, and whether calls come as a JSON list."""

    family: str
    open: str
    close: str
    arguments_key: str
    as_list: bool = False
    native: bool = False  # the template renders `tools` itself

    def grammar_rules(self) -> str:
        """GBNF around the converter's `root` (one call object) for this syntax."""
        opening = json.dumps(self.open) if self.open else ""
        closing = json.dumps(self.close) if self.close else ""
        body = 'root (tool-call-ws "," tool-call-ws root)*' if self.as_list else "root"
        if self.as_list:
            body = f'"[" tool-call-ws {body} tool-call-ws "]"'
        rule = " tool-call-ws ".join(part for part in (opening, body, closing) if part)
        return f"tool-call ::= {rule}\ntool-call-ws ::= [ \\n]{{0,2}}\n"


HERMES = ToolSyntax("hermes", "<tool_call>", "</tool_call>", "arguments")
LLAMA3 = ToolSyntax("llama3", "", "", "parameters")
MISTRAL = ToolSyntax("mistral", "[TOOL_CALLS]", "", "arguments", as_list=True)
# Llama 3's call has no opening marker; its JSON object is what arms the lazy grammar.
_LLAMA3_TRIGGER = '{"name"'


def detect_syntax(template: str | None) -> ToolSyntax:
    """The call syntax a chat template teaches its model (Hermes when it teaches none)."""
    text = template or ""
    native = "tools" in text
    if "[TOOL_CALLS]" in text:
        return _with(MISTRAL, native)
    if "<tool_call>" in text:
        return _with(HERMES, native)
    if "<|python_tag|>" in text or ("<|start_header_id|>" in text and native):
        return _with(LLAMA3, native)
    return HERMES


def _with(syntax: ToolSyntax, native: bool) -> ToolSyntax:
    return ToolSyntax(
        syntax.family, syntax.open, syntax.close, syntax.arguments_key, syntax.as_list, native
    )


@dataclass(frozen=True)
class ToolPlan:
    """What a tool-bearing request adds to its generation."""

    messages: list[dict[str, Any]]
    tools_for_template: list[dict[str, Any]] | None
    grammar: Grammar


def _allowed(tools: list[dict[str, Any]], choice: Any) -> set[str]:
    if isinstance(choice, dict):
        return {choice["function"]["name"]}
    return {tool["function"]["name"] for tool in tools}


def call_grammar(tools: list[dict[str, Any]], choice: Any, syntax: ToolSyntax = HERMES) -> Grammar:
    """A grammar for a call to an allowed function; lazy (armed by the opening) for auto."""
    allowed = _allowed(tools, choice)
    variants = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool["function"]["name"]},
                syntax.arguments_key: tool["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", syntax.arguments_key],
        }
        for tool in tools
        if tool["function"]["name"] in allowed
    ]
    schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
    body = schema_grammar(schema, param="tools", prop_order=["name", syntax.arguments_key])
    triggers: tuple[str, ...] = ()
    if choice == "auto":
        triggers = (syntax.open or _LLAMA3_TRIGGER,)
    return Grammar(
        syntax.grammar_rules() + body, root="tool-call", triggers=triggers, param="tools"
    )


def _describe(tools: list[dict[str, Any]]) -> str:
    lines = [
        "You can call functions. To call one, answer with exactly one block like this and "
        "nothing after it:",
        f'{HERMES.open}\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n'
        f"{HERMES.close}",
        "Available functions:",
    ]
    for tool in tools:
        function = tool["function"]
        lines.append(
            f"- {function['name']}: {function.get('description', '')}\n"
            f"  parameters: {json.dumps(function.get('parameters') or {})}"
        )
    return "\n".join(lines)


def history_for_template(
    messages: list[dict[str, Any]], syntax: ToolSyntax = HERMES
) -> list[dict[str, Any]]:
    """Messages the template can render: past calls as objects (templates that know tools) or
    written out in the family's syntax as text (the others)."""
    out = []
    for message in messages:
        calls = message.get("tool_calls") or []
        if syntax.native:
            if calls:
                message = {**message, "tool_calls": [_call_for_template(c) for c in calls]}
            out.append({**message, "content": message.get("content") or ""})
            continue
        text = message.get("content") or ""
        for call in calls:
            function = call.get("function") or {}
            arguments = function.get("arguments") or "{}"
            text += f'\n{HERMES.open}\n{{"name": {json.dumps(function.get("name"))}, '
            text += f'"arguments": {arguments}}}\n{HERMES.close}'
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
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    choice: Any,
    syntax: ToolSyntax = HERMES,
) -> ToolPlan:
    """How a request with `tools` (and `tool_choice` other than none) is prompted and shaped."""
    history = history_for_template(messages, syntax)
    if not syntax.native:
        guide = _describe(tools)
        if history and history[0]["role"] == "system":
            history[0] = {**history[0], "content": f"{history[0]['content']}\n\n{guide}"}
        else:
            history.insert(0, {"role": "system", "content": guide})
    grammar = call_grammar(tools, choice, syntax if syntax.native else HERMES)
    return ToolPlan(history, tools if syntax.native else None, grammar)


@dataclass(frozen=True)
class ParsedReply:
    """Generated text split for an OpenAI answer: `content` is the text before the first call
    (stripped; None when nothing is left) and `tool_calls` the calls found, as OpenAI ``tool_calls``
    entries with fresh ids. With no call, `content` is the whole text and `tool_calls` is empty."""

    content: str | None
    tool_calls: list[dict[str, Any]]


def _openai_call(call: Any) -> dict[str, Any] | None:
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        with contextlib.suppress(ValueError):
            arguments = json.loads(arguments)
    return {
        "id": f"call_{secrets.token_hex(12)}",
        "type": "function",
        "function": {"name": call["name"], "arguments": json.dumps(arguments)},
    }


def _json_values(text: str) -> list[tuple[int, Any]]:
    """Every JSON object or list that starts in `text`, with its offset (outermost only)."""
    decoder = json.JSONDecoder()
    found, index = [], 0
    while index < len(text):
        start = min(
            (i for i in (text.find("{", index), text.find("[", index)) if i >= 0), default=-1
        )
        if start < 0:
            break
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            index = start + 1
            continue
        found.append((start, value))
        index = end
    return found


def parse_reply(text: str, syntax: ToolSyntax = HERMES) -> ParsedReply:
    """Split generated text into words and calls (OpenAI `tool_calls`), in `syntax` first and
    then, as a fallback for models that ignore their template, any of the other syntaxes."""
    for candidate in (syntax, HERMES, MISTRAL, LLAMA3):
        start = text.find(candidate.open) if candidate.open else 0
        if start < 0:
            continue
        region = text[start + len(candidate.open) :]
        calls = []
        for offset, value in _json_values(region):
            if candidate is LLAMA3 and text[:offset].strip().removesuffix("<|python_tag|>").strip():
                break  # a Llama 3 call is the whole reply, not JSON inside prose
            for item in value if isinstance(value, list) else [value]:
                call = _openai_call(item)
                if call is not None:
                    calls.append(call)
            if not candidate.as_list and candidate is not HERMES:
                break
        if calls:
            words = text[:start].strip() if candidate.open else ""
            return ParsedReply(words or None, calls)
    return ParsedReply(text, [])
