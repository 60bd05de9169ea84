"""probex_core is a pure library: it must never import dagster."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "probex_core"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_dagster():
    files = sorted(CORE.rglob("*.py"))
    assert files, "probex_core has no modules"
    offenders = [
        str(f) for f in files if {"dagster", "assets", "orchestration"} & _imported_modules(f)
    ]
    assert offenders == []


def test_boundary_check_detects_an_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import dagster\nfrom dagster import asset\n")
    assert "dagster" in _imported_modules(bad)


def test_assets_never_import_orchestration():
    """Orchestration (definitions, jobs, sensors, the CLI) imports the assets; the assets and
    their resources never import orchestration back."""
    assets = sorted((CORE.parent / "assets").rglob("*.py"))
    assert assets
    assert [str(f) for f in assets if "orchestration" in _imported_modules(f)] == []
