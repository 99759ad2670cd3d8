"""Anthropic Messages API ⇄ OpenAI Chat Completions, both directions.

Neurons speak OpenAI only; this module is how cortex speaks Anthropic. It turns a
`/v1/messages` (or `/v1/messages/count_tokens`) body into an OpenAI chat body, and an OpenAI
response — whole, or as `chat.completion.chunk`s — back into an Anthropic message or its SSE
events.

Invariants:
* Pure: no I/O, no clock, no logging, no randomness. Ids come from the caller (`message_id`, and
  a `tool_id` factory called once per generated tool-use id).
* Request translation raises only `AnthropicRequestError`, whose message names the field the
  way Anthropic does (``messages.1.content.0.tool_use_id: ...``); never KeyError/TypeError.
  Fields Anthropic knows but a local engine cannot honour (`metadata`, `thinking`,
  `service_tier`, `container`, `cache_control`, …) and unknown top-level fields are ignored,
  so newer clients keep working; Anthropic itself would reject unknown ones.
* Streams follow Anthropic's grammar exactly: one `message_start`; then blocks with indexes
  0, 1, 2… each `content_block_start` → `content_block_delta`* → `content_block_stop`, never
  two open at once; then one `message_delta` and `message_stop`. After `error` nothing follows.
* No text block is ever empty or whitespace-only (Anthropic rejects such blocks when a client
  sends the history back); leading whitespace is kept by prepending it to the first real text.
* Tool-use ids are ``toolu_`` + ``[A-Za-z0-9_-]+`` (what Anthropic accepts back) and unique
  within a message: the upstream id when it already is such and unused, else `tool_id()`
  prefixed ``toolu_`` unless it already is (so `tool_id` must return such characters).
* Response translation never raises on odd upstream output; it maps what it can.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

Event = tuple[str, dict[str, Any]]

# Separator for several text blocks that become one OpenAI string (system blocks, the text of
# one turn, tool_result text). A blank line keeps sections apart without merging tokens.
TEXT_JOIN = "\n\n"
# Prepended to a tool_result's text when `is_error` is set: OpenAI tool messages have no error
# flag, so the model must read it in the content.
TOOL_ERROR_PREFIX = "[tool error] "
# Claude Code ≥ 2.1.36 sends this as system[0] with a nonce that changes on every request; left
# in, it sits at the very start of the prompt and defeats the engine's prefix (KV) cache.
_BILLING_HEADER = "x-anthropic-billing-header:"
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})  # engine-specific, not replayable
_TOOL_ID = re.compile(r"[A-Za-z0-9_-]{1,256}")
_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_exceeded": "rate_limit_error",
    "rate_limit_error": "rate_limit_error",
    "service_unavailable": "overloaded_error",
    "overloaded_error": "overloaded_error",
}


class AnthropicRequestError(Exception):
    """A request body Anthropic's API would refuse; rendered as a 400 `invalid_request_error`."""

    type: str = "invalid_request_error"
    status: int = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def ping() -> Event:
    return ("ping", {"type": "ping"})


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def error_type_from_openai(openai_type: Any, code: Any = None) -> str:
    """The Anthropic error type for an OpenAI-style error `type` (or `code`); else api_error."""
    for key in (openai_type, code):
        if isinstance(key, str) and key in _ERROR_TYPES:
            return _ERROR_TYPES[key]
    return "api_error"


# -- request: Anthropic → OpenAI -----------------------------------------------------------------


def _fail(path: str, problem: str) -> NoReturn:
    raise AnthropicRequestError(f"{path}: {problem}")


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(path, "Input should be an object")
    return value


