"""OpenAI request bodies: field checks for the three inference routes, and a prompt-size floor.

`check_request(body, endpoint)` refuses what a neuron could not serve or would choke on — wrong
types, numbers out of range, empty prompts, malformed messages, tools, tool_choice,
response_format and JSON schemas — with `InvalidRequest` naming the field as `param`
(``messages[2].content``). Fields it does not know pass through untouched: a neuron may honour
more than OpenAI defines. `min_prompt_tokens(body)` is a floor under the prompt's length in
tokens, so that a prompt which cannot fit a model's context is refused before anything loads.

Invariants: pure (no I/O, no logging); raises only `InvalidRequest`; never echoes a string from
the body (it may be a prompt). Bodies reach it decoded by `cortex.api.validation` (well-formed
text, bounded depth), so the checks here are about shape and range.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from cortex.dialects.schema import check_schema
from cortex.errors import InvalidRequest

ENDPOINTS = ("chat", "completions", "embeddings")
MAX_MODEL_ID = 256
# No tokenizer we serve averages more than 32 bytes per token over a prompt: its longest tokens
# are runs of spaces or punctuation of up to ~31 bytes, and ordinary text is 3-5 bytes a token.
# A prompt of more than n_ctx × 32 bytes therefore cannot fit, whatever the model; anything
# shorter is left to the neuron's real tokenizer.
MAX_BYTES_PER_TOKEN = 32
_INT32 = 2**31 - 1
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_TOOL_CHOICES = frozenset({"none", "auto", "required"})
_FORMATS = frozenset({"text", "json_object", "json_schema"})
# (key, low, high, integer) for every numeric field checked, on every endpoint.
_NUMBERS = (
    ("max_tokens", 1, _INT32, True),
    ("max_completion_tokens", 1, _INT32, True),
    ("n", 1, 128, True),
    ("best_of", 1, 128, True),
    ("temperature", 0, 2, False),
    ("top_p", 0, 1, False),
    ("min_p", 0, 1, False),
    ("typical_p", 0, 1, False),
    ("top_k", 0, _INT32, True),
    ("frequency_penalty", -2, 2, False),
    ("presence_penalty", -2, 2, False),
    ("repeat_penalty", 0, 100, False),
    ("seed", -(2**63), 2**64 - 1, True),
    ("top_logprobs", 0, 20, True),
    ("dimensions", 1, 65536, True),
)
_BOOLS = ("stream", "echo", "parallel_tool_calls")
_STRINGS = ("user", "suffix")


def _fail(param: str, problem: str) -> NoReturn:
    raise InvalidRequest(f"'{param}' {problem}", param=param)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def model_of(body: dict[str, Any]) -> str:
    """The requested model name, refused unless it is a non-empty string of sane length."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        _fail("model", "is required and must be a non-empty string")
    if len(model) > MAX_MODEL_ID:
        _fail("model", f"must be at most {MAX_MODEL_ID} characters")
    return model


def check_request(body: dict[str, Any], endpoint: str) -> None:
    """Refuse a body for /v1/chat/completions ("chat"), /v1/completions or /v1/embeddings."""
    model_of(body)
    for key, low, high, integer in _NUMBERS:
        _number(body, key, low, high, integer)
    for key in _BOOLS:
        if body.get(key) is not None and not isinstance(body[key], bool):
            _fail(key, "must be a boolean")
    for key in _STRINGS:
        if body.get(key) is not None and not isinstance(body[key], str):
            _fail(key, "must be a string")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            _fail("stream_options", "must be an object")
        if options.get("include_usage") is not None and not isinstance(
            options["include_usage"], bool
        ):
            _fail("stream_options.include_usage", "must be a boolean")
    _stop(body.get("stop"))
    _logit_bias(body.get("logit_bias"))
    _logprobs(body.get("logprobs"), endpoint)
    if endpoint == "chat":
        _messages(body.get("messages"))
        tools = _tools(body.get("tools"), "tools")
        _tools(body.get("functions"), "functions")
        _tool_choice(body.get("tool_choice"), tools)
    elif endpoint == "completions":
        _prompt(body.get("prompt"), "prompt")
    else:
        _prompt(body.get("input"), "input")
        if body.get("encoding_format") not in (None, "float", "base64"):
            _fail("encoding_format", "must be 'float' or 'base64'")
    _response_format(body.get("response_format"))


