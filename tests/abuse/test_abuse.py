"""The short abuse suite as one pytest test, run only when asked (RAFTQ_ABUSE=1).

`make abuse` runs the same suite through the runner (with the table); this entry
lets CI or a developer run it under pytest. Skipped by default so `make test`
stays fast: the suite starts ten clusters and takes about five minutes.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.abuse.attacks import ATTACKS, SHORT
from tests.abuse.runner import HEADER, row

pytestmark = pytest.mark.skipif(os.environ.get("RAFTQ_ABUSE") != "1",
                                reason="abuse suite: set RAFTQ_ABUSE=1 to run it (make abuse does not need it)")


@pytest.mark.timeout(900)
def test_short_abuse_suite(tmp_path: Path) -> None:
    outcomes = [attack(tmp_path / name, SHORT) for name, attack in ATTACKS.items()]
    table = "\n".join([HEADER, *(row(o) for o in outcomes)])
    violations = [f"{o.attack}: {v}" for o in outcomes for v in o.violations]
    assert not violations, table + "\n\n" + "\n".join(violations)
