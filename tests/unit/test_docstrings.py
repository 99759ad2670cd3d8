"""Every module and public class states its job, and every public function is typed.

Read from the source with `ast` (nothing is imported). Public means a name without a leading
underscore, at module level or on a public class; `tests/` is not held to it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cortex", "neuron", "synapse", "tools/quantize")


def _sources() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def _public_functions(
    body: list[ast.stmt],
) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [
        node
        for node in body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and not node.name.startswith("_")
    ]


def _untyped(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    arguments = function.args
    named = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
    if arguments.vararg is not None:
        named.append(arguments.vararg)
    if arguments.kwarg is not None:
        named.append(arguments.kwarg)
    params = [a for a in named if a.arg not in ("self", "cls")]
    return function.returns is None or any(a.annotation is None for a in params)


def test_every_module_and_public_class_has_a_docstring() -> None:
    missing = []
    for path in _sources():
        tree = ast.parse(path.read_text())
        where = str(path.relative_to(ROOT))
        if not ast.get_docstring(tree):
            missing.append(where)
        for node in tree.body:
            public = isinstance(node, ast.ClassDef) and not node.name.startswith("_")
            if public and not ast.get_docstring(node):
                missing.append(f"{where}: class {node.name}")
    assert missing == []


def test_every_public_function_and_method_has_type_hints() -> None:
    untyped = []
    for path in _sources():
        tree = ast.parse(path.read_text())
        where = str(path.relative_to(ROOT))
        functions = _public_functions(tree.body)
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                functions += _public_functions(node.body)
        untyped += [f"{where}: {f.name}" for f in functions if _untyped(f)]
    assert untyped == []


def test_the_checks_see_what_they_are_for() -> None:
    tree = ast.parse("class Open:\n    def go(self, n):\n        return n\n")
    cls = tree.body[0]
    assert isinstance(cls, ast.ClassDef) and not ast.get_docstring(cls)
    assert [_untyped(f) for f in _public_functions(cls.body)] == [True]
