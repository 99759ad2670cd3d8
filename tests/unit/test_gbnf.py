"""The GBNF checker that stands between request schemas and llama.cpp's grammar parser."""

from __future__ import annotations

import pytest

from neuron.engine.gbnf import MAX_GROUP_DEPTH, MAX_REPEAT_COUNT, GrammarError, check_gbnf
from neuron.engine.grammar import schema_grammar
from neuron.errors import InvalidRequest


@pytest.mark.parametrize(
    "grammar",
    [
        'root ::= "a"',
        'root ::= "a" | "b"\n',
        'root ::= item ("," space item)*\nitem ::= [0-9]+\nspace ::= " "?',
        'root ::= ( "a" |\n  "b" )\n',  # newlines inside a group belong to the rule
        'root ::= "x"{2,5} # comment\n',
        'root ::= [^"\\\\] "\\"" <think>',
    ],
)
def test_usable_grammars_pass(grammar: str) -> None:
    check_gbnf(grammar)


@pytest.mark.parametrize(
    ("grammar", "reason"),
    [
        ('root ::= \nspace ::= " "?', "'root' is empty"),  # what {"enum": []} converts to
        ('a ::= \nroot ::= "{" a "}"', "'a' is empty"),  # an empty enum nested in a property
        ("root ::= x", "undefined rule 'x'"),
        ("root ::= ( )", "empty group"),
        ('root ::= "a" | ', "empty alternative"),
        ('root ::= | "a"', "empty alternative"),
        ('root ::= ("a"', "unbalanced"),
        ('root ::= "a")', "unbalanced"),
        ('root ::= *"a"', "repeats nothing"),
        ('item ::= "a"', "no 'root'"),
        ('root ::= "a"\nroot ::= "b"', "defined twice"),
        ('root ::= "unterminated', "unreadable"),
        ("just words", "expected a rule"),
    ],
)
def test_unusable_grammars_are_refused(grammar: str, reason: str) -> None:
    with pytest.raises(GrammarError, match=reason):
        check_gbnf(grammar)


@pytest.mark.parametrize(
    "schema",
    [
        {"anyOf": []},
        {"enum": []},
        {"type": []},
        {"type": "object", "properties": {"a": {"enum": []}}},
        {"type": "array", "items": {"anyOf": []}},
        {"oneOf": []},
        {"type": "foo"},
        {"type": "string", "pattern": "no anchors"},
        {"$ref": "#/definitions/missing"},
        [1, 2],
        "string",
    ],
    ids=repr,
)
def test_schemas_that_make_unusable_grammars_are_invalid_requests(schema: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        schema_grammar(schema, param="response_format")
    assert info.value.param == "response_format" and info.value.code == "invalid_schema"


def test_deeply_nested_schema_is_refused_before_the_converter_recurses() -> None:
    schema: dict = {"type": "string"}
    for _ in range(5000):
        schema = {"type": "array", "items": schema}
    with pytest.raises(InvalidRequest, match="nested deeper"):
        schema_grammar(schema, param="tools[0].function.parameters")


@pytest.mark.parametrize(
    "schema",
    [{}, {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}],
)
def test_ordinary_schemas_convert(schema: dict) -> None:
    check_gbnf(schema_grammar(schema, param="response_format"))


@pytest.mark.parametrize(
    "unconstrained",
    [
        {"description": "Optional input exposed to the script as `args`, verbatim."},
        {"title": "Anything", "default": None, "examples": [1, "a"]},
        {},
        True,
    ],
    ids=["description-only (Claude Code's tools)", "annotations-only", "empty", "true"],
)
def test_an_unconstrained_property_admits_any_json_value(unconstrained: object) -> None:
    schema = {
        "type": "object",
        "properties": {"args": unconstrained, "items": {"type": "array", "items": unconstrained}},
        "required": ["args", "items"],
    }
    grammar = schema_grammar(schema, param="tools[0].input_schema")
    check_gbnf(grammar)
    rules = dict(line.split(" ::= ", 1) for line in grammar.splitlines())
    assert rules["args-kv"].endswith('":" space value')
    assert rules["value"] == "object | array | string | number | boolean | null"
    assert rules["items"].startswith('"[" space (value ')


def test_grammars_nested_past_what_llama_cpp_parses_are_refused() -> None:
    depth = MAX_GROUP_DEPTH + 1
    with pytest.raises(GrammarError, match="nests groups deeper"):
        check_gbnf("root ::= " + '("a" ' * depth + ")?" * depth)
    check_gbnf("root ::= " + '("a" ' * MAX_GROUP_DEPTH + ")?" * MAX_GROUP_DEPTH)


def test_repetition_counts_past_the_bound_are_refused() -> None:
    with pytest.raises(GrammarError, match="repeats more than"):
        check_gbnf(f'root ::= "a"{{0,{MAX_REPEAT_COUNT + 1}}}')
    check_gbnf(f'root ::= "a"{{0,{MAX_REPEAT_COUNT}}}')


@pytest.mark.parametrize(
    ("bound", "value"),
    [("maxLength", 524288), ("minLength", 100000), ("maxItems", 100000), ("minItems", 5000)],
)
def test_huge_length_bounds_are_dropped_so_the_grammar_stays_shallow(
    bound: str, value: int
) -> None:
    kind = "string" if "Length" in bound else "array"
    schema = {"type": "object", "properties": {"x": {"type": kind, bound: value}}}
    grammar = schema_grammar(schema, param="tools[0].input_schema")
    check_gbnf(grammar)
    assert len(grammar) < 4000 and grammar.count("(") < 200


def test_modest_length_bounds_are_kept() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "string", "maxLength": 40}}}
    grammar = schema_grammar(schema, param="response_format")
    assert grammar.count("char") >= 40


@pytest.mark.parametrize(
    "schema", [{}, {"type": "string"}, {"type": "object", "properties": {"a": {"type": "string"}}}]
)
def test_json_strings_admit_no_raw_control_characters(schema: dict) -> None:
    rules = dict(
        line.split(" ::= ", 1) for line in schema_grammar(schema, param="x").splitlines() if line
    )
    # JSON forbids U+0000-U+001F unescaped; the converter's own rule admits them
    assert rules["char"].startswith(r'[^"\\\x7F\x00-\x1F] |')
