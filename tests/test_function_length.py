"""No function body over 50 lines (its docstring excluded): a function that long
does several things, and each of them deserves a name (issue 30).

The library (nndl_jax/) and the experiments (experiments/) are held to it
here; ``python tests/test_function_length.py`` lists what is over the limit.
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIMIT = 50
ASSERTED = ["nndl_jax", "experiments"]


def body_lines(fn):
    """The lines of ``fn``'s body from its first statement after the docstring to its last line."""
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return 0 if not body else body[-1].end_lineno - body[0].lineno + 1


def long_functions(folder, limit=LIMIT):
    """``["path:line name (n lines)"]`` for every function (nested ones too) of ``folder``'s
    modules whose body is over ``limit`` lines."""
    found = []
    for path in sorted((REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and body_lines(node) > limit:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({body_lines(node)} lines)")
    return found


def test_body_lines_counts_from_after_the_docstring_to_the_last_line():
    source = ('def f():\n    """doc\n    more"""\n    a = 1\n\n    return (a,\n            2)\n\n'
              'def g():\n    """only"""\n')
    f, g = ast.parse(source).body
    assert body_lines(f) == 4 and body_lines(g) == 0


@pytest.mark.parametrize("folder", ASSERTED)
def test_no_function_body_is_over_50_lines(folder):
    assert long_functions(folder) == []


if __name__ == "__main__":
    for folder in ASSERTED:
        print(folder, long_functions(folder) or "none over the limit")
