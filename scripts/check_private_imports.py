"""Check that no module of ``ndax_async`` uses another module's private names.

A private name is one with a leading underscore (dunders aside). Flagged, in
every module of the package:

- ``from X import _name`` where ``_name`` is defined in ``X`` (a function,
  class or variable), not a submodule: importing a private *module* such as
  ``_wire`` or ``_clock`` is how the package is laid out, and fine;
- ``X._name`` where ``X`` is a module bound by an import in that file.

A private attribute reached through an object (``client._clock``) cannot be
seen without types, and is left to review.

Run ``python scripts/check_private_imports.py``: it prints each use as
``path:line: what`` and exits 1 if there is one. ``tests/test_layout.py`` runs it.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "ndax_async"

# Known uses in modules other sessions own, to be cleared by their owners; each entry
# is "path: what" as printed. An entry that no longer occurs is reported too.
KNOWN: frozenset[str] = frozenset()


def module_name(path: Path) -> str:
    """``ndax_async/bulk/engine.py`` -> ``ndax_async.bulk.engine`` (a package: its ``__init__``'s)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    """Whether ``name`` (dotted) is a module or package of the source tree."""
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` names."""
    if not node.level:
        return node.module or ""
    parts = importer.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def violations(path: Path) -> Iterator[tuple[int, str]]:
    """``(line, what)`` for each private name of another module that ``path`` uses."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    importer = module_name(path)
    modules: dict[str, str] = {}  # local name -> module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    modules[alias.asname] = alias.name
                else:
                    modules[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            source = resolve(node, importer, path.name == "__init__.py")
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if is_module(full):
                    modules[alias.asname or alias.name] = full
                elif is_private(alias.name) and source.split(".")[0] == PACKAGE:
                    yield node.lineno, f"from {source} import {alias.name}"
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and is_private(node.attr)
            and modules[node.value.id].split(".")[0] == PACKAGE
            and not is_module(f"{modules[node.value.id]}.{node.attr}")
        ):
            yield node.lineno, f"{modules[node.value.id]}.{node.attr}"


def check(root: Path = ROOT) -> tuple[list[str], list[str]]:
    """The uses found (known ones aside), and the known ones that no longer occur."""
    found: list[str] = []
    seen: set[str] = set()
    for path in sorted((root / PACKAGE).rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        for line, what in violations(path):
            key = f"{relative}: {what}"
            seen.add(key)
            if key not in KNOWN:
                found.append(f"{relative}:{line}: {what}")
    return found, sorted(KNOWN - seen)


def main() -> int:
    """Print what :func:`check` finds; exit status 1 if anything."""
    found, gone = check()
    for item in found:
        print(f"{item}: a private name of another module")
    for item in gone:
        print(f"{item}: listed as known in scripts/check_private_imports.py but no longer used; remove it")
    return 1 if found or gone else 0


if __name__ == "__main__":
    sys.exit(main())
