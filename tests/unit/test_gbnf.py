"""The GBNF checker that stands between request schemas and llama.cpp's grammar parser."""

from __future__ import annotations

import pytest

from neuron.engine.gbnf import GrammarError, check_gbnf
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
