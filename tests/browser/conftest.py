"""Real headless Chromium against a real 3-node cluster (tests/integration/harness.py).

Debian's `chromium` driven by Python playwright (the `test` extra); nothing is
downloaded (never `playwright install`). Where either is missing every test
here is skipped, with the reason in pytest's summary. Screenshots go to
$RAFTQ_SCREENSHOTS (default /tmp/raftq-screenshots), which CI keeps.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.integration.conftest import clusters
from tests.integration.harness import LocalCluster

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("RAFTQ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
SCREENSHOTS = Path(os.environ.get("RAFTQ_SCREENSHOTS", "/tmp/raftq-screenshots"))
# One credential per role the dashboard cares about (the cluster's legacy token
# holds every role: the tests' own clients and the CLI use it).
TOKENS = {"admin": secrets.token_urlsafe(24), "producer": secrets.token_urlsafe(24),
          "worker": secrets.token_urlsafe(24)}


def credentials_toml() -> str:
    return "\n".join(f'[[credentials]]\nname = "{role}"\ntoken = "{token}"\nroles = ["{role}"]'
                     for role, token in TOKENS.items())


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per module; every test opens its own context
    (a fresh profile: empty sessionStorage, no cookies)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set RAFTQ_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def dash_cluster(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """(Asks for the browser first: without one, no cluster is started to be skipped.)"""
    for make in clusters(tmp_path_factory.mktemp("dashboard")):
        yield make(nodes=3, extra_config=credentials_toml())


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert errors == [], f"the page raised: {errors}"


def screenshot(tab: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    return path

