"""Anthropic Messages API ⇄ OpenAI Chat Completions, both directions.

Neurons speak OpenAI only; this package is how cortex speaks Anthropic. It turns a
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

Layout (import from this package, not from the modules; names with a leading underscore are
shared between the modules below and private to the package):
* `common` — the `Event` shape, `AnthropicRequestError`, error bodies and error-type mapping,
  and the request-validation primitives (`_fail`, `_object`, `_string`, `_number`);
* `turns` — Anthropic `system` and `messages` → OpenAI messages (content blocks, turns);
* `request` — the whole request body: `to_openai_request`, `count_tokens_request`/`_messages`,
  tools and tool_choice;
* `response` — a whole OpenAI response → an Anthropic message, plus the tool-id, tool-input,
  usage and stop-reason helpers the stream shares;
* `stream` — `StreamTranslator`, OpenAI chunks → Anthropic SSE events.
"""

from __future__ import annotations

from cortex.dialects.anthropic.common import (
    AnthropicRequestError,
    Event,
    error_body,
    error_type_from_openai,
    ping,
)
from cortex.dialects.anthropic.request import (
    count_tokens_messages,
    count_tokens_request,
    to_openai_request,
)
from cortex.dialects.anthropic.response import parse_tool_input, to_anthropic_response
from cortex.dialects.anthropic.stream import StreamTranslator
from cortex.dialects.anthropic.turns import TEXT_JOIN, TOOL_ERROR_PREFIX

__all__ = [
    "TEXT_JOIN",
    "TOOL_ERROR_PREFIX",
    "AnthropicRequestError",
    "Event",
    "StreamTranslator",
    "count_tokens_messages",
    "count_tokens_request",
    "error_body",
    "error_type_from_openai",
    "parse_tool_input",
    "ping",
    "to_anthropic_response",
    "to_openai_request",
]