def _number(body: dict[str, Any], key: str, low: float, high: float, integer: bool) -> None:
    value = body.get(key)
    if value is None:
        return
    if integer and not _is_int(value):
        _fail(key, "must be an integer")
    if not integer and (isinstance(value, bool) or not isinstance(value, int | float)):
        _fail(key, "must be a number")
    if not low <= value <= high:  # also refuses NaN
        _fail(key, f"must be between {low:g} and {high:g}")


def _stop(stop: Any) -> None:
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        _fail("stop", "must be a string or an array of strings")


def _logit_bias(bias: Any) -> None:
    if bias is None:
        return
    if not isinstance(bias, dict):
        _fail("logit_bias", "must be an object of token id → bias")
    for value in bias.values():
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail("logit_bias", "values must be numbers")
        if not -100 <= value <= 100:
            _fail("logit_bias", "values must be between -100 and 100")


def _logprobs(logprobs: Any, endpoint: str) -> None:
    if logprobs is None:
        return
    if endpoint == "chat" and not isinstance(logprobs, bool):
        _fail("logprobs", "must be a boolean")
    if endpoint != "chat" and (not _is_int(logprobs) or not 0 <= logprobs <= 20):
        _fail("logprobs", "must be an integer between 0 and 20")


def _messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        _fail("messages", "must be a non-empty array of message objects")
    for index, message in enumerate(messages):
        path = f"messages[{index}]"
        if not isinstance(message, dict):
            _fail(path, "must be an object")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            _fail(f"{path}.role", "must be one of " + ", ".join(sorted(_ROLES)))
        _content(message.get("content"), f"{path}.content")
        for key in ("name", "tool_call_id"):
            if message.get(key) is not None and not isinstance(message[key], str):
                _fail(f"{path}.{key}", "must be a string")
        calls = message.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                _fail(f"{path}.tool_calls", "must be an array")
            for number, call in enumerate(calls):
                where = f"{path}.tool_calls[{number}]"
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    _fail(f"{where}.function", "must be an object with a string 'name'")
                if not isinstance(function.get("arguments", ""), str):
                    _fail(f"{where}.function.arguments", "must be a string (JSON text)")


def _content(content: Any, path: str) -> None:
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        _fail(path, "must be a string or an array of content parts")
    for index, part in enumerate(content):
        where = f"{path}[{index}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            _fail(where, "must be an object with a string 'type'")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            _fail(f"{where}.text", "must be a string")
        if part["type"] == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                _fail(f"{where}.image_url", "must be a URL or an object with a 'url'")


def _prompt(prompt: Any, key: str) -> None:
    """A string, an array of strings, of token ids, or of arrays of token ids; never empty."""
    items = prompt if isinstance(prompt, list) else [prompt]
    if not items or prompt == "":
        _fail(key, "must not be empty")
    if all(isinstance(item, str) and item for item in items):
        return
    tokens = items if all(_is_int(item) for item in items) else None
    if tokens is None and all(isinstance(item, list) and item for item in items):
        tokens = [token for item in items for token in item]
    if tokens is None or not all(_is_int(t) and 0 <= t <= _INT32 for t in tokens):
        _fail(key, "must be a non-empty string, array of strings, or array(s) of token ids")


