"""OpenAI Responses API (`POST /v1/responses`) ⇄ OpenAI Chat Completions, both directions.

Neurons speak Chat Completions only; this package is how cortex speaks Responses (the dialect
of Codex CLI and of newer OpenAI SDK code). It turns a Responses body into a chat body, and a
chat answer — whole, or as `chat.completion.chunk`s — back into a Response object or the
Responses SSE events.

Invariants:
* Pure: no I/O, no clock, no logging, no randomness. Ids and `created_at` come from the caller
  (`new_id(prefix)` is called once per id; prefixes are ``resp``, ``msg``, ``fc``, ``call``).
* Request translation raises only `InvalidRequest` with `param` naming the field the way OpenAI
  does (``input[2].content[0].type``); never KeyError/TypeError, and never quotes the body's
  strings (they may be prompts).
* Stateless: nothing is stored. `store` is accepted and echoed; `previous_response_id`,
  `conversation` and `item_reference` input items are refused (400), since they would need a
  stored response. `reasoning`, `include`, `truncation`, `service_tier` and unknown fields
  are accepted and ignored, so newer clients keep working.
* Function tools, and `namespace` tools of functions (a function reaches the model as
  ``namespace.name`` and its calls go back as `name` + `namespace`). Tools OpenAI runs itself
  (`web_search`, `file_search`, …; Codex CLI offers `web_search` on every turn) are not offered
  to the model, and a `tool_choice` forcing one is a 400; any other type is a 400 naming
  `tools[i].type`.
* Streams follow OpenAI's grammar: `response.created`, `response.in_progress`, then per output
  item `response.output_item.added` → (`response.content_part.added` →
  `response.output_text.delta`* → `response.output_text.done` → `response.content_part.done`
  | `response.function_call_arguments.delta`* → `response.function_call_arguments.done`) →
  `response.output_item.done`, one item open at a time, `output_index` 0, 1, 2…; then exactly
  one of `response.completed`, `response.incomplete` (max tokens) or `error` +
  `response.failed`. `sequence_number` counts every event from 0.
* Response translation never raises on odd upstream output; it maps what it can.

Layout (import from this package):
* `request` — `to_chat_request`: a Responses body → `ResponsesRequest` (chat body, echo fields
  for the Response object, routing hints);
* `response` — the Response object, usage, and `to_response` for a whole chat answer;
* `stream` — `ResponsesStream`, chat chunks → Responses SSE events.
"""

from __future__ import annotations

from cortex.dialects.responses.request import ResponsesRequest, RoutingHints, to_chat_request
from cortex.dialects.responses.response import response_object, to_response, usage_of
from cortex.dialects.responses.stream import ResponsesStream

__all__ = [
    "ResponsesRequest",
    "ResponsesStream",
    "RoutingHints",
    "response_object",
    "to_chat_request",
    "to_response",
    "usage_of",
]
