"""Validation of OpenAI request bodies into the engine's terms (`Sampling`, stops, limits).

Pure: no sanic, no llama_cpp. Every problem is an `InvalidRequest` naming the offending `param`
so that a client sees exactly which field to fix. Fields that OpenAI clients commonly send but
that a local engine has no use for (`user`, `service_tier`, `store`, `metadata`, …) are ignored;
fields whose meaning cannot be honoured (`n` > 1, `best_of`, `dimensions`) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from neuron.engine.types import Sampling
from neuron.errors import InvalidRequest

_ROLES = {"system", "developer", "user", "assistant", "tool"}


@dataclass(frozen=True)
class GenerationRequest:
    """A validated chat or completion request, in the engine's terms."""

    model: str
    stream: bool
    include_usage: bool
    sampling: Sampling
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: off; k: the chosen token's plus the top k
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompt: str = ""
    echo: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_schema: dict[str, Any] | None = None  # response_format's JSON schema


@dataclass(frozen=True)
class EmbeddingRequest:
    """A validated /v1/embeddings body: the model id, the inputs as non-empty strings (a single
    string becomes a list of one), and `encoding_format` ``float`` or ``base64``."""

    model: str
    inputs: list[str]
    encoding_format: str


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def _get(body: dict[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds:
        raise InvalidRequest(f"'{name}' must be {what}", param=name)
    if not isinstance(value, kinds):
        raise InvalidRequest(f"'{name}' must be {what}, got {type(value).__name__}", param=name)
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value: float | None = _get(body, name, (int, float), "a number")
    if value is not None and not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low:g} and {high:g}", param=name)
    return value


def _integer(body: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value: int | None = _get(body, name, (int,), "an integer")
    if value is not None and (value < low or (high is not None and value > high)):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise InvalidRequest(f"'{name}' must be {bound}", param=name)
    return value


def model_name(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string", param="model")
    return model


def _max_tokens(body: dict[str, Any]) -> int | None:
    if (n := _integer(body, "n", 1)) is not None and n != 1:
        raise InvalidRequest("only n=1 is supported", param="n")
    max_tokens = _integer(body, "max_completion_tokens", 1)
    return max_tokens if max_tokens is not None else _integer(body, "max_tokens", 1)


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidRequest("'stop' must be a string or a list of strings", param="stop")
    return tuple(stop)


def _logit_bias(body: dict[str, Any]) -> dict[int, float]:
    bias = _get(body, "logit_bias", (dict,), "an object of token ids to numbers") or {}
    out = {}
    for key, value in bias.items():
        if not (isinstance(key, str) and key.isdigit()) or isinstance(value, bool):
            raise InvalidRequest("logit_bias keys must be token ids", param="logit_bias")
        if not isinstance(value, int | float) or not -100 <= value <= 100:
            raise InvalidRequest(
                "logit_bias values must be between -100 and 100", param="logit_bias"
            )
        out[int(key)] = float(value)
    return out


def _sampling(body: dict[str, Any]) -> Sampling:
    """Sampler settings; absent fields take OpenAI's defaults (temperature 1, top_p 1)."""
    seed = _get(body, "seed", (int,), "an integer")
    options = {
        "temperature": _number(body, "temperature", 0, 2),
        "top_p": _number(body, "top_p", 0, 1),
        "top_k": _integer(body, "top_k", 0, 1_000_000),
        "min_p": _number(body, "min_p", 0, 1),
        "seed": seed,
        "presence_penalty": _number(body, "presence_penalty", -2, 2),
        "frequency_penalty": _number(body, "frequency_penalty", -2, 2),
        "repeat_penalty": _number(body, "repeat_penalty", 0.01, 10),
        "logit_bias": _logit_bias(body) or None,
    }
    return Sampling(**{key: value for key, value in options.items() if value is not None})


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = bool(_get(body, "stream", (bool,), "a boolean"))
    options = _get(body, "stream_options", (dict,), "an object") or {}
    include_usage = bool(_get(options, "include_usage", (bool,), "a boolean"))
    return stream, include_usage


def _text_content(content: Any, index: int) -> str | None:
    """Message content as text: a string, or a list of text parts joined."""
    if content is None or isinstance(content, str):
        return content
    param = f"messages[{index}].content"
    if not isinstance(content, list):
        raise InvalidRequest("message content must be a string or a list of parts", param=param)
    texts = []
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest("content parts must be objects with a 'type'", param=param)
        if part["type"] == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif part["type"] in {"image_url", "input_image", "input_audio", "file"}:
            raise InvalidRequest(
                f"this model takes text only; '{part['type']}' content is not supported",
                param=param,
                code="unsupported_content",
            )
        else:
            raise InvalidRequest(f"unsupported content part type '{part['type']}'", param=param)
    return "".join(texts)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list", param="messages")
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest("each message must be an object", param=f"messages[{index}]")
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidRequest(
                f"message role must be one of {sorted(_ROLES)}", param=f"messages[{index}].role"
            )
        clean: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": _text_content(message.get("content"), index),
        }
        if role == "assistant" and message.get("tool_calls") is not None:
            if not isinstance(message["tool_calls"], list):
                raise InvalidRequest(
                    "'tool_calls' must be a list", param=f"messages[{index}].tool_calls"
                )
            clean["tool_calls"] = message["tool_calls"]
        elif clean["content"] is None:
            raise InvalidRequest("message content is required", param=f"messages[{index}].content")
        if role == "tool":
            clean["tool_call_id"] = message.get("tool_call_id")
        if isinstance(message.get("name"), str):
            clean["name"] = message["name"]
        out.append(clean)
    return out


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, Any]:
    tools = body.get("tools")
    if tools is None or tools == []:
        return None, None
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be a list", param="tools")
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
        ):
            raise InvalidRequest(
                "each tool must be {'type': 'function', 'function': {'name': ...}}",
                param=f"tools[{index}]",
            )
    choice = body.get("tool_choice", "auto")
    names = [tool["function"]["name"] for tool in tools]
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if choice.get("type") != "function" or name not in names:
            raise InvalidRequest(
                "tool_choice must name one of the given tools", param="tool_choice"
            )
    elif choice not in ("auto", "none", "required"):
        raise InvalidRequest(
            "tool_choice must be 'auto', 'none', 'required' or a function", param="tool_choice"
        )
    return tools, choice


