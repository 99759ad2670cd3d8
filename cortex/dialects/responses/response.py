"""The Response object, its output items and usage; a whole chat.completion → a Response.

`response_object` builds the object every Responses answer and lifecycle event carries (the
request's echo fields, status, output, usage, error); `to_response` maps one non-streaming chat
answer; `message_item`, `function_call_item` and `usage_of` are shared with `stream`.

Invariants:
* Pure: no I/O, no clock, no randomness; ids and `created_at` come from the caller.
* Never raises on odd upstream output: a non-object answer is an empty one, a nameless tool call
  is dropped, a count that is not a positive integer is 0.
* `status` is "incomplete" with `incomplete_details.reason = "max_output_tokens"` exactly when
  the upstream finish_reason is "length"; otherwise "completed".
* Usage follows OpenAI: `input_tokens` includes cached tokens (`input_tokens_details.
  cached_tokens`), `total_tokens` = input + output, reasoning tokens are 0 (none are produced).
* Function-call ids: `call_id` is the upstream tool-call id when it is a non-empty string unused
  in this response, else `new_id("call")`; item ids are always `new_id("fc")` / `new_id("msg")`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

NewId = Callable[[str], str]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_of(usage: Any) -> dict[str, Any]:
    """Chat usage as Responses usage."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = min(_count(details.get("cached_tokens")) if isinstance(details, dict) else 0, prompt)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """An assistant message item; `text` None gives one with no content part yet."""
    content = [] if text is None else [output_text_part(text)]
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def function_call_item(
    item_id: str,
    call_id: str,
    name: str,
    arguments: str,
    status: str,
    namespaces: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A function_call output item; a call of a namespace tool's function (chat name
    ``namespace.name``, see `ResponsesRequest.namespaces`) carries `name` and `namespace`."""
    item = {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
    namespace = (namespaces or {}).get(name)
    if namespace is not None:
        item["name"], item["namespace"] = name[len(namespace) + 1 :], namespace
    return item


class CallIds:
    """Hands out `call_id`s unique within one response: the upstream id when usable."""

    def __init__(self, new_id: NewId) -> None:
        self._new_id = new_id
        self._used: set[str] = set()

    def assign(self, upstream: Any) -> str:
        chosen = upstream if isinstance(upstream, str) and upstream else self._new_id("call")
        if chosen in self._used:
            chosen = self._new_id("call")
        self._used.add(chosen)
        return chosen


def response_object(
    echo: dict[str, Any],
    *,
    response_id: str,
    model: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Response object: `echo` (the request's fields, from `to_chat_request`) plus state."""
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": incomplete,
        "model": model,
        "output": list(output or []),
        "previous_response_id": None,
        "truncation": "disabled",
        "usage": usage,
        **echo,
    }


def _first_choice(response: dict[str, Any]) -> dict[str, Any]:
    choices = response.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                return choice
    return {}


def status_of(finish_reason: Any) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def to_response(
    chat: Any,
    echo: dict[str, Any],
    *,
    response_id: str,
    model: str,
    created_at: int,
    new_id: NewId,
    namespaces: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A whole chat.completion as a Response: a message item (when there is text), then one
    function_call item per named tool call."""
    chat = chat if isinstance(chat, dict) else {}
    choice = _first_choice(chat)
    message = value if isinstance(value := choice.get("message"), dict) else {}
    status = status_of(choice.get("finish_reason"))
    output: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):  # some servers answer with content parts
        text = "".join(p.get("text") or "" for p in text if isinstance(p, dict))
    if isinstance(text, str) and text.strip():
        output.append(message_item(new_id("msg"), text, status))
    ids = CallIds(new_id)
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        name = function.get("name")
        if not isinstance(name, str) or not name:
            continue
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, str) else "{}"
        call_id = ids.assign(call.get("id"))
        output.append(
            function_call_item(new_id("fc"), call_id, name, arguments, "completed", namespaces)
        )
    return response_object(
        echo,
        response_id=response_id,
        model=model,
        created_at=created_at,
        status=status,
        output=output,
        usage=usage_of(chat.get("usage")),
    )
