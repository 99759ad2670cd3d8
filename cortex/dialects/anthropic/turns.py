"""Anthropic `system` and `messages` → OpenAI chat messages.

Content blocks (text, image, tool_use, tool_result) are validated and mapped turn by turn;
`request` assembles the rest of the body around them.

Invariants:
* Pure; raises only `AnthropicRequestError` (via `_fail`) with Anthropic-style field paths
  (``messages.1.content.0.tool_use_id: ...``); never KeyError/TypeError.
* Consecutive turns of one role are combined, as Anthropic does, which also keeps chat
  templates that insist on strict alternation (Gemma, Mistral) working.
* Tool results come first in a user turn, right after the assistant message that called them
  (OpenAI wants them there); images they held move into the user message that follows, since
  tool messages take text only. An `is_error` result is marked with `TOOL_ERROR_PREFIX`.
* Empty text blocks are dropped; several text blocks become one string joined by `TEXT_JOIN`;
  `thinking`/`redacted_thinking` blocks are dropped (engine-specific, not replayable), and so is
  Claude Code's per-request billing header in `system` (it would defeat the prefix/KV cache).
* The prompt's prefix never moves: a `role: "system"` message inside `messages` (Claude Code
  sends them mid-conversation) becomes `<system-reminder>` text in a user turn, in place and
  combined with the user turns around it, instead of a system message that many chat templates
  refuse after the first turn (or hoist to the front, changing every later prompt).
* Unknown fields inside blocks (`cache_control`, `citations`, …) are ignored.
"""

from __future__ import annotations

import json
from typing import Any

from cortex.dialects.anthropic.common import _fail, _object, _string
from cortex.dialects.openai import system_reminder

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


def _reminder(
    blocks: list[tuple[str, dict[str, Any]]], path: str
) -> list[tuple[str, dict[str, Any]]]:
    """A mid-conversation system message as one user text block, kept where it was sent."""
    texts = [text for where, block in blocks if (text := _text_block(block, where))]
    if not texts:
        return []
    return [(path, {"type": "text", "text": system_reminder(TEXT_JOIN.join(texts))})]


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    if isinstance(system, str):
        texts = [system]
    elif isinstance(system, list):
        texts = [_text_block(block, f"system.{i}") for i, block in enumerate(system)]
        texts = [text for text in texts if not text.lstrip().startswith(_BILLING_HEADER)]
    else:
        _fail("system", "Input should be a string or a list of text blocks")
    text = TEXT_JOIN.join(text for text in texts if text)
    return [{"role": "system", "content": text}] if text else []


_TURNS = {"user": _user_turn, "assistant": _assistant_turn}
_ROLES = ("user", "assistant", "system")


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
        if not isinstance(role, str) or role not in _ROLES:
            _fail(f"{path}.role", "Input should be 'user' or 'assistant'")
        if "content" not in message:
            _fail(f"{path}.content", "Field required")
        blocks = _blocks(message["content"], f"{path}.content")
        if role == "system":  # Claude Code ≥ 2.1 sends these mid-conversation
            role, blocks = "user", _reminder(blocks, f"{path}.content")
            if not blocks:
                continue
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    return [out for role, blocks in turns for out in _TURNS[role](blocks)]
