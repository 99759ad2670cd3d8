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

# Keywords that describe a value without constraining it. A subschema made of these alone (a
# property that is only a `description`, as Claude Code's tools send) admits any JSON value;
# llama-cpp-python's converter refuses it as "Unrecognized schema".
_ANNOTATIONS = frozenset(
    {
        "description",
        "title",
        "default",
        "examples",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "markdownDescription",
    }
)
# Length and count bounds above this are dropped before conversion: the converter spells a
# bound of n as n nested optional groups, and llama.cpp parses those by recursion (Claude Code
# sends `maxLength: 524288`, which killed the neuron). A bound this large constrains nothing a
# model would produce in one answer anyway.
_MAX_BOUND = 512
_BOUNDS = ("maxLength", "minLength", "maxItems", "minItems")
# Where subschemas sit: keyword → whether it holds one schema, a list, or a name → schema map.
_ONE, _LIST, _MAP = "one", "list", "map"
_SUBSCHEMAS = {
    "items": _ONE,
    "additionalProperties": _ONE,
    "not": _ONE,
    "prefixItems": _LIST,
    "anyOf": _LIST,
    "oneOf": _LIST,
    "allOf": _LIST,
    "properties": _MAP,
    "$defs": _MAP,
    "definitions": _MAP,
}

# llama-cpp-python's converter lets a JSON string hold raw control characters (`[^"\\]`), which
# JSON forbids: a sampled answer with a newline inside a string did not parse. llama.cpp's own
# converter excludes them; so does this rule.
_LOOSE_CHAR = r'char ::= [^"\\] |'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'

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


def _convertible(schema: Any, *, root: bool) -> Any:
    """`schema` as llama-cpp-python's converter should see it: every unconstrained subschema
    (`{}`, `true`, annotations only) spelled as its "any JSON value" primitive, and length and
    count bounds over `_MAX_BOUND` dropped. The root keeps its meaning (the converter reads an
    empty root as an object, which is what tool parameters are)."""
    if schema is True and not root:  # `true` in a list or map (a property that is `true`)
        return {"type": "value"}
    if not isinstance(schema, dict):
        return schema
    if not root and all(key in _ANNOTATIONS for key in schema):
        return {"type": "value"}
    out = {
        key: value
        for key, value in schema.items()
        if not (key in _BOUNDS and isinstance(value, int) and value > _MAX_BOUND)
    }
    for key, shape in _SUBSCHEMAS.items():
        child = out.get(key)
        if shape == _ONE and isinstance(child, dict):
            out[key] = _convertible(child, root=False)
        elif key == "items" and child is True:  # `additionalProperties: true` it reads itself
            out[key] = {"type": "value"}
        elif shape == _LIST and isinstance(child, list):
            out[key] = [_convertible(c, root=False) for c in child]
        elif shape == _MAP and isinstance(child, dict):
            out[key] = {n: _convertible(c, root=False) for n, c in child.items()}
    return out


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

    schema = _convertible(schema, root=True)
    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema), prop_order).replace(_LOOSE_CHAR, _JSON_CHAR)
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
