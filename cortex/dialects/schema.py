"""JSON Schemas bound for a neuron's grammar sampler: refuse the ones no grammar can express.

A tool's `parameters`, a `response_format` schema, Anthropic's `input_schema` and
`output_config.format.schema` all become a GBNF grammar on the neuron. A keyword that offers no
alternative at all (`{"anyOf": []}`, `{"enum": []}`, `{"type": []}`) becomes an empty grammar
rule, which llama.cpp fails to parse (and has crashed on), and a keyword of the wrong shape
(`"required": "x"`, `"properties": []`) fails the conversion. `check_schema` refuses both (400
`invalid_schema`) with the path of the keyword as `param`; the neuron checks its grammars again
(defence in depth).

Invariants: pure (no I/O, no logging); raises only `InvalidRequest`; walks iteratively, so a
deep schema costs no stack; keywords it does not know are left alone (JSON Schema has many, and
annotations such as `description` or `title` are free text).
"""

from __future__ import annotations

from typing import Any, NoReturn

from cortex.errors import InvalidRequest

TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
# Keywords whose value is one subschema, a map of name → subschema, or a list of subschemas.
_ONE = (
    "not",
    "additionalProperties",
    "additionalItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contains",
    "propertyNames",
    "if",
    "then",
    "else",
)
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_ALTERNATIVES = ("anyOf", "oneOf", "allOf")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_NUMBERS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_STRINGS = ("pattern", "format", "$ref")


def _fail(path: str, problem: str) -> NoReturn:
    # The neuron's own grammar check answers with this code too: one code, whoever refuses.
    raise InvalidRequest(f"'{path}' {problem}", param=path, code="invalid_schema")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_schema(schema: Any, path: str) -> None:
    """Refuse a schema that has a keyword of the wrong shape or one with no alternative."""
    if not isinstance(schema, dict):
        _fail(path, "must be a JSON Schema object")
    pending: list[tuple[Any, str]] = [(schema, path)]
    while pending:
        node, where = pending.pop()
        if isinstance(node, bool):
            continue  # `true` / `false` are schemas too
        if not isinstance(node, dict):
            _fail(where, "must be a JSON Schema (an object or a boolean)")
        pending.extend(_children(node, where))
        _check_keywords(node, where)


def _children(node: dict[str, Any], where: str) -> list[tuple[Any, str]]:
    out: list[tuple[Any, str]] = []
    for key in _ONE:
        if key in node:
            out.append((node[key], f"{where}.{key}"))
    for key in _MAP:
        if key in node:
            value = node[key]
            if not isinstance(value, dict):
                _fail(f"{where}.{key}", "must be an object of schemas")
            out.extend((child, f"{where}.{key}.{name}") for name, child in value.items())
    for key in _ALTERNATIVES:
        if key in node:
            value = node[key]
            if not isinstance(value, list) or not value:
                _fail(f"{where}.{key}", "must be a non-empty array of schemas")
            out.extend((child, f"{where}.{key}[{i}]") for i, child in enumerate(value))
    for key in ("items", "prefixItems"):
        if key in node:
            value = node[key]
            if isinstance(value, list):
                out.extend((child, f"{where}.{key}[{i}]") for i, child in enumerate(value))
            elif key == "prefixItems":
                _fail(f"{where}.{key}", "must be an array of schemas")
            else:
                out.append((value, f"{where}.{key}"))
    return out


def _check_keywords(node: dict[str, Any], where: str) -> None:
    if "type" in node:
        kind = node["type"]
        kinds = kind if isinstance(kind, list) else [kind]
        if not kinds or not all(isinstance(k, str) and k in TYPES for k in kinds):
            _fail(f"{where}.type", "must be a JSON type name or a non-empty array of them")
    if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"]):
        _fail(f"{where}.enum", "must be a non-empty array")
    if "required" in node:
        required = node["required"]
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            _fail(f"{where}.required", "must be an array of property names")
    for key in _COUNTS:
        if key in node:
            value = node[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                _fail(f"{where}.{key}", "must be a non-negative integer")
    for low, high in (("minLength", "maxLength"), ("minItems", "maxItems")):
        if low in node and high in node and node[low] > node[high]:
            _fail(f"{where}.{low}", f"must not be greater than {high}")
    for key in _NUMBERS:
        if key in node and not _is_number(node[key]):
            _fail(f"{where}.{key}", "must be a number")
    if "multipleOf" in node and node["multipleOf"] <= 0:
        _fail(f"{where}.multipleOf", "must be greater than 0")
    for key in _STRINGS:
        if key in node and not isinstance(node[key], str):
            _fail(f"{where}.{key}", "must be a string")