def _tools(tools: Any, key: str) -> set[str]:
    """Refuse malformed tools (or legacy `functions`); return their names."""
    if tools is None:
        return set()
    if not isinstance(tools, list):
        _fail(key, "must be an array")
    names = set()
    for index, tool in enumerate(tools):
        path = f"{key}[{index}]"
        if not isinstance(tool, dict):
            _fail(path, "must be an object")
        if key == "tools":
            if tool.get("type", "function") != "function":
                _fail(f"{path}.type", "must be 'function'")
            tool, path = tool.get("function"), f"{path}.function"
            if not isinstance(tool, dict):
                _fail(path, "must be an object")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            _fail(f"{path}.name", "must be a non-empty string")
        names.add(name)
        if tool.get("description") is not None and not isinstance(tool["description"], str):
            _fail(f"{path}.description", "must be a string")
        if tool.get("parameters") is not None:
            check_schema(tool["parameters"], f"{path}.parameters")
    return names


def _tool_choice(choice: Any, tools: set[str]) -> None:
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            _fail("tool_choice", "must be 'none', 'auto', 'required' or a named function")
        if choice == "required" and not tools:
            _fail("tool_choice", "'required' needs tools")
        return
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        _fail("tool_choice", "must be 'none', 'auto', 'required' or a named function")
    if name not in tools:
        _fail("tool_choice.function.name", "names no tool in 'tools'")


def _response_format(fmt: Any) -> None:
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") not in _FORMATS:
        _fail("response_format", "must be an object whose type is text, json_object or json_schema")
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            _fail("response_format.json_schema", "must be an object")
        if spec.get("schema") is not None:
            check_schema(spec["schema"], "response_format.json_schema.schema")
    elif fmt["type"] == "json_object" and fmt.get("schema") is not None:
        check_schema(fmt["schema"], "response_format.schema")


def min_prompt_tokens(body: dict[str, Any]) -> int:
    """A floor under the prompt's token count (text bytes / MAX_BYTES_PER_TOKEN, plus token ids
    given as such). A list of prompts or inputs is a batch: the longest item counts."""
    text = 0
    for message in body.get("messages") or ():
        content = message.get("content")
        if isinstance(content, str):
            text += _bytes(content)
        elif isinstance(content, list):
            text += sum(_bytes(part.get("text")) for part in content)
        for call in message.get("tool_calls") or ():
            text += _bytes(call["function"].get("arguments"))
    if body.get("tools"):
        text += _bytes(json.dumps(body["tools"], ensure_ascii=False))
    floor = _tokens_at_least(text)
    for key in ("prompt", "input"):
        value = body.get(key)
        items = value if isinstance(value, list) and value and not _is_int(value[0]) else [value]
        for item in items:
            if isinstance(item, str):
                floor = max(floor, _tokens_at_least(_bytes(item)))
            elif isinstance(item, list):
                floor = max(floor, len(item))
    return floor


def _tokens_at_least(size: int) -> int:
    return -(-size // MAX_BYTES_PER_TOKEN)  # rounded up: more than n_ctx × 32 bytes > n_ctx


def _bytes(text: Any) -> int:
    return len(text.encode("utf-8")) if isinstance(text, str) else 0


def system_reminder(text: str) -> str:
    """A system message that is not the first one, as user-turn text every template accepts.

    Many chat templates refuse a system message after the first turn (or move it to the front,
    which changes the prompt's prefix and so defeats the neuron's prefix cache). Claude Code
    marks its own in-conversation instructions this way, so models trained on it know it."""
    return f"<system-reminder>\n{text}\n</system-reminder>"


def with_model_defaults(
    body: dict[str, Any], cap: int | None, temperature: float | None
) -> dict[str, Any]:
    """`body` (chat or completions) under a catalogue entry's settings: at most `cap` output
    tokens (the client's own limit when lower; `max_output_tokens`), and `temperature` when the
    client sent none. The body itself is returned when nothing changes, so that its bytes can
    be forwarded as they came."""
    changes: dict[str, Any] = {}
    if cap is not None:
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        asked = body.get(key)
        if not (isinstance(asked, int) and not isinstance(asked, bool) and 0 < asked <= cap):
            changes[key] = cap
    if temperature is not None and body.get("temperature") is None:
        changes["temperature"] = temperature
    return {**body, **changes} if changes else body
