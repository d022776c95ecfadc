"""No function in the package is too long to read or takes too many arguments.

Past ~80 lines a function does several things; past ~8 parameters the missing object
(``Trainer``, ``LoaderSpec``) is usually visible (CONVENTIONS.md, 13).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "resnet_mlops"
MAX_LINES = 80
MAX_PARAMS = 8


def _is_cli_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether ``node`` is decorated ``@app.command(...)``: a typer command, whose parameters
    are its command-line flags (typer has no way to take them as one object), so only the line
    limit applies to it."""
    return any(
        isinstance(d, ast.Call)
        and isinstance(d.func, ast.Attribute)
        and d.func.attr == "command"
        and isinstance(d.func.value, ast.Name)
        and d.func.value.id == "app"
        for d in node.decorator_list
    )


def _param_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Every parameter, keyword-only and ``*args``/``**kwargs`` included, ``self``/``cls`` not."""
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names)


def offenders(package: Path = PACKAGE) -> list[str]:
    """``path:line name (N lines, M params)`` for each function over either limit.

    Lines run from the ``def`` to the last line of the body (decorators not counted). A typer
    command's parameters are not counted (see :func:`_is_cli_command`).
    """
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = node.end_lineno - node.lineno + 1
            params = 0 if _is_cli_command(node) else _param_count(node)
            if lines > MAX_LINES or params > MAX_PARAMS:
                found.append(
                    f"{relative}:{node.lineno} {node.name} ({lines} lines, {params} params)"
                )
    return found


def test_the_counter_sees_long_functions_and_long_argument_lists(tmp_path: Path) -> None:
    body = "\n".join("    x = 1" for _ in range(MAX_LINES))
    (tmp_path / "m.py").write_text(
        f"def long():\n{body}\n\n"
        "def short(a, b):\n    return a\n\n"
        "class C:\n    def many(self, a, b, c, d, e, f, g, h, *, i):\n        pass\n\n"
        "@app.command('x')\ndef flags(a, b, c, d, e, f, g, h, i):\n    pass\n\n"
        "@other.command('x')\ndef not_cli(a, b, c, d, e, f, g, h, i):\n    pass\n"
    )
    assert offenders(tmp_path) == [
        f"m.py:1 long ({MAX_LINES + 1} lines, 0 params)",
        f"m.py:{MAX_LINES + 15} not_cli (2 lines, 9 params)",  # ast.walk: the module first
        f"m.py:{MAX_LINES + 7} many (2 lines, 9 params)",
    ]


def test_no_function_is_over_the_limits() -> None:
    found = offenders()
    assert found == [], "\n".join(found)
