"""Regenerate docs/img/dashboard.png: the overview of a local 3-node cluster
with two workers under a steady trickle of jobs, shot in headless Chromium.

    python -m tests.browser.readme_screenshot [--seconds 60]

Needs Debian's chromium and playwright, like tests/browser. Every process it
starts is stopped before it returns.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, TOKENS, credentials_toml
from tests.integration.harness import REPO, LocalCluster, WorkerProcess

OUT = REPO / "docs" / "img" / "dashboard.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="load before the shot (the charts fill in)")
    seconds = parser.parse_args().seconds
    with tempfile.TemporaryDirectory(prefix="raftq-shot-") as tmp:
        cluster = LocalCluster(Path(tmp), nodes=3, extra_config=credentials_toml())
        cluster.start()
        workers: list[WorkerProcess] = []
        try:
            leader = cluster.leader_id()
            workers = [WorkerProcess(cluster, f"worker-{i}", ["--queues", "emails,reports,default", "--threads", "4"])
                       for i in (1, 2)]
            with cluster.client() as c:
                c.schedule_add("nightly-report", "util.noop", cron="0 3 * * *", queue="reports")
                c.queue_limit("reports", max_running=2)
                with sync_playwright() as p:
                    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto(f"http://{cluster.http_addrs[leader - 1]}/dashboard/")
                    page.fill("#token", TOKENS["admin"])
                    page.click("#login button[type=submit]")
                    deadline = time.monotonic() + seconds
                    n = 0
                    while time.monotonic() < deadline:
                        # A wave that rises and falls, so the charts show something.
                        burst = 4 + int(6 * abs((n % 20) - 10) / 10)
                        for _ in range(burst):
                            c.submit("util.sleep", {"seconds": 0.3}, queue="emails")
                        c.submit("util.sleep", {"seconds": 2.0}, queue="reports")
                        if n % 15 == 0:
                            c.submit("util.fail", {"message": "smtp relay refused the message", "retryable": False},
                                     queue="emails", max_attempts=1)
                        n += 1
                        time.sleep(1.0)
                    OUT.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(OUT), full_page=True)
                    browser.close()
        finally:
            for w in workers:
                w.stop()
            cluster.stop()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
