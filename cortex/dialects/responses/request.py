"""A Responses API body → the chat.completions body a neuron serves, plus what the answer echoes.

`to_chat_request(body)` validates and maps: `instructions` and leading `system`/`developer`
messages become the system message; `input` (a string, or message / `function_call` /
`function_call_output` items) becomes the conversation; function `tools`, `tool_choice`,
`parallel_tool_calls`, `max_output_tokens`, `temperature`, `top_p` and `text.format` map to
their chat fields.

Invariants:
* Pure; raises only `InvalidRequest` with `param` in OpenAI's path style; never quotes body text.
* The prompt's prefix never moves: a `system`/`developer` message after the conversation has
  begun becomes a `<system-reminder>` user turn in place (`system_reminder`), not a system
  message hoisted to the front (which many templates refuse and which defeats prefix caching).
* Consecutive items of one role merge into one chat message (an assistant message and the
  `function_call`s after it are one assistant turn), which keeps strict-alternation templates
  working. `reasoning` input items are dropped: the engine has no replayable reasoning.
* `prompt_cache_key`, `user` and `safety_identifier` go to `RoutingHints`, never into the chat
  body; the Response object echoes what the client sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

from cortex.dialects.openai import model_of, system_reminder
from cortex.dialects.schema import check_schema
from cortex.errors import InvalidRequest

_INT32 = 2**31 - 1
_STATEFUL = {
    "previous_response_id": "responses are not stored by this gateway (store is answered "
    "statelessly): send the whole conversation in 'input' instead",
    "conversation": "conversations are not stored by this gateway: send the whole conversation "
    "in 'input' instead",
    "prompt": "stored prompt templates are not supported by this gateway",
}
_SYSTEM_ROLES = frozenset({"system", "developer"})
_ROLES = frozenset({"user", "assistant", *_SYSTEM_ROLES})
_DROPPED_ITEMS = frozenset({"reasoning"})  # engine-specific, not replayable
# Tools OpenAI runs on its side. Clients offer them as optional capabilities (Codex CLI sends
# `web_search` on every turn), so they are not offered to the model here rather than refused;
# a tool_choice that forces one is refused.
HOSTED_TOOLS = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "file_search",
        "code_interpreter",
        "image_generation",
        "computer_use_preview",
        "mcp",
        "local_shell",
    }
)


@dataclass(frozen=True)
class RoutingHints:
    """What a client says about where its request would be cheapest to serve (prompt cache
    affinity, end user). Kept apart from the chat body so it never reaches a prompt or a log;
    routing keys the conversation's replica on it (`fleet.affinity`)."""

    prompt_cache_key: str | None = None
    user: str | None = None


@dataclass(frozen=True)
class ResponsesRequest:
    """A validated /v1/responses request: the requested `model`, the `chat` body for the neuron
    (model field = the requested name; the dispatcher substitutes the routed id), `echo` (the
    request fields a Response object repeats back), `hints`, and `namespaces`: the functions of
    `namespace` tools reach the model as ``namespace.name``, and calls of them go back to the
    client as `name` plus `namespace`."""

    model: str
    chat: dict[str, Any]
    echo: dict[str, Any] = field(default_factory=dict)
    hints: RoutingHints = RoutingHints()
    namespaces: dict[str, str] = field(default_factory=dict)  # chat tool name → its namespace

    @property
    def stream(self) -> bool:
        return bool(self.chat.get("stream"))


def _fail(param: str, problem: str) -> NoReturn:
    raise InvalidRequest(f"'{param}' {problem}", param=param)


