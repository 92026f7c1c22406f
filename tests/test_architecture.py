"""The house's rules that a reader relies on: pipelines import shared modules, never each
other; one catalog."""

from __future__ import annotations

import ast

from tests.conftest import PROJECT_ROOT

PIPELINES = PROJECT_ROOT / "src" / "fruits_pipeline" / "pipelines"


def _imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def test_no_pipeline_imports_another():
    names = sorted(
        folder.name for folder in PIPELINES.iterdir() if (folder / "pipeline.py").exists()
    )
    assert len(names) >= 4
    for name in names:
        for path in (PIPELINES / name).glob("*.py"):
            others = {
                module
                for module in _imported_modules(path)
                for other in names
                if other != name and module.startswith(f"fruits_pipeline.pipelines.{other}")
            }
            assert not others, f"{path.relative_to(PROJECT_ROOT)} imports {sorted(others)}"
