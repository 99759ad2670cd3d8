"""OpenAI response bodies and stream chunks from engine output (`Piece`s and a `Finished`).

Pure. One renderer per request: `ChatRenderer` for /v1/chat/completions (with tool-call
extraction: text from `<tool_call>` on is held back while streaming and sent as `tool_calls`
at the end), `CompletionRenderer` for /v1/completions. Both name the stop string that ended a
choice as `stop_reason` (OpenAI's `finish_reason: "stop"` cannot tell it from end of turn) and
report cached prompt tokens in `usage.prompt_tokens_details.cached_tokens`.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from neuron.api.sse import sse_data
from neuron.engine.types import Finished, FinishReason, Piece, TokenLogprob
from neuron.toolcall import HERMES, ToolSyntax, parse_reply

_SLOT = "\x00text\x00"  # placeholder for the text of a pre-rendered chunk


class _Frame:
    """A chunk's SSE bytes rendered once, with only the text filled in per token: the per-token
    path of a stream is then one `json.dumps` of a string instead of a whole nested object."""

    def __init__(self, chunk: dict[str, Any]) -> None:
        before, _, after = sse_data(chunk).partition(json.dumps(_SLOT).encode())
        self._before, self._after = before, after

    def event(self, text: str) -> bytes:
        return self._before + json.dumps(text).encode() + self._after


def _finish_reason(finished: Finished) -> str:
    return "length" if finished.reason is FinishReason.LENGTH else "stop"


def _chat_logprob(entry: TokenLogprob) -> dict[str, Any]:
    return {
        "token": entry.token,
        "logprob": entry.logprob,
        "bytes": list(entry.bytes),
        "top_logprobs": [
            {"token": token, "logprob": logprob, "bytes": list(data)}
            for token, logprob, data in entry.top
        ],
    }


def _held_back(text: str, marker: str) -> int:
    """How many characters of `text` may be sent while a `marker` could still be starting."""
    index = text.find(marker)
    if index >= 0:
        return index
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return len(text) - size
    return len(text)


class ChatRenderer:
    """Renders one chat completion, whole or as `chat.completion.chunk`s."""

    def __init__(
        self, model: str, *, tools: bool, logprobs: bool, syntax: ToolSyntax | None = None
    ) -> None:
        self.model = model
        self.tools = tools
        # Calls are written in the template's own syntax, or in Hermes' when it has none.
        self.syntax = syntax or HERMES
        self._marker = self.syntax.open or '{"name"'
        self.logprobs = logprobs
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self._text = ""
        self._sent = 0
        self._frame = _Frame(self._chunk({"content": _SLOT}))

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None}
        choice["finish_reason"] = finish
        choice.update(extra)
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def opening(self) -> dict[str, Any]:
        return self._chunk({"role": "assistant", "content": ""})

    def piece(self, piece: Piece) -> bytes | None:
        """The SSE event for one piece (None when nothing may be sent yet)."""
        self._text += piece.text
        limit = _held_back(self._text, self._marker) if self.tools else len(self._text)
        content = self._text[self._sent : limit]
        self._sent = max(self._sent, limit)
        if not content and not (self.logprobs and piece.logprobs):
            return None
        if not self.logprobs:
            return self._frame.event(content)
        chunk = self._chunk({"content": content})
        chunk["choices"][0]["logprobs"] = {
            "content": [_chat_logprob(entry) for entry in piece.logprobs]
        }
        return sse_data(chunk)

    def closing(self, finished: Finished) -> list[dict[str, Any]]:
        chunks = []
        finish = _finish_reason(finished)
        if self.tools:
            reply = parse_reply(self._text, self.syntax)
            if reply.tool_calls:
                finish = "tool_calls"
                calls = [{"index": i, **call} for i, call in enumerate(reply.tool_calls)]
                chunks.append(self._chunk({"tool_calls": calls}))
            elif self._sent < len(self._text):
                chunks.append(self._chunk({"content": self._text[self._sent :]}))
        extra = {"stop_reason": finished.stop_sequence} if finished.stop_sequence else {}
        chunks.append(self._chunk({}, finish, **extra))
        return chunks

    def whole(self, pieces: list[Piece], finished: Finished) -> dict[str, Any]:
        text = "".join(piece.text for piece in pieces)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        finish = _finish_reason(finished)
        if self.tools:
            reply = parse_reply(text, self.syntax)
            if reply.tool_calls:
                message = {
                    "role": "assistant",
                    "content": reply.content,
                    "tool_calls": reply.tool_calls,
                }
                finish = "tool_calls"
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
        choice["logprobs"] = (
            {"content": [_chat_logprob(e) for p in pieces for e in p.logprobs]}
            if self.logprobs
            else None
        )
        if finished.stop_sequence:
            choice["stop_reason"] = finished.stop_sequence
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": finished.usage.as_openai(),
        }

    def usage_chunk(self, finished: Finished) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": finished.usage.as_openai(),
        }


class CompletionRenderer:
    """Renders one text completion, whole or as `text_completion` chunks."""

    def __init__(self, model: str, *, logprobs: bool, echo: str = "") -> None:
        self.model = model
        self.logprobs = logprobs
        self.echo = echo
        self.id = f"cmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self._offset = len(echo)
        self._frame = _Frame(self._body(_SLOT, None, None, "text_completion"))

    def _logprobs(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        offsets = []
        for entry in entries:
            offsets.append(self._offset)
            self._offset += len(entry.token)
        return {
            "tokens": [entry.token for entry in entries],
            "token_logprobs": [entry.logprob for entry in entries],
            "top_logprobs": [{token: lp for token, lp, _ in entry.top} for entry in entries],
            "text_offset": offsets,
        }

    def _body(self, text: str, finish: str | None, logprobs: Any, obj: str) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def opening(self) -> dict[str, Any] | None:
        return self._body(self.echo, None, None, "text_completion") if self.echo else None

    def piece(self, piece: Piece) -> bytes | None:
        """The SSE event for one piece (None when it carries nothing)."""
        if not piece.text and not (self.logprobs and piece.logprobs):
            return None
        if not self.logprobs:
            return self._frame.event(piece.text)
        logprobs = self._logprobs(list(piece.logprobs))
        return sse_data(self._body(piece.text, None, logprobs, "text_completion"))

    def closing(self, finished: Finished) -> list[dict[str, Any]]:
        body = self._body("", _finish_reason(finished), None, "text_completion")
        if finished.stop_sequence:
            body["choices"][0]["stop_reason"] = finished.stop_sequence
        return [body]

    def whole(self, pieces: list[Piece], finished: Finished) -> dict[str, Any]:
        text = self.echo + "".join(piece.text for piece in pieces)
        entries = [entry for piece in pieces for entry in piece.logprobs]
        logprobs = self._logprobs(entries) if self.logprobs else None
        body = self._body(text, _finish_reason(finished), logprobs, "text_completion")
        if finished.stop_sequence:
            body["choices"][0]["stop_reason"] = finished.stop_sequence
        body["usage"] = finished.usage.as_openai()
        return body

    def usage_chunk(self, finished: Finished) -> dict[str, Any]:
        body = self._body("", None, None, "text_completion")
        body["choices"] = []
        body["usage"] = finished.usage.as_openai()
        return body
