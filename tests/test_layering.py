"""Imports go one way (DESIGN.md §2), the way trio's `_core` layering test keeps its core clean."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("events", "policies", "providers", "runtime")

# package → the project packages it may import
ALLOWED = {
    "events": set(),
    "policies": {"events"},
    "providers": {"events"},
    "runtime": {"events", "policies", "providers"},
}
# package → third-party modules it must not import
FORBIDDEN = {
    "events": {"trio", "httpx", "quart", "quart_trio", "hypercorn"},
    "policies": {"trio", "httpx", "quart", "quart_trio", "hypercorn", "eventsourcing", "sqlite_utils", "anyio"},
    "providers": {"quart", "quart_trio", "hypercorn", "eventsourcing", "sqlite_utils"},
    "runtime": set(),
}
# Only the store adapter speaks eventsourcing (DESIGN §2).
EVENTSOURCING_HOME = {ROOT / "events" / "store.py"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_go_one_way(package: str) -> None:
    problems = []
    for path in modules(package):
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                problems.append(f"{path.relative_to(ROOT)} imports {name}")
            if top in FORBIDDEN[package]:
                problems.append(f"{path.relative_to(ROOT)} imports {name} (not allowed in {package}/)")
            if top == "eventsourcing" and path not in EVENTSOURCING_HOME:
                problems.append(f"{path.relative_to(ROOT)} imports eventsourcing (only events/store.py may)")
    assert not problems, "\n".join(problems)


def test_every_package_is_listed_in_pyproject() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'packages = ["events", "policies", "providers", "runtime"]' in text
    for package in PACKAGES:
        assert modules(package), f"{package}/ has no modules"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import trio\nfrom runtime.web import create_app\nfrom . import sibling\n")
    assert imported_modules(bad) == {"trio", "runtime.web"}
