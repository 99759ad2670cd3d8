"""The gateway's one SSE encoder, for both dialects.

OpenAI streams are `data:` lines ending with `data: [DONE]`; Anthropic streams are named events.
A comment line (`: keep-alive`) is valid SSE that every client ignores: it keeps connections and
client timeouts alive while a cold load runs.
"""

from __future__ import annotations

import json
from typing import Any

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def event(name: str, payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return b"event: " + name.encode() + b"\ndata: " + body + b"\n\n"
