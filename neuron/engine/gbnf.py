"""A checker for GBNF grammars (llama.cpp's grammar format), run before llama.cpp sees one.

llama.cpp's grammar parser refuses some grammars by returning no grammar at all, and older
wrappers then sample with that NULL grammar and crash the process. Grammars that come from a
request (a JSON schema of a tool or of `response_format`) are therefore checked here first, so
that a bad schema is a 400 naming the field, never a dead neuron.

Pure: no llama_cpp. The check is deliberately strict where llama.cpp would accept a grammar that
can match nothing useful: a rule with an empty body (what an empty `enum`, `anyOf` or `type`
list turns into) is refused, as are empty groups, references to undefined rules and anything the
tokenizer cannot read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""
      (?P<space>[ \t]+|\#[^\n]*)
    | (?P<newline>\r?\n)
    | (?P<define>::=)
    | (?P<name>[A-Za-z0-9_-]+)
    | (?P<string>"(?:[^"\\\n]|\\.)*")
    | (?P<charclass>\[(?:[^\]\\]|\\.)*\])
    | (?P<token><\[[0-9]+\]>|<[^<>\s]+>|!<[^<>\s]+>)
    | (?P<open>\()
    | (?P<close>\))
    | (?P<alt>\|)
    | (?P<repeat>[*+?]|\{\s*[0-9]*\s*(?:,\s*[0-9]*\s*)?\})
    | (?P<any>\.)
    """,
    re.VERBOSE,
)


# llama.cpp parses nested groups by recursion on the calling thread's stack (about 220 bytes a
# level; an 8 MiB thread stack overflows near 37 000, and the process dies). Repetition counts
# become one generated rule each. Both are bounded far below what hurts and far above what a
# JSON schema needs once its large length bounds are dropped (see grammar.py).
MAX_GROUP_DEPTH = 1000
MAX_REPEAT_COUNT = 2048


class GrammarError(ValueError):
    """The grammar is unreadable or has a rule that can match nothing."""


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    offset: int


def _tokens(grammar: str) -> list[_Token]:
    tokens = []
    pos = 0
    while pos < len(grammar):
        match = _TOKEN.match(grammar, pos)
        if match is None:
            snippet = grammar[pos : pos + 20]
            raise GrammarError(f"unreadable grammar text at offset {pos}: {snippet!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(_Token(kind, match.group(), pos))
        pos = match.end()
    return tokens


def check_gbnf(grammar: str) -> None:
    """Raise `GrammarError` unless every rule of `grammar` is defined, readable and non-empty."""
    tokens = _tokens(grammar)
    rules: dict[str, list[_Token]] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token.kind == "newline":
            index += 1
            continue
        if token.kind != "name" or index + 1 >= len(tokens) or tokens[index + 1].kind != "define":
            raise GrammarError(f"expected a rule definition at offset {token.offset}")
        name = token.text
        body: list[_Token] = []
        index += 2
        depth = 0
        # A rule ends at a newline outside parentheses (llama.cpp allows newlines inside them).
        while index < len(tokens) and not (tokens[index].kind == "newline" and depth == 0):
            current = tokens[index]
            if current.kind == "open":
                depth += 1
                if depth > MAX_GROUP_DEPTH:
                    raise GrammarError(
                        f"rule {name!r} nests groups deeper than {MAX_GROUP_DEPTH} levels"
                    )
            elif current.kind == "close":
                depth -= 1
                if depth < 0:
                    raise GrammarError(f"unbalanced ')' in rule {name!r}")
            if current.kind != "newline":
                body.append(current)
            index += 1
        if depth:
            raise GrammarError(f"unbalanced '(' in rule {name!r}")
        if name in rules:
            raise GrammarError(f"rule {name!r} is defined twice")
        rules[name] = body
    if "root" not in rules:
        raise GrammarError("the grammar has no 'root' rule")
    for name, body in rules.items():
        _check_body(name, body, rules)


def _check_body(name: str, body: list[_Token], rules: dict[str, list[_Token]]) -> None:
    if not body:
        raise GrammarError(f"rule {name!r} is empty: it can match nothing")
    previous: _Token | None = None
    for token in body:
        if token.kind == "define":
            raise GrammarError(f"rule {name!r} has '::=' inside its body")
        if token.kind == "name" and token.text not in rules:
            raise GrammarError(f"rule {name!r} refers to undefined rule {token.text!r}")
        if token.kind == "close" and previous is not None and previous.kind == "open":
            raise GrammarError(f"rule {name!r} has an empty group '()'")
        if token.kind == "repeat" and (previous is None or previous.kind in ("open", "alt")):
            raise GrammarError(f"rule {name!r} repeats nothing with {token.text!r}")
        if token.kind == "repeat" and any(
            int(count) > MAX_REPEAT_COUNT for count in re.findall(r"[0-9]+", token.text)
        ):
            raise GrammarError(
                f"rule {name!r} repeats more than {MAX_REPEAT_COUNT} times ({token.text})"
            )
        previous = token
    # Every alternative at the top level must hold at least one item.
    depth = 0
    items = 0
    for token in body:
        if token.kind == "open":
            depth += 1
        elif token.kind == "close":
            depth -= 1
        if depth == 0 and token.kind == "alt":
            if items == 0:
                raise GrammarError(f"rule {name!r} has an empty alternative")
            items = 0
        elif token.kind != "alt" or depth:
            items += 1
    if items == 0:
        raise GrammarError(f"rule {name!r} has an empty alternative")
