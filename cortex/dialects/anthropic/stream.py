"""A streamed OpenAI response (`chat.completion.chunk`s) → Anthropic Messages SSE events.

`StreamTranslator` is fed one chunk at a time and returns (event name, data) pairs for the
caller to encode; `start`, `error` and `finish` cover a cold load, an upstream failure and the
end of the stream.

Invariants:
* Pure: no I/O, no clock, no randomness; ids come from the caller.
* Streams follow Anthropic's grammar exactly: one `message_start`; then blocks with indexes
  0, 1, 2… each `content_block_start` → `content_block_delta`* → `content_block_stop`, never
  two open at once; then one `message_delta` and `message_stop`. After `error` nothing follows.
* No text block is ever empty or whitespace-only; leading whitespace is kept by prepending it
  to the first real text.
* Tool-use ids follow `response`'s rules (``toolu_…``, unique within the message).
* Never raises on odd upstream output; it maps what it can.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cortex.dialects.anthropic.common import Event, error_body, error_type_from_openai
from cortex.dialects.anthropic.response import (
    _first_choice,
    _stop_reason,
    _tool_call_list,
    _ToolIds,
    _usage,
)


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
        message: dict[str, Any] = {
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
        delta = value if isinstance(value := choice.get("delta"), dict) else {}
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
        function = value if isinstance(value := piece.get("function"), dict) else {}
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
        block: dict[str, Any] = {
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
