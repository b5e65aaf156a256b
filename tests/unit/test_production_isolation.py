"""Test hooks stay in tests: no production module reads a RAFTQ_TEST*
environment variable or imports from `tests` (the fault suite injects its
bugs through tests/fault/buggy_node.py instead)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCTION_PACKAGES = ("cluster", "replication", "worker", "cli")
TEST_VARIABLE_PREFIX = "RAFTQ_TEST"


def test_hook_uses(source: str) -> list[str]:
    """Each line of `source` that names a test variable or imports from tests."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith(TEST_VARIABLE_PREFIX):
            found.append(f"line {node.lineno}: names {node.value!r}")
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: imports {a.name}" for a in node.names
                      if a.name == "tests" or a.name.startswith("tests.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None \
                and (node.module == "tests" or node.module.startswith("tests.")):
            found.append(f"line {node.lineno}: imports from {node.module}")
    return found


test_hook_uses.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def test_no_production_module_reads_test_variables_or_imports_tests() -> None:
    modules = [p for pkg in PRODUCTION_PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    assert len(modules) > 20  # the packages were found
    problems = [f"{path.relative_to(REPO)} {use}" for path in modules
                for use in test_hook_uses(path.read_text())]
    assert problems == []


def test_the_scan_sees_reads_and_imports() -> None:
    source = '''
import os
import tests.fault.jobs
from tests.fault import buggy_node
from .tests import fine  # a package's own relative module, not the test suite
BUG = os.environ.get("RAFTQ_TEST_INJECT_BUG")
OTHER = os.getenv("RAFTQ_TOKEN")
'''
    assert test_hook_uses(source) == ["line 3: imports tests.fault.jobs", "line 4: imports from tests.fault",
                                      "line 6: names 'RAFTQ_TEST_INJECT_BUG'"]
