"""The package's import graph: library modules never import a CLI module.

Every verb's entry point is ``fundusfm.<package>.cli:<verb>_main`` (docs/architecture.md);
the dispatcher ``fundusfm.cli`` reaches them by name. Anything else importing a ``cli``
module (at the top or inside a function) would make library code depend on argument
parsing, and is what this test refuses.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "fundusfm"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str) -> set[str]:
    """Every module an import statement of ``source`` names (relative imports resolved
    against ``module``), including ``from pkg import name`` as ``pkg.name``."""
    out: set[str] = set()
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def is_cli(module: str) -> bool:
    return module == "fundusfm.cli" or module.endswith(".cli")


def cli_imports(source: str, module: str) -> list[str]:
    return sorted(m for m in imported_modules(source, module) if m.startswith("fundusfm") and is_cli(m))


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_seen():
    names = {module_name(p) for p in MODULES}
    assert {"fundusfm.task", "fundusfm.layout", "fundusfm.tracking.store", "fundusfm.release.export"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_module_imports_a_cli_module(path):
    module = module_name(path)
    found = cli_imports(path.read_text(), module)
    assert not found, f"{path}: imports CLI module(s) {found}; move the shared code into a library module"


def test_the_check_finds_imports_of_cli_modules():
    # the planted imports this test exists to catch, in each spelling
    assert cli_imports("from fundusfm.evaluate.cli import evaluate_run\n", "fundusfm.release.export") == [
        "fundusfm.evaluate.cli"]
    assert cli_imports("def f():\n    from fundusfm.evaluate import cli\n", "fundusfm.release.export") == [
        "fundusfm.evaluate.cli"]
    assert cli_imports("import fundusfm.train.cli as c\n", "fundusfm.train.engine") == ["fundusfm.train.cli"]
    assert cli_imports("from .cli import infer_main\n", "fundusfm.train.engine") == ["fundusfm.train.cli"]
    assert cli_imports("from fundusfm.evaluate.record import evaluate_run\n", "fundusfm.release.export") == []


def test_every_verb_has_its_entry_point_in_a_cli_module():
    from fundusfm.cli import VERBS, entry_point

    for verb, (package, _) in VERBS.items():
        fn = entry_point(verb)
        assert fn.__module__ == f"fundusfm.{package}.cli"
        assert fn.__name__ == f"{verb.replace('-', '_')}_main"