def _string(obj: dict[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        _fail(f"{path}.{key}", "Field required (a non-empty string)")
    return value


def _number(body: dict[str, Any], key: str, low: float, high: float | None, integer: bool) -> Any:
    value = body.get(key)
    if value is None:
        return None
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        _fail(key, f"Input should be a valid {'integer' if integer else 'number'}")
    if high is None and not low <= value:  # `not (a <= b)` also rejects NaN
        _fail(key, f"Input should be greater than or equal to {low:g}")
    if high is not None and not low <= value <= high:
        _fail(key, f"Input should be between {low:g} and {high:g}")
    return value


def _text_block(block: Any, path: str) -> str:
    block = _object(block, path)
    if block.get("type") != "text":
        _fail(f"{path}.type", "Input should be 'text'")
    text = block.get("text")
    if not isinstance(text, str):
        _fail(f"{path}.text", "Input should be a valid string")
    return text


def _image(block: dict[str, Any], path: str) -> dict[str, Any]:
    source = _object(block.get("source"), f"{path}.source")
    kind = source.get("type")
    if kind == "base64":
        media = source.get("media_type")
        if media not in _IMAGE_TYPES:
            _fail(f"{path}.source.media_type", "Input should be one of " + ", ".join(_IMAGE_TYPES))
        url = f"data:{media};base64,{_string(source, 'data', f'{path}.source')}"
    elif kind == "url":
        url = _string(source, "url", f"{path}.source")
    else:
        _fail(f"{path}.source.type", "Input should be 'base64' or 'url'")
    return {"type": "image_url", "image_url": {"url": url}}


def _blocks(content: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    """Message content as (path, block) pairs; a string is one text block."""
    if isinstance(content, str):
        return [(path, {"type": "text", "text": content})]
    if not isinstance(content, list):
        _fail(path, "Input should be a string or a list of content blocks")
    out = []
    for index, block in enumerate(content):
        block_path = f"{path}.{index}"
        block = _object(block, block_path)
        if not isinstance(block.get("type"), str):
            _fail(f"{block_path}.type", "Field required")
        out.append((block_path, block))
    return out


def _joined(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """OpenAI content: one string when every part is text (what every chat template takes)."""
    if all(part["type"] == "text" for part in parts):
        return TEXT_JOIN.join(part["text"] for part in parts)
    return parts


def _tool_result(block: dict[str, Any], path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The OpenAI tool message for a tool_result, and the images it held (tool messages take
    text only, so the caller moves them into the user message that follows)."""
    tool_use_id = _string(block, "tool_use_id", path)
    content = block.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for index, item in enumerate(content):
            item_path = f"{path}.content.{index}"
            kind = _object(item, item_path).get("type")
            if kind == "image":
                images.append(_image(item, item_path))
            elif kind == "text":
                texts.append(_text_block(item, item_path))
            else:
                _fail(f"{item_path}.type", f"unsupported tool_result content type {kind!r}")
    elif content is not None:
        _fail(f"{path}.content", "Input should be a string or a list of content blocks")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        _fail(f"{path}.is_error", "Input should be a valid boolean")
    text = TEXT_JOIN.join(t for t in texts if t)
    if is_error:
        text = TOOL_ERROR_PREFIX + text
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}, images


def _user_turn(blocks: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    # OpenAI wants tool results right after the assistant message that called them, so they
    # come first (in order) and the rest of the turn follows as one user message.
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for path, block in blocks:
        kind = block["type"]
        if kind == "tool_result":
            message, images = _tool_result(block, path)
            tool_messages.append(message)
            parts.extend(images)
        elif kind == "text":
            if text := _text_block(block, path):
                parts.append({"type": "text", "text": text})
        elif kind == "image":
            parts.append(_image(block, path))
        elif kind == "tool_use":
            _fail(f"{path}.type", "tool_use blocks are only allowed in assistant turns")
        elif kind not in _DROPPED_BLOCKS:
            _fail(f"{path}.type", f"unsupported content block type {kind!r}")
    if parts or not tool_messages:
        tool_messages.append({"role": "user", "content": _joined(parts)})
    return tool_messages


def _assistant_turn(blocks: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for path, block in blocks:
        kind = block["type"]
        if kind == "text":
            if text := _text_block(block, path):
                texts.append(text)
        elif kind == "tool_use":
            tool_input = block.get("input")
            if not isinstance(tool_input, dict):
                _fail(f"{path}.input", "Input should be a valid dictionary")
            function = {
                "name": _string(block, "name", path),
                "arguments": json.dumps(tool_input, ensure_ascii=False),
            }
            calls.append(
                {"id": _string(block, "id", path), "type": "function", "function": function}
            )
        elif kind == "tool_result":
            _fail(f"{path}.type", "tool_result blocks are only allowed in user turns")
        elif kind not in _DROPPED_BLOCKS:
            _fail(f"{path}.type", f"unsupported content block type {kind!r} in an assistant turn")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": TEXT_JOIN.join(texts) if texts else (None if calls else ""),
    }
    if calls:
        message["tool_calls"] = calls
    return [message]


def _system_turn(blocks: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    texts = [text for path, block in blocks if (text := _text_block(block, path))]
    return [{"role": "system", "content": TEXT_JOIN.join(texts)}] if texts else []


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    if isinstance(system, str):
        texts = [system]
    elif isinstance(system, list):
        texts = [_text_block(block, f"system.{i}") for i, block in enumerate(system)]
        texts = [text for text in texts if not text.startswith(_BILLING_HEADER)]
    else:
        _fail("system", "Input should be a string or a list of text blocks")
    text = TEXT_JOIN.join(text for text in texts if text)
    return [{"role": "system", "content": text}] if text else []


_TURNS = {"user": _user_turn, "assistant": _assistant_turn, "system": _system_turn}


def _messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        _fail("messages", "Field required")
    if not isinstance(messages, list):
        _fail("messages", "Input should be a valid list")
    if not messages:
        _fail("messages", "at least one message is required")
    # Anthropic combines consecutive turns of one role; so do we, which also keeps chat
    # templates that insist on strict alternation (Gemma, Mistral) working.
    turns: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = []
    for index, message in enumerate(messages):
        path = f"messages.{index}"
        role = _object(message, path).get("role")
        if not isinstance(role, str) or role not in _TURNS:
            _fail(f"{path}.role", "Input should be 'user' or 'assistant'")
        if "content" not in message:
            _fail(f"{path}.content", "Field required")
        blocks = _blocks(message["content"], f"{path}.content")
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    return [out for role, blocks in turns for out in _TURNS[role](blocks)]


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
    return count_tokens_request(body)["messages"]


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


# -- response: OpenAI → Anthropic ----------------------------------------------------------------


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
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):  # some servers answer with content parts
        parts = [part.get("text") for part in text if isinstance(part, dict)]
        text = "".join(part for part in parts if isinstance(part, str))
    if isinstance(text, str) and text.strip():
        content.append({"type": "text", "text": text})
    ids = _ToolIds(tool_id)
    for call in _tool_call_list(message):
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        name = function.get("name")
        if isinstance(name, str) and name:
            block = {"type": "tool_use", "id": ids.assign(call.get("id")), "name": name}
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


# -- stream: OpenAI chunks → Anthropic events ----------------------------------------------------


@dataclass
class _ToolCall:
    id: str | None = None
    name: str | None = None
    pending: list[str] = field(default_factory=list)  # argument pieces not yet sent
    block: int | None = None  # content block index once opened


class StreamTranslator:
    """One streamed response: OpenAI chunks in, Anthropic SSE events (name, data) out.

    Text streams live. The first tool call streams its arguments live too; further tool calls
    are held until the choice finishes, because OpenAI may interleave pieces of several calls
    by `index` while Anthropic allows one open block at a time. Text arriving after a tool call
    is held likewise and becomes a text block after the tool blocks. Content blocks close on
    the upstream finish_reason; `message_delta` waits for `finish()` so that a usage-only
    final chunk is still counted. `reasoning_content` is not relayed (never as text).

    Tool arguments are relayed verbatim, so invalid JSON from a model reaches the client as
    such (the SDK then raises), where `to_anthropic_response` substitutes {}: a stream cannot
    take back what it sent, and buffering every call would stall long inputs (file writes)."""

    def __init__(
        self,
        *,
        model: str,
        message_id: str,
        tool_id: Callable[[], str],
        input_tokens: int | None = None,
        stop_sequences: Sequence[str] = (),
    ) -> None:
        self._model = model
        self._message_id = message_id
        self._ids = _ToolIds(tool_id)
        self._stop_sequences = tuple(stop_sequences)
        self._input_tokens = input_tokens
        self._cached_tokens: int | None = None
        self._output_tokens = 0
        self._started = False
        self._content_done = False
        self._ended = False
        self._blocks = 0
        self._text_block: int | None = None
        self._leading = ""  # whitespace held until real text arrives
        self._trailing: list[str] = []  # text after a tool call
        self._tools: dict[int, _ToolCall] = {}
        self._active: _ToolCall | None = None
        self._finish_reason: Any = None
        self._matched_stop: Any = None

    def start(self) -> list[Event]:
        """The message_start, once; it may come before any chunk (e.g. during a cold load)."""
        if self._started or self._ended:
            return []
        self._started = True
        message = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self._input_tokens or 0,
                "output_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": self._cached_tokens or 0,
            },
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        if self._ended or not isinstance(chunk, dict):
            return []
        if isinstance(chunk.get("error"), dict):  # an upstream error sent as a data line
            error = chunk["error"]
            message = error.get("message")
            return self.error(
                error_type_from_openai(error.get("type"), error.get("code")),
                message if isinstance(message, str) and message else "upstream error",
            )
        self._read_usage(chunk.get("usage"))
        events = self.start()
        choice = _first_choice(chunk)
        if not choice or self._content_done:
            return events
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        if isinstance(delta.get("content"), str):
            events += self._text(delta["content"])
        for position, piece in enumerate(_tool_call_list(delta)):
            events += self._tool_piece(piece, position)
        if choice.get("finish_reason") is not None:
            self._finish_reason = choice["finish_reason"]
            self._matched_stop = choice.get("stop_reason")
            events += self._close_content()
        return events

    def error(self, error_type: str, message: str) -> list[Event]:
        """The upstream failed mid-stream: an `error` event and nothing after it.

        Open blocks are deliberately left open, as Anthropic does: a `content_block_stop` would
        present a truncated tool_use as complete to clients that act on block stops, while SDKs
        raise on the error event regardless."""
        if self._ended:
            return []
        self._ended = True
        return [("error", error_body(error_type, message))]

    def finish(self) -> list[Event]:
        """Close what is open, then message_delta and message_stop. Idempotent."""
        if self._ended:
            return []
        events = self.start() + self._close_content()
        self._ended = True
        stop_reason, stop_sequence = _stop_reason(
            self._finish_reason,
            self._matched_stop,
            any(call.block is not None for call in self._tools.values()),
            self._stop_sequences,
        )
        usage: dict[str, int] = {"output_tokens": self._output_tokens}
        if self._input_tokens is not None:  # cumulative totals; overwrite message_start's
            usage["input_tokens"] = self._input_tokens
        if self._cached_tokens is not None:
            usage["cache_read_input_tokens"] = self._cached_tokens
        delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
        events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    # -- internals --

    def _read_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        counted = _usage(usage)
        if isinstance(usage.get("prompt_tokens"), int):
            self._input_tokens = counted["input_tokens"]
            self._cached_tokens = counted["cache_read_input_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            self._output_tokens = counted["output_tokens"]

    def _open(self, content_block: dict[str, Any]) -> tuple[int, Event]:
        index = self._blocks
        self._blocks += 1
        data = {"type": "content_block_start", "index": index, "content_block": content_block}
        return index, ("content_block_start", data)

    @staticmethod
    def _delta(index: int, delta: dict[str, Any]) -> Event:
        return (
            "content_block_delta",
            {"type": "content_block_delta", "index": index, "delta": delta},
        )

    @staticmethod
    def _stop(index: int) -> Event:
        return ("content_block_stop", {"type": "content_block_stop", "index": index})

    def _text(self, text: str) -> list[Event]:
        if not text:
            return []
        if self._tools:
            self._trailing.append(text)
            return []
        events: list[Event] = []
        if self._text_block is None:
            self._leading += text
            if not self._leading.strip():
                return []
            text, self._leading = self._leading, ""
            self._text_block, start = self._open({"type": "text", "text": ""})
            events.append(start)
        events.append(self._delta(self._text_block, {"type": "text_delta", "text": text}))
        return events

    def _close_text(self) -> list[Event]:
        self._leading = ""  # whitespace that never led to text is dropped
        if self._text_block is None:
            return []
        index, self._text_block = self._text_block, None
        return [self._stop(index)]

    def _tool_piece(self, piece: dict[str, Any], position: int) -> list[Event]:
        index = piece.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = position
        call = self._tools.setdefault(index, _ToolCall())
        # Engines repeat id and name in later pieces (llama-cpp-python) or send name None:
        # the first non-empty value wins.
        if call.id is None and isinstance(piece.get("id"), str) and piece["id"]:
            call.id = piece["id"]
        function = piece.get("function") if isinstance(piece.get("function"), dict) else {}
        name = function.get("name")
        if call.name is None and isinstance(name, str) and name:
            call.name = name
        arguments = function.get("arguments")
        events: list[Event] = []
        if isinstance(arguments, str) and arguments:
            if call is self._active:
                assert call.block is not None
                events.append(self._json_delta(call.block, arguments))
            else:
                call.pending.append(arguments)
        if self._active is None and call.name is not None:
            self._active = call
            events += self._close_text() + self._open_tool(call)
        return events

    def _json_delta(self, index: int, partial: str) -> Event:
        return self._delta(index, {"type": "input_json_delta", "partial_json": partial})

    def _open_tool(self, call: _ToolCall) -> list[Event]:
        block = {
            "type": "tool_use",
            "id": self._ids.assign(call.id),
            "name": call.name,
            "input": {},
        }
        call.block, start = self._open(block)
        events = [start]
        if call.pending:
            events.append(self._json_delta(call.block, "".join(call.pending)))
            call.pending = []
        return events

    def _close_content(self) -> list[Event]:
        if self._content_done:
            return []
        self._content_done = True
        events = self._close_text()
        if self._active is not None and self._active.block is not None:
            events.append(self._stop(self._active.block))
        for index in sorted(self._tools):
            call = self._tools[index]
            if call.block is None and call.name is not None:  # nameless calls cannot be used
                events += self._open_tool(call)
                assert call.block is not None
                events.append(self._stop(call.block))
        trailing = "".join(self._trailing)
        if trailing.strip():
            index, start = self._open({"type": "text", "text": ""})
            events += [start, self._delta(index, {"type": "text_delta", "text": trailing})]
            events.append(self._stop(index))
        return events
