"""Every request body enters the gateway here: bytes → a checked JSON object, or a 400.

One path for every route that takes a body, in both dialects:
1. `decode(raw)` — strict UTF-8 JSON: no NaN/Infinity, no number that overflows a float, no
   integer literal of more than `MAX_INT_DIGITS` digits, nesting at most `MAX_DEPTH` deep, and
   every string and key well-formed text (no lone surrogate, no NUL), so that re-serialising it
   or handing it to a tokenizer can never fail.
2. the route's fields: `cortex.dialects.openai.check_request` for the OpenAI routes; for
   Anthropic, tool and output schemas here, then the dialect's own translation; for Responses,
   the dialect's translation (which checks its schemas).
3. `check_context` — a prompt that cannot fit the catalogue model's `n_ctx` even at the most
   generous bytes-per-token is refused (400 `context_length_exceeded`) before any cold load.

Invariants: raises only `InvalidRequest` (rendered in the route's dialect by the app), with
`param` where a field can be named; never RecursionError, ValueError, TypeError or
UnicodeError. No I/O and no logging; messages never quote the body's strings (prompts).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from sanic import Request

from cortex.dialects.anthropic import AnthropicRequestError, count_tokens_request, to_openai_request
from cortex.dialects.openai import check_request, min_prompt_tokens, model_of
from cortex.dialects.responses import ResponsesRequest, to_chat_request
from cortex.dialects.schema import check_schema
from cortex.errors import InvalidRequest
from cortex.fleet.affinity import affinity_key
from cortex.fleet.state import FleetSnapshot

# Deep enough for any real body (a JSON Schema in a tool nests a few levels per schema level),
# shallow enough that nothing downstream — re-serialising, the neuron's own parser, grammar
# conversion — ever nears a recursion limit.
MAX_DEPTH = 64
# No API field takes a number anywhere near this long; Python itself refuses past 4300 digits.
MAX_INT_DIGITS = 64
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
# Where decoded text could hold a NUL or a surrogate: valid UTF-8 holds neither, and JSON allows
# neither raw in a string, so they can only come from a \u0000 or \ud800-\udfff escape (a pair
# of those is an emoji, which decodes to one code point, but is checked anyway).
_MAYBE_BAD_ESCAPE = re.compile(r"\\u(?:0000|d[89a-f][0-9a-f]{2})", re.IGNORECASE)
_PROMPT_PARAM = {"chat": "messages", "completions": "prompt", "embeddings": "input"}


class _Refused(Exception):
    """Raised from inside `json.loads` hooks; becomes an InvalidRequest."""


def _parse_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS + 1:  # + 1 for a sign
        raise _Refused(f"an integer literal has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused("a number is too large for a double")
    return value


def _parse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not valid JSON")


def decode(raw: bytes) -> Any:
    """The JSON value of a request body, refused unless it is safe to pass on (see above)."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except UnicodeDecodeError:
        raise InvalidRequest("request body is not valid UTF-8") from None
    except RecursionError:
        raise InvalidRequest(f"request body nests more than {MAX_DEPTH} levels deep") from None
    except _Refused as exc:
        raise InvalidRequest(f"request body is not acceptable JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not _is_clean(value, strings=_MAYBE_BAD_ESCAPE.search(text) is not None):
        _refuse_first_fault(value)
    return value


def _is_clean(value: Any, *, strings: bool) -> bool:
    """Whether `value` nests at most MAX_DEPTH deep and (when `strings`) holds no bad text: one
    quick walk that builds no paths; `_refuse_first_fault` finds and names a fault when not."""
    if not isinstance(value, (dict, list)):
        return not (strings and isinstance(value, str) and _BAD_TEXT.search(value))
    pending: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            if strings and any(_BAD_TEXT.search(key) for key in item):
                return False
            children: Any = item.values()
        else:
            children = item
        if children and depth >= MAX_DEPTH:  # its children would nest deeper than allowed
            return False
        for child in children:
            if isinstance(child, (dict, list)):
                pending.append((child, depth + 1))
            elif strings and isinstance(child, str) and _BAD_TEXT.search(child):
                return False
    return True


def _refuse_first_fault(value: Any) -> None:
    """Raise for the first fault of `value`, naming where it is (`param`)."""
    pending: list[tuple[Any, str, int]] = [(value, "", 1)]
    while pending:
        item, path, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise InvalidRequest(
                f"request body nests more than {MAX_DEPTH} levels deep", param=path or None
            )
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, path)
                pending.append((child, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(item, list):
            pending.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


def _check_text(text: str, path: str) -> None:
    bad = _BAD_TEXT.search(text)
    if bad is None:
        return
    what = "a NUL character" if bad.group() == "\x00" else "a lone UTF-16 surrogate"
    param = path[:200] or None
    raise InvalidRequest(
        f"{param or 'the body'} contains {what}; text must be valid Unicode", param=param
    )


def json_object(raw: bytes) -> dict[str, Any]:
    body = decode(raw or b"null")
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def openai_request(request: Request, endpoint: str) -> dict[str, Any]:
    """A checked body for /v1/chat/completions, /v1/completions or /v1/embeddings."""
    body = json_object(request.body)
    check_request(body, endpoint)
    check_context(request.app.ctx.registry.snapshot(), body, _PROMPT_PARAM[endpoint])
    return body


def anthropic_request(request: Request) -> tuple[str, dict[str, Any], str | None]:
    """A /v1/messages body: the requested model, the OpenAI chat body it translates to, and its
    conversation's affinity key (`metadata.user_id` when given, else the opening)."""
    body = json_object(request.body)
    model = model_of(body)
    _anthropic_schemas(body)
    openai_body = _translated(to_openai_request, body)
    check_context(request.app.ctx.registry.snapshot(), openai_body, "messages")
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    return model, openai_body, affinity_key(user_id, openai_body)


def responses_request(request: Request) -> ResponsesRequest:
    """A /v1/responses body as the chat request it translates to (schemas checked there)."""
    parsed = to_chat_request(json_object(request.body))
    check_context(request.app.ctx.registry.snapshot(), parsed.chat, "input")
    return parsed


def anthropic_count_request(request: Request) -> tuple[str, dict[str, Any]]:
    """A /v1/messages/count_tokens body: the model and what its tokenizer must count."""
    body = json_object(request.body)
    model = model_of(body)
    _anthropic_schemas(body)
    return model, _translated(count_tokens_request, body)


def _translated(translate: Any, body: dict[str, Any]) -> dict[str, Any]:
    try:
        return translate(body)
    except AnthropicRequestError as exc:
        raise InvalidRequest(exc.message) from None


def _anthropic_schemas(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    for index, tool in enumerate(tools if isinstance(tools, list) else ()):
        if isinstance(tool, dict) and isinstance(tool.get("input_schema"), dict):
            check_schema(tool["input_schema"], f"tools.{index}.input_schema")
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if isinstance(fmt, dict) and isinstance(fmt.get("schema"), dict):
        check_schema(fmt["schema"], "output_config.format.schema")


def check_context(snapshot: FleetSnapshot, body: dict[str, Any], param: str) -> None:
    """Refuse a prompt that cannot fit the catalogue model's context, whatever its tokenizer."""
    entry = snapshot.entry(snapshot.resolve(body["model"]))
    if entry is None or not entry.n_ctx:
        return  # the neuron's own default context: only its tokenizer can tell
    floor = min_prompt_tokens(body)
    if floor > entry.n_ctx:
        raise InvalidRequest(
            f"the prompt needs at least {floor} tokens; model {entry.id!r} has a context of "
            f"{entry.n_ctx}",
            param=param,
            code="context_length_exceeded",
        )
