"""Grammars from JSON schemas, checked before they reach llama.cpp.

`schema_grammar` turns a request's JSON schema (a tool's parameters, `response_format`) into
GBNF with llama-cpp-python's own converter and checks the result with `gbnf.check_gbnf`. Every
way a schema can be unusable — a converter that raises, a rule that matches nothing, a schema
nested too deep — is one `InvalidRequest` naming the request field, so a hostile schema is a 400
and never reaches llama.cpp's parser.
"""

from __future__ import annotations

import json
from typing import Any

from neuron.engine.gbnf import GrammarError, check_gbnf
from neuron.errors import InvalidRequest

# The converter recurses per nesting level; schemas deeper than this are refused up front so
# that Python's recursion limit is never the thing that stops them.
_MAX_SCHEMA_DEPTH = 64


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, counting no further than `limit + 1`."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def schema_grammar(schema: Any, *, param: str, prop_order: list[str] | None = None) -> str:
    """GBNF (root rule `root`) admitting exactly the JSON values `schema` describes."""
    if schema is True or schema == {}:
        schema = {}
    elif not isinstance(schema, dict):
        raise InvalidRequest("a JSON schema must be an object", param=param, code="invalid_schema")
    if _depth(schema, _MAX_SCHEMA_DEPTH) > _MAX_SCHEMA_DEPTH:
        raise InvalidRequest(
            f"the JSON schema is nested deeper than {_MAX_SCHEMA_DEPTH} levels",
            param=param,
            code="invalid_schema",
        )
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema), prop_order)
    except Exception as exc:  # the converter reports bad schemas with assorted exception types
        reason = str(exc) or type(exc).__name__
        raise InvalidRequest(
            f"unsupported JSON schema: {reason}", param=param, code="invalid_schema"
        ) from None
    try:
        check_gbnf(gbnf)
    except GrammarError as exc:
        raise InvalidRequest(
            f"the JSON schema makes an unusable grammar: {exc}", param=param, code="invalid_schema"
        ) from None
    return gbnf
