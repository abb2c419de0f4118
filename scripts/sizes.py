"""Fail when a module of the package grows over 400 lines or a class over 250 (run by scripts/test).

A file that size is two files waiting to be separated; see ../shared/STYLE.md and the README's map.
"""

from __future__ import annotations

import ast
import pathlib
import sys

MODULE_MAX, CLASS_MAX = 400, 250


def main() -> int:
    package = pathlib.Path(__file__).resolve().parent.parent / "daemon" / "clipwatch"
    problems = []
    for path in sorted(package.rglob("*.py")):
        source = path.read_text()
        if (lines := len(source.splitlines())) > MODULE_MAX:
            problems.append(f"{path}: {lines} lines (at most {MODULE_MAX})")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and (size := (node.end_lineno or 0) - node.lineno + 1) > CLASS_MAX:
                problems.append(f"{path}:{node.lineno}: class {node.name} has {size} lines (at most {CLASS_MAX})")
    for problem in problems:
        print(f"sizes: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
