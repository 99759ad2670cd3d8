"""An Anthropic `/v1/messages` (or `/v1/messages/count_tokens`) body → an OpenAI chat body.

`to_openai_request` for a completion, `count_tokens_request`/`count_tokens_messages` for what a
tokenizer needs to count a prompt; `system` and `messages` are mapped by `turns`, tools and
tool_choice here.

Invariants:
* Pure; raises only `AnthropicRequestError` (via `_fail`) with Anthropic-style field paths;
  never KeyError/TypeError.
* Fields Anthropic knows but a local engine cannot honour (`metadata`, `thinking`,
  `service_tier`, `container`, `cache_control`, …) and unknown top-level fields are ignored,
  so newer clients keep working; Anthropic itself would reject unknown ones. Anthropic-defined
  and server tools (web_search_…, bash_…, code_execution_…) are dropped: the model does not see
  them.
* Numbers are range-checked as Anthropic does (`max_tokens` ≥ 1, `temperature`/`top_p` in
  [0, 1], `top_k` ≥ 0); a streamed request always asks for usage (`include_usage`).
"""

from __future__ import annotations

from typing import Any

from cortex.dialects.anthropic.common import _fail, _number, _object, _string
from cortex.dialects.anthropic.turns import _messages, _system


def _tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        _fail("tools", "Input should be a valid list")
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for index, tool in enumerate(tools):
        path = f"tools.{index}"
        if _object(tool, path).get("type") not in (None, "custom"):
            # Anthropic-defined and server tools (web_search_…, bash_…, code_execution_…) have
            # no local implementation; the model simply does not see them.
            continue
        name = _string(tool, "name", path)
        if name in names:
            _fail(f"{path}.name", f"tool names must be unique; {name!r} repeats")
        names.add(name)
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            _fail(f"{path}.input_schema", "Field required (an object)")
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            _fail(f"{path}.description", "Input should be a valid string")
        function: dict[str, Any] = {"name": name}
        if description:
            function["description"] = description
        function["parameters"] = schema
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, tools: list[dict[str, Any]]) -> dict[str, Any]:
    choice = _object(choice, "tool_choice")
    kind = choice.get("type")
    no_parallel = choice.get("disable_parallel_tool_use")
    if no_parallel is not None and not isinstance(no_parallel, bool):
        _fail("tool_choice.disable_parallel_tool_use", "Input should be a valid boolean")
    value: Any
    if kind == "auto":
        value = "auto"
    elif kind == "any":
        value = "required"
    elif kind == "none":
        value = "none"
    elif kind == "tool":
        name = _string(choice, "name", "tool_choice")
        if name not in {tool["function"]["name"] for tool in tools}:
            _fail("tool_choice.name", f"no tool named {name!r} in tools")
        value = {"type": "function", "function": {"name": name}}
    else:
        _fail("tool_choice.type", "Input should be 'auto', 'any', 'tool' or 'none'")
    if not tools:
        if kind == "any":
            _fail("tool_choice", "tool_choice 'any' requires tools")
        return {}  # auto or none without tools is plain chat
    out: dict[str, Any] = {"tool_choice": value}
    if no_parallel and kind != "none":
        out["parallel_tool_calls"] = False
    return out


def count_tokens_request(body: Any) -> dict[str, Any]:
    """The OpenAI `messages` (system first) and, when given, `tools`/`tool_choice` that an
    Anthropic body maps to — what a tokenizer needs to count its prompt. Validated as for
    /v1/messages, except that `max_tokens` and `model` are not required."""
    body = _object(body, "body")
    out: dict[str, Any] = {
        "messages": _system(body.get("system")) + _messages(body.get("messages"))
    }
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
    if body.get("tool_choice") is not None:
        out.update(_tool_choice(body["tool_choice"], tools))
    return out


def count_tokens_messages(body: Any) -> list[dict[str, Any]]:
    """Just the OpenAI messages of `count_tokens_request` (tools there)."""
    messages: list[dict[str, Any]] = count_tokens_request(body)["messages"]
    return messages


def to_openai_request(body: Any, *, model: str | None = None) -> dict[str, Any]:
    """A validated Anthropic /v1/messages body as an OpenAI chat.completions body.

    `model` overrides the body's (the routed id); without it `body["model"]` is required."""
    body = _object(body, "body")
    if model is None:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            _fail("model", "Field required (a non-empty string)")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        _fail("max_tokens", "Field required")
    # ≥ 1: llama-cpp-python reads max_tokens ≤ 0 as "until the context is full".
    _number(body, "max_tokens", 1, None, integer=True)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        _fail("stream", "Input should be a valid boolean")
    prompt = count_tokens_request(body)
    out: dict[str, Any] = {"model": model, "messages": prompt.pop("messages")}
    out["max_tokens"] = max_tokens
    out["stream"] = bool(stream)
    if stream:
        out["stream_options"] = {"include_usage": True}
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list):
            _fail("stop_sequences", "Input should be a valid list")
        for index, stop in enumerate(stops):
            if not isinstance(stop, str) or not stop:
                _fail(f"stop_sequences.{index}", "Input should be a non-empty string")
        if stops:
            out["stop"] = list(stops)
    for key, low, high, integer in (
        ("temperature", 0, 1, False),
        ("top_p", 0, 1, False),
        ("top_k", 0, None, True),
    ):
        if (value := _number(body, key, low, high, integer)) is not None:
            out[key] = value
    out.update(prompt)  # tools, tool_choice, parallel_tool_calls
    if (config := body.get("output_config")) is not None:
        fmt = _object(config, "output_config").get("format")
        if fmt is not None:
            if _object(fmt, "output_config.format").get("type") != "json_schema":
                _fail("output_config.format.type", "Input should be 'json_schema'")
            schema = fmt.get("schema")
            if not isinstance(schema, dict):
                _fail("output_config.format.schema", "Field required (an object)")
            out["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema},
            }
    return out
