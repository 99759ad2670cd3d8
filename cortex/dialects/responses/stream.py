"""A streamed chat answer (`chat.completion.chunk`s) → Responses API SSE events.

`ResponsesStream` is fed one chunk at a time and returns (event type, data) pairs for the
caller to encode as ``event: <type>`` / ``data: <json>``; `start` may run before any chunk
(the caller sends it the moment the request is accepted, also during cold loads and queueing),
`fail` ends the stream on an upstream failure, `finish` after the last chunk.

Invariants:
* Pure: no I/O, no clock, no randomness; ids and `created_at` come from the caller.
* Grammar (OpenAI's): `response.created`, `response.in_progress`; then output items with
  `output_index` 0, 1, 2…, one open at a time — a message item is `output_item.added`,
  `content_part.added`, `output_text.delta`*, `output_text.done`, `content_part.done`,
  `output_item.done`; a function_call item is `output_item.added`,
  `function_call_arguments.delta`*, `function_call_arguments.done`, `output_item.done`; then
  exactly one terminal event: `response.completed`, `response.incomplete` (finish_reason
  "length") or `error` followed by `response.failed`. Nothing follows the terminal event.
* Every event carries `sequence_number`, counting from 0 without gaps, and the lifecycle
  events carry the same response id.
* Text streams live; leading whitespace is held until real text arrives (so a call preceded by
  a newline yields no empty message). The first tool call streams its arguments live; later
  calls (engines may interleave pieces by index) and text after a call are held until the
  choice finishes, then emitted as items of their own.
* Never raises on odd upstream output; it maps what it can.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cortex.dialects.responses.response import (
    CallIds,
    NewId,
    _first_choice,
    function_call_item,
    message_item,
    output_text_part,
    response_object,
    status_of,
    usage_of,
)

Event = tuple[str, dict[str, Any]]


@dataclass
class _Call:
    id: Any = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)
    item_id: str | None = None  # set once its item is added
    output_index: int = -1


class ResponsesStream:
    """One streamed response: chat chunks in, Responses SSE events (type, data) out."""

    def __init__(
        self,
        echo: dict[str, Any],
        *,
        response_id: str,
        model: str,
        created_at: int,
        new_id: NewId,
        namespaces: Mapping[str, str] | None = None,
    ) -> None:
        self._echo = echo
        self._namespaces = namespaces
        self._response_id = response_id
        self._model = model
        self._created_at = created_at
        self._new_id = new_id
        self._call_ids = CallIds(new_id)
        self._sequence = 0
        self._started = self._ended = self._content_done = False
        self._items: list[dict[str, Any]] = []  # finished output items, by output_index
        self._message: tuple[str, int] | None = None  # open message: (item id, output_index)
        self._text: list[str] = []
        self._leading = ""
        self._trailing: list[str] = []
        self._calls: dict[int, _Call] = {}
        self._active: _Call | None = None
        self._finish_reason: Any = None
        self._usage: Any = None

    def start(self) -> list[Event]:
        """`response.created` and `response.in_progress`, once."""
        if self._started or self._ended:
            return []
        self._started = True
        return [
            self._event("response.created", response=self._response("in_progress")),
            self._event("response.in_progress", response=self._response("in_progress")),
        ]

    def feed(self, chunk: Any) -> list[Event]:
        if self._ended or not isinstance(chunk, dict):
            return []
        events = self.start()
        if isinstance(chunk.get("error"), dict):  # an upstream error sent as a data line
            error = chunk["error"]
            code = error.get("code") if isinstance(error.get("code"), str) else "server_error"
            message = error.get("message")
            text = message if isinstance(message, str) and message else "upstream error"
            return events + self.fail(code, text)
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        choice = _first_choice(chunk)
        if not choice or self._content_done:
            return events
        delta = value if isinstance(value := choice.get("delta"), dict) else {}
        if isinstance(delta.get("content"), str):
            events += self._text_piece(delta["content"])
        calls = delta.get("tool_calls")
        for position, piece in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(piece, dict):
                events += self._tool_piece(piece, position)
        if choice.get("finish_reason") is not None:
            self._finish_reason = choice["finish_reason"]
            events += self._close_content()
        return events

    def finish(self) -> list[Event]:
        """Close what is open and send `response.completed` (or `.incomplete`)."""
        if self._ended:
            return []
        events = self.start() + self._close_content()
        self._ended = True
        status = status_of(self._finish_reason)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        return [*events, self._event(kind, response=self._response(status, usage_of(self._usage)))]

    def fail(self, code: str, message: str) -> list[Event]:
        """An `error` event and `response.failed`; the stream ends there."""
        if self._ended:
            return []
        events = self.start()
        self._ended = True
        error = {"code": code, "message": message}
        failed = self._response("failed", usage_of(self._usage), error)
        return [
            *events,
            self._event("error", code=code, message=message, param=None),
            self._event("response.failed", response=failed),
        ]

    # -- internals --

    def _event(self, kind: str, **fields: Any) -> Event:
        data = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        return kind, data

    def _response(
        self, status: str, usage: dict[str, Any] | None = None, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return response_object(
            self._echo,
            response_id=self._response_id,
            model=self._model,
            created_at=self._created_at,
            status=status,
            output=self._items,
            usage=usage,
            error=error,
        )

    def _add(self, item: dict[str, Any]) -> tuple[int, Event]:
        index = len(self._items)
        self._items.append(item)  # replaced by the finished item when it is done
        return index, self._event("response.output_item.added", output_index=index, item=item)

    def _text_piece(self, text: str) -> list[Event]:
        if not text:
            return []
        if self._calls:
            self._trailing.append(text)
            return []
        events: list[Event] = []
        if self._message is None:
            self._leading += text
            if not self._leading.strip():
                return []
            text, self._leading = self._leading, ""
            events += self._open_message()
        assert self._message is not None
        item_id, index = self._message
        self._text.append(text)
        position = {"item_id": item_id, "output_index": index, "content_index": 0}
        events.append(
            self._event("response.output_text.delta", **position, delta=text, logprobs=[])
        )
        return events

    def _open_message(self) -> list[Event]:
        item_id = self._new_id("msg")
        index, added = self._add(message_item(item_id, None, "in_progress"))
        self._message = (item_id, index)
        position = {"item_id": item_id, "output_index": index, "content_index": 0}
        part = self._event("response.content_part.added", **position, part=output_text_part(""))
        return [added, part]

    def _close_message(self, status: str) -> list[Event]:
        if self._message is None:
            return []
        (item_id, index), self._message = self._message, None
        text, self._text = "".join(self._text), []
        item = message_item(item_id, text, status)
        self._items[index] = item
        position = {"item_id": item_id, "output_index": index, "content_index": 0}
        return [
            self._event("response.output_text.done", **position, text=text, logprobs=[]),
            self._event("response.content_part.done", **position, part=output_text_part(text)),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _tool_piece(self, piece: dict[str, Any], position: int) -> list[Event]:
        index = piece.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = position
        call = self._calls.setdefault(index, _Call())
        # Engines repeat id and name in later pieces or send name None: the first value wins.
        if call.id is None and isinstance(piece.get("id"), str) and piece["id"]:
            call.id = piece["id"]
        function = value if isinstance(value := piece.get("function"), dict) else {}
        if call.name is None and isinstance(function.get("name"), str) and function["name"]:
            call.name = function["name"]
        events: list[Event] = []
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            call.arguments.append(arguments)
            if call is self._active:
                events.append(self._arguments_delta(call, arguments))
        if self._active is None and call.name is not None:
            self._active = call
            events += self._close_message("completed") + self._open_call(call)
        return events

    def _arguments_delta(self, call: _Call, delta: str) -> Event:
        return self._event(
            "response.function_call_arguments.delta",
            item_id=call.item_id,
            output_index=call.output_index,
            delta=delta,
        )

    def _open_call(self, call: _Call) -> list[Event]:
        assert call.name is not None
        call.item_id, call.id = self._new_id("fc"), self._call_ids.assign(call.id)
        item = function_call_item(
            call.item_id, call.id, call.name, "", "in_progress", self._namespaces
        )
        call.output_index, added = self._add(item)
        sent = "".join(call.arguments)
        return [added, self._arguments_delta(call, sent)] if sent else [added]

    def _close_call(self, call: _Call) -> list[Event]:
        assert call.name is not None and call.item_id is not None
        arguments = "".join(call.arguments) or "{}"
        status = "incomplete" if self._finish_reason == "length" else "completed"
        item = function_call_item(
            call.item_id, call.id, call.name, arguments, status, self._namespaces
        )
        self._items[call.output_index] = item
        position = {"item_id": call.item_id, "output_index": call.output_index}
        return [
            self._event("response.function_call_arguments.done", **position, arguments=arguments),
            self._event("response.output_item.done", output_index=call.output_index, item=item),
        ]

    def _close_content(self) -> list[Event]:
        if self._content_done:
            return []
        self._content_done = True
        events = self._close_message(status_of(self._finish_reason))
        if self._active is not None:
            events += self._close_call(self._active)
        for index in sorted(self._calls):
            call = self._calls[index]
            if call.item_id is None and call.name is not None:  # nameless calls cannot be used
                events += self._open_call(call) + self._close_call(call)
        trailing = "".join(self._trailing)
        if trailing.strip():
            self._calls = {}  # so that the text is not held again
            events += self._text_piece(trailing)
            events += self._close_message(status_of(self._finish_reason))
        return events