def _optional(body: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int subclass: only a bool field takes one, and a bool field takes only that.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        _fail(key, f"must be {what}")
    return value


def _number(body: dict[str, Any], key: str, low: float, high: float, integer: bool) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    kinds: tuple[type[int] | type[float], ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        _fail(key, f"must be {'an integer' if integer else 'a number'}")
    if not low <= value <= high:  # also refuses NaN
        _fail(key, f"must be between {low:g} and {high:g}")
    return value


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        _fail(param, "must be a string")
    return value


def _content_parts(content: Any, path: str, role: str) -> str | list[dict[str, Any]]:
    """Message content as chat content: one string when it is all text (what every chat
    template takes), else a list of text and image_url parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        _fail(path, "must be a string or an array of content parts")
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        where = f"{path}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": _text(part.get("text"), f"{where}.text")})
        elif kind == "refusal" and role == "assistant":
            parts.append({"type": "text", "text": _text(part.get("refusal"), f"{where}.refusal")})
        elif kind == "input_image" and role != "assistant":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                _fail(f"{where}.image_url", "must be a URL or data URL (file ids need storage)")
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            _fail(f"{where}.type", f"is not a content part a {role} message takes here")
    if all(part["type"] == "text" for part in parts):
        return "\n\n".join(part["text"] for part in parts if part["text"])
    return parts


def _function_call(item: dict[str, Any], path: str) -> dict[str, Any]:
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str) or not call_id:
        _fail(f"{path}.call_id", "must be a non-empty string")
    if not isinstance(name, str) or not name:
        _fail(f"{path}.name", "must be a non-empty string")
    if (namespace := _optional(item, "namespace", str, "a string")) is not None:
        name = qualified(namespace, name)
    arguments = _text(item.get("arguments", "{}"), f"{path}.arguments")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _function_output(item: dict[str, Any], path: str) -> dict[str, Any]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        _fail(f"{path}.call_id", "must be a non-empty string")
    output = item.get("output")
    if isinstance(output, list):  # a list of input_text parts; tool messages take text only
        texts = []
        for index, part in enumerate(output):
            if not isinstance(part, dict) or part.get("type") != "input_text":
                _fail(f"{path}.output[{index}].type", "must be 'input_text' (tool output is text)")
            texts.append(_text(part.get("text"), f"{path}.output[{index}].text"))
        output = "\n\n".join(texts)
    return {"role": "tool", "tool_call_id": call_id, "content": _text(output, f"{path}.output")}


def _append(messages: list[dict[str, Any]], message: dict[str, Any]) -> None:
    """Add a chat message, merging it into the previous one of the same role (not tool)."""
    last = messages[-1] if messages else None
    if last is None or last["role"] != message["role"] or message["role"] in ("tool", "system"):
        messages.append(message)
        return
    if (
        message["role"] == "assistant"
        and message.get("tool_calls") is None
        and last.get("tool_calls")
    ):
        messages.append(message)  # text after a call is a new turn, as the model produced it
        return
    a, b = last.get("content"), message.get("content")
    if isinstance(a, str | None) and isinstance(b, str | None):
        last["content"] = "\n\n".join(text for text in (a, b) if text) or a
    else:
        as_parts = [
            [{"type": "text", "text": c}] if isinstance(c, str) else (c or []) for c in (a, b)
        ]
        last["content"] = as_parts[0] + as_parts[1]
    if message.get("tool_calls"):
        last["tool_calls"] = [*(last.get("tool_calls") or []), *message["tool_calls"]]


def _conversation(body: dict[str, Any]) -> list[dict[str, Any]]:
    instructions = _optional(body, "instructions", str, "a string")
    system = [instructions] if instructions else []
    messages: list[dict[str, Any]] = []
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        _fail("input", "must be a non-empty string or array of input items")
    for index, item in enumerate(items):
        path = f"input[{index}]"
        if not isinstance(item, dict):
            _fail(path, "must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                _fail(f"{path}.role", "must be one of user, assistant, system, developer")
            content = _content_parts(item.get("content"), f"{path}.content", role)
            if role in _SYSTEM_ROLES:
                if not messages:  # before the conversation: part of the system prompt
                    if isinstance(content, list):
                        _fail(f"{path}.content", "must be text in a system message")
                    system.append(content)
                    continue
                role, content = "user", system_reminder(_as_text(content))
            _append(messages, {"role": role, "content": content})
        elif kind == "function_call":
            _append(
                messages,
                {"role": "assistant", "content": None, "tool_calls": [_function_call(item, path)]},
            )
        elif kind == "function_call_output":
            messages.append(_function_output(item, path))
        elif kind == "item_reference":
            _fail(f"{path}.type", "item references need stored responses; this gateway stores none")
        elif kind not in _DROPPED_ITEMS:
            _fail(f"{path}.type", "must be message, function_call or function_call_output")
    if not messages:
        _fail("input", "must contain at least one user, assistant or tool item")
    text = "\n\n".join(part for part in system if part)
    return ([{"role": "system", "content": text}] if text else []) + messages


def _as_text(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "\n\n".join(part["text"] for part in content if part["type"] == "text")


def qualified(namespace: str, name: str) -> str:
    """The chat tool name of function `name` in `namespace`."""
    return f"{namespace}.{name}"


def _tools(tools: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Chat tools for the model, and which of them came from which namespace."""
    if tools is None:
        return [], {}
    if not isinstance(tools, list):
        _fail("tools", "must be an array")
    out: list[dict[str, Any]] = []
    namespaces: dict[str, str] = {}
    names: set[str] = set()
    for index, tool in enumerate(tools):
        path = f"tools[{index}]"
        if not isinstance(tool, dict):
            _fail(path, "must be an object")
        kind = tool.get("type")
        if kind in HOSTED_TOOLS:
            continue
        if kind == "namespace":
            namespace = _optional(tool, "name", str, "a string")
            if not namespace:
                _fail(f"{path}.name", "must be a non-empty string")
            inner = tool.get("tools")
            if not isinstance(inner, list):
                _fail(f"{path}.tools", "must be an array of function tools")
            for at, function in enumerate(inner):
                chat_tool = _function_tool(function, f"{path}.tools[{at}]", names, namespace)
                out.append(chat_tool)
                namespaces[chat_tool["function"]["name"]] = namespace
            continue
        if kind != "function":
            _fail(f"{path}.type", "must be 'function' or 'namespace': this gateway runs no tools")
        out.append(_function_tool(tool, path, names, None))
    return out, namespaces


def _function_tool(tool: Any, path: str, names: set[str], namespace: str | None) -> dict[str, Any]:
    if not isinstance(tool, dict):
        _fail(path, "must be an object")
    if namespace is not None and tool.get("type") != "function":
        _fail(f"{path}.type", "must be 'function': this gateway runs no built-in tools")
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        _fail(f"{path}.name", "must be a non-empty string")
    if namespace is not None:
        name = qualified(namespace, name)
    if name in names:
        _fail(f"{path}.name", "repeats the name of an earlier tool")
    names.add(name)
    function: dict[str, Any] = {"name": name}
    if (description := _optional(tool, "description", str, "a string")) is not None:
        function["description"] = description
    parameters = tool.get("parameters")
    if parameters is not None:
        check_schema(parameters, f"{path}.parameters")
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def _tool_choice(choice: Any, names: set[str]) -> Any:
    if choice is None or choice in ("auto", "none"):
        return choice
    if choice == "required":
        if not names:
            _fail("tool_choice", "'required' needs tools")
        return choice
    if isinstance(choice, dict) and choice.get("type") in HOSTED_TOOLS:
        _fail("tool_choice.type", "names a built-in tool, and this gateway runs none")
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if isinstance(name, str) and isinstance(choice.get("namespace"), str):
            name = qualified(choice["namespace"], name)
        if not isinstance(name, str) or name not in names:
            _fail("tool_choice.name", "names no function in 'tools'")
        return {"type": "function", "function": {"name": name}}
    _fail("tool_choice", "must be 'auto', 'none', 'required' or {type: 'function', name}")


def _response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        _fail("text", "must be an object")
    fmt = text.get("format")
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_schema", "json_object"):
        _fail("text.format.type", "must be text, json_schema or json_object")
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        _fail("text.format.schema", "must be a JSON Schema object")
    check_schema(schema, "text.format.schema")
    name = fmt.get("name") if isinstance(fmt.get("name"), str) and fmt["name"] else "output"
    spec = {"name": name, "schema": schema}
    if isinstance(fmt.get("strict"), bool):
        spec["strict"] = fmt["strict"]
    return {"type": "json_schema", "json_schema": spec}


def to_chat_request(body: dict[str, Any]) -> ResponsesRequest:
    """A Responses body (already decoded by the validator) as a `ResponsesRequest`."""
    model = model_of(body)
    for key, problem in _STATEFUL.items():
        if body.get(key) is not None:
            _fail(key, problem)
    if body.get("background") is True:
        _fail("background", "background responses need storage, which this gateway keeps none of")
    stream = _optional(body, "stream", bool, "a boolean")
    store = _optional(body, "store", bool, "a boolean")
    parallel = _optional(body, "parallel_tool_calls", bool, "a boolean")
    for key in ("prompt_cache_key", "user", "safety_identifier"):
        _optional(body, key, str, "a string")
    if body.get("reasoning") is not None and not isinstance(body["reasoning"], dict):
        _fail("reasoning", "must be an object")  # accepted and ignored: no reasoning budget here
    metadata = body.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        _fail("metadata", "must be an object of string values")
    chat: dict[str, Any] = {"model": model, "messages": _conversation(body), "stream": bool(stream)}
    if stream:
        chat["stream_options"] = {"include_usage": True}
    if (max_tokens := _number(body, "max_output_tokens", 1, _INT32, True)) is not None:
        chat["max_tokens"] = max_tokens
    for key, high in (("temperature", 2), ("top_p", 1)):
        if (value := _number(body, key, 0, high, False)) is not None:
            chat[key] = value
    tools, namespaces = _tools(body.get("tools"))
    choice = _tool_choice(body.get("tool_choice"), {t["function"]["name"] for t in tools})
    if tools and choice != "none":  # "none" with tools: plain chat, as it reads the same
        chat["tools"] = tools
        if choice is not None:
            chat["tool_choice"] = choice
        if parallel is not None:
            chat["parallel_tool_calls"] = parallel
    if (fmt := _response_format(body.get("text"))) is not None:
        chat["response_format"] = fmt
    echo = {
        "instructions": body.get("instructions"),
        "max_output_tokens": chat.get("max_tokens"),
        "metadata": metadata or {},
        "parallel_tool_calls": True if parallel is None else parallel,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": True if store is None else store,
        "temperature": chat.get("temperature", 1.0),
        "text": {"format": _text_format(body.get("text"))},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": [{**tool, "strict": tool.get("strict", True)} for tool in body.get("tools") or []],
        "top_p": chat.get("top_p", 1.0),
        "user": body.get("user"),
    }
    hints = RoutingHints(body.get("prompt_cache_key"), body.get("user"))
    return ResponsesRequest(model=model, chat=chat, echo=echo, hints=hints, namespaces=namespaces)


def _text_format(text: Any) -> dict[str, Any]:
    fmt = text.get("format") if isinstance(text, dict) else None
    return dict(fmt) if isinstance(fmt, dict) else {"type": "text"}
