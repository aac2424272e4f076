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
    assert 'include = ["events*", "policies*", "providers*", "runtime*"]' in text
    for package in PACKAGES:
        assert modules(package), f"{package}/ has no modules"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import trio\nfrom runtime.http.app import create_app\nfrom . import sibling\n")
    assert imported_modules(bad) == {"trio", "runtime.http.app"}


# Inside runtime/ (DESIGN.md §2): sub-packages import downward only, cli → http → chat → actors → ledger.
# `gateway.py` composes the actors and the ledger for the HTTP edge and the CLI; `config`, `errors` and
# `auth` are leaves any part may use. Imports under `if TYPE_CHECKING:` count too: a cycle of types is a cycle.
RUNTIME_ORDER = ("cli", "http", "gateway", "chat", "actors", "ledger")
# `metrics` holds the Prometheus instruments chat/, actors/, ledger/'s Journal and the HTTP edge record
# into, `telemetry` the OpenTelemetry tracer provider (issue #15): leaves, like config.
RUNTIME_LEAVES = {"config", "errors", "auth", "metrics", "telemetry"}
# Edges that break the rule today, to be removed (issue: explicit collaborators instead of a service locator).
# The test fails when one is fixed without being taken off this list, so the list only shrinks.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def runtime_part(path: Path) -> str:
    relative = path.relative_to(ROOT / "runtime")
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def runtime_edges() -> set[tuple[str, str]]:
    edges = set()
    for path in modules("runtime"):
        source = runtime_part(path)
        if source == "__init__":
            continue
        for name in imported_modules(path):
            parts = name.split(".")
            if parts[0] != "runtime" or len(parts) < 2 or parts[1] == source:
                continue
            edges.add((f"{path.relative_to(ROOT)}", parts[1]))
    return edges


def upward(source: str, target: str) -> bool:
    if target in RUNTIME_LEAVES:
        return False
    if source in RUNTIME_LEAVES:
        return True  # a leaf imports only other leaves
    return RUNTIME_ORDER.index(target) <= RUNTIME_ORDER.index(source)


def test_runtime_sub_packages_import_downward_only() -> None:
    found = {(path, target) for path, target in runtime_edges() if upward(runtime_part(ROOT / path), target)}
    assert found - KNOWN_UPWARD == set(), "\n".join(f"{p} imports runtime.{t}" for p, t in sorted(found - KNOWN_UPWARD))
    assert KNOWN_UPWARD - found == set(), f"fixed: take these off KNOWN_UPWARD: {sorted(KNOWN_UPWARD - found)}"


def test_every_runtime_module_has_a_place() -> None:
    parts = {runtime_part(path) for path in modules("runtime")} - {"__init__"}
    assert parts <= set(RUNTIME_ORDER) | RUNTIME_LEAVES, sorted(parts - set(RUNTIME_ORDER) - RUNTIME_LEAVES)
