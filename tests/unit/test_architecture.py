"""The arrows between raftq's packages point one way (docs/architecture.md):

    cli -> worker -> cluster -> replication

A package may import any package to its right, never one to its left: the
state machine and its replication know nothing of the server, the server
nothing of the worker, the worker nothing of the command line. No production
package imports the load-test tools. (Imports of `tests` are
test_production_isolation.py's concern.)

Every import counts, wherever it stands: at the top, inside a function, under
`TYPE_CHECKING`, or relative (`from ..cluster import x` is resolved first).
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Left to right: each package may import only those after it.
LAYERS = ("cli", "worker", "cluster", "replication")
# Top-level packages of this repo that no production package may import.
TOOLS = ("loadtest",)


def forbidden_for(package: str) -> frozenset[str]:
    """The packages `package` must not import."""
    return frozenset(LAYERS[:LAYERS.index(package)] + TOOLS)


def imported_packages(source: str, module: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in `source`, the text of the
    dotted `module` (e.g. "replication.state.jobs"; a package's own module ends
    in ".__init__")."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                target = node.module or ""
            else:  # relative: climb from the importing module's package
                base = module.split(".")[:-node.level]
                target = ".".join(base + ([node.module] if node.module else []))
            if target:
                found.append((node.lineno, target.split(".")[0]))
    return found


imported_packages.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def wrong_arrows(package: str, source: str, module: str) -> list[str]:
    forbidden = forbidden_for(package)
    return [f"line {line}: imports {target}" for line, target in imported_packages(source, module)
            if target in forbidden]


def test_the_layers_are_the_installed_packages() -> None:
    """A new top-level package must be given its place here before it is checked."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(name.rstrip("*") for name in include) == sorted(LAYERS)


def test_imports_point_one_way() -> None:
    problems = []
    checked = 0
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            problems += [f"{path.relative_to(REPO)} {wrong}"
                         for wrong in wrong_arrows(package, path.read_text(), module)]
            checked += 1
    assert checked > 50  # the packages were found
    assert problems == []


def test_the_scan_sees_every_kind_of_import() -> None:
    source = '''
from __future__ import annotations
import msgpack
import cluster.errors
from typing import TYPE_CHECKING
from replication import codes
from . import jobs
from ..cluster import server
if TYPE_CHECKING:
    from worker.runner import Worker
def late():
    import cli.main
'''
    assert imported_packages(source, "replication.state.jobs") == [
        (2, "__future__"), (3, "msgpack"), (4, "cluster"), (5, "typing"), (6, "replication"),
        (7, "replication"), (8, "replication"), (10, "worker"), (12, "cli")]
    # From a module one level up, `..cluster` leaves the package.
    assert (8, "cluster") in imported_packages(source, "replication.raft")
    assert wrong_arrows("replication", source, "replication.raft") == [
        "line 4: imports cluster", "line 8: imports cluster", "line 10: imports worker", "line 12: imports cli"]
    assert wrong_arrows("cli", source, "cli.main") == []
    assert wrong_arrows("worker", "import loadtest.bench\nimport cluster.client\n", "worker.x") == [
        "line 1: imports loadtest"]
