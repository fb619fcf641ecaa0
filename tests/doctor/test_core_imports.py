"""core/ holds the data model, the checks and the naming rules; everything else builds on it, so
no module under core/ may import from the packages above it."""

from __future__ import annotations

import ast
from pathlib import Path

import muvo_doctor

CORE = Path(muvo_doctor.__file__).parent / "core"
ABOVE = {"logs", "run", "face", "commands", "integrations", "recorder", "cli"}


def _imported(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def test_no_core_module_imports_a_package_above_core():
    modules = sorted(CORE.rglob("*.py"))
    assert len(modules) > 10
    upward = [
        f"{p.relative_to(CORE.parent)}:{line} imports {name}"
        for p in modules
        for line, name in _imported(p)
        if name.startswith(".") or name.split(".")[0] == "muvo_doctor" and name.split(".")[1] in ABOVE
    ]
    assert upward == []
