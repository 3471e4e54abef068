"""The docs name tests as evidence; every test they name exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test")}


def test_every_test_the_loss_paths_table_names_exists() -> None:
    text = (REPO / "docs" / "RELIABILITY.md").read_text()
    section = text[text.index("## Loss paths closed") : text.index("## 1. Chaos")]
    named: list[tuple[str, str]] = []
    for row in (line for line in section.splitlines() if line.startswith("| ") and "::" in line):
        previous = None
        for ref in re.findall(r"`([^`]*::[^`]*)`", row.rsplit("|", 2)[-2]):
            where, name = ref.split("::", 1)
            where = {"D": "test_delivery_loss_paths.py", "…": previous}.get(where, where)
            previous = where
            named.append((str(where), name.split("[")[0]))
    assert len(named) >= 20
    for where, name in named:
        assert name in defined_tests(REPO / "tests" / where), f"{where}::{name} is named in RELIABILITY.md"
