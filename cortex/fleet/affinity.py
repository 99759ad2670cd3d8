"""Prefix affinity: which conversation a request belongs to, as an opaque key.

A neuron keeps the KV cache of the prompts it served, so the next turn of a conversation is
cheapest on the replica that served the last one: it reads only what is new. `affinity_key`
names the conversation; routing (`routing.route`'s `prefer`) sends it back to that replica
unless the replica is much busier than the least busy one.

The key, in order:
1. what the client says: OpenAI `prompt_cache_key`, then `user`; Anthropic `metadata.user_id`
   (Claude Code sends one per session); the edges pass it as `explicit`;
2. failing that, the conversation's opening: every system or developer message and the first
   user message of a chat body. Later turns only append, so each turn of one conversation has
   the same opening, and two users of one agent (the same system prompt) differ by their first
   message;
3. otherwise (a completion, an embedding, a chat without a user message) no key: by load.

Invariants: pure (no I/O); the key is a SHA-256 digest, never the text it was made from, so it
can be kept and compared without holding prompts or user ids; the same input always gives the
same key, and different kinds of input (explicit vs opening) never collide by construction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["affinity_key", "explicit_key"]

_OPENING_ROLES = frozenset({"system", "developer"})


def affinity_key(explicit: object, body: Mapping[str, Any]) -> str | None:
    """The conversation key of a request (see the module docstring), or None."""
    if isinstance(explicit, str) and explicit:
        return _digest("explicit", explicit)
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    opening: list[Any] = []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        if role in _OPENING_ROLES:
            opening.append([role, message.get("content")])
        elif role == "user":
            opening.append(["user", message.get("content")])
            return _digest("opening", json.dumps(opening, sort_keys=True, default=str))
    return None


def explicit_key(body: Mapping[str, Any]) -> str | None:
    """What an OpenAI-shaped body says its conversation is: `prompt_cache_key`, then `user`."""
    for field in ("prompt_cache_key", "user"):
        value = body.get(field)
        if isinstance(value, str) and value:
            return value
    return None


def _digest(kind: str, text: str) -> str:
    return hashlib.sha256(f"{kind}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