def _response_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    response_format = _get(body, "response_format", (dict,), "an object")
    if not response_format or response_format.get("type") in (None, "text"):
        return None
    if response_format.get("type") == "json_object":
        return {"type": "object"}
    if response_format.get("type") != "json_schema":
        raise InvalidRequest("unsupported response_format type", param="response_format")
    schema = (response_format.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest("json_schema.schema must be an object", param="response_format")
    return schema


def chat_request(body: Any) -> GenerationRequest:
    body = require_object(body)
    model = model_name(body)
    stream, include_usage = _stream_flags(body)
    logprobs = None
    if _get(body, "logprobs", (bool,), "a boolean"):
        logprobs = _integer(body, "top_logprobs", 0, 20) or 0
    tools, tool_choice = _tools(body)
    return GenerationRequest(
        model=model,
        stream=stream,
        include_usage=include_usage,
        sampling=_sampling(body),
        max_tokens=_max_tokens(body),
        stop=_stop(body),
        logprobs=logprobs,
        messages=_messages(body),
        tools=tools,
        tool_choice=tool_choice,
        response_schema=_response_schema(body),
    )


def completion_request(body: Any) -> GenerationRequest:
    body = require_object(body)
    model = model_name(body)
    stream, include_usage = _stream_flags(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequest(
            "'prompt' must be a string (batches are not supported)", param="prompt"
        )
    if body.get("best_of") not in (None, 1):
        raise InvalidRequest("best_of is not supported", param="best_of")
    if body.get("suffix"):
        raise InvalidRequest("'suffix' (fill-in-the-middle) is not supported", param="suffix")
    return GenerationRequest(
        model=model,
        stream=stream,
        include_usage=include_usage,
        sampling=_sampling(body),
        max_tokens=_max_tokens(body),
        stop=_stop(body),
        logprobs=_integer(body, "logprobs", 0, 5),
        prompt=prompt,
        echo=bool(_get(body, "echo", (bool,), "a boolean")),
        response_schema=_response_schema(body),
    )


def embedding_request(body: Any) -> EmbeddingRequest:
    body = require_object(body)
    model = model_name(body)
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(inputs, list)
        or not inputs
        or not all(isinstance(item, str) and item for item in inputs)
    ):
        raise InvalidRequest(
            "'input' must be a non-empty string or a list of non-empty strings", param="input"
        )
    if body.get("dimensions") is not None:
        raise InvalidRequest("'dimensions' is not supported by this model", param="dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise InvalidRequest(
            "'encoding_format' must be 'float' or 'base64'", param="encoding_format"
        )
    return EmbeddingRequest(model=model, inputs=inputs, encoding_format=encoding)
