"""The dashboard in headless Chromium against a live 3-node cluster: its pages
show the cluster's real jobs, follow them as they change, and carry out
requeue and pause/resume for an admin credential only."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.browser.conftest import TOKENS, screenshot
from tests.integration.harness import REPO, TOKEN, LocalCluster, wait_until

WAIT_MS = 20_000  # how long the page may take to show a change (it polls every 2 s)


def dashboard_url(cluster: LocalCluster, node_id: int) -> str:
    return f"http://{cluster.http_addrs[node_id - 1]}/dashboard/"


def open_dashboard(tab: Any, url: str, role: str) -> None:
    """Load the page and give it `role`'s token once, as a person would."""
    tab.goto(url)
    tab.fill("#token", TOKENS[role])
    tab.click("#login button[type=submit]")


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect
    return playwright_expect(locator)


def lease_one(cluster: LocalCluster, worker: str, queue: str) -> dict[str, Any]:
    with cluster.client() as c:
        jobs = c.lease(worker, [queue], max=1, wait_s=5.0)
    assert len(jobs) == 1
    return jobs[0]


def test_overview_shows_the_cluster_its_queues_and_workers(dash_cluster: LocalCluster, page: Any) -> None:
    leader = dash_cluster.leader_id()
    with dash_cluster.client() as c:
        for i in range(3):
            c.submit("email.send", {"to": f"user{i}@example.com", "subject": "hello", "body": "hi"},
                     queue="dash-emails")
    leased = lease_one(dash_cluster, "dash-worker-1", "dash-emails")

    open_dashboard(page, dashboard_url(dash_cluster, leader), "producer")
    expect(page.locator("#cluster tbody tr")).to_have_count(3, timeout=WAIT_MS)
    expect(page.locator(f'#cluster tr[data-node="{leader}"]')).to_contain_text("leader")
    expect(page.locator("#cluster .state-leader")).to_have_count(1)
    queue_row = page.locator('#queues tr[data-queue="dash-emails"]')
    # queue columns: name, then pending, scheduled, queued, running, succeeded, ...
    expect(queue_row.locator("td").nth(3)).to_have_text("2", timeout=WAIT_MS)
    expect(queue_row.locator("td").nth(4)).to_have_text("1")
    worker_row = page.locator('#workers tr[data-worker="dash-worker-1"]')
    expect(worker_row).to_contain_text(leased["id"], timeout=WAIT_MS)

    # The job completes: the page shows it without a reload.
    with dash_cluster.client() as c:
        c.complete(leased["id"], leased["attempt"], {"sent": True}, lease_token=leased["lease_token"])
    expect(queue_row.locator("td").nth(5)).to_have_text("1", timeout=WAIT_MS)
    expect(queue_row.locator("td").nth(4)).to_have_text("0")
    expect(page.locator("#charts svg")).to_have_count(3)
    screenshot(page, "overview")

    # A follower serves the page too, from its own replica.
    follower = next(i for i in range(1, 4) if i != leader)
    page.goto(dashboard_url(dash_cluster, follower))  # another origin (port): the token is asked again
    page.fill("#token", TOKENS["producer"])
    page.click("#login button[type=submit]")
    expect(page.locator("#served-by")).to_contain_text(f"node {follower} (follower)", timeout=WAIT_MS)
    expect(page.locator('#queues tr[data-queue="dash-emails"] td').nth(5)).to_have_text("1", timeout=WAIT_MS)
    screenshot(page, "overview-follower")


def test_job_search_and_job_page_follow_a_job(dash_cluster: LocalCluster, page: Any) -> None:
    leader = dash_cluster.leader_id()
    with dash_cluster.client() as c:
        job_id = c.submit("report.build", {"customer": "ada", "pages": 12}, queue="dash-reports")

    open_dashboard(page, dashboard_url(dash_cluster, leader) + "#/jobs?queue=dash-reports", "producer")
    row = page.locator(f'#jobs tr[data-job="{job_id}"]')
    expect(row).to_contain_text("queued", timeout=WAIT_MS)
    expect(row).to_contain_text("ada")
    row.locator("a").click()

    expect(page.locator('#job dd[data-field="state"]')).to_have_text("queued", timeout=WAIT_MS)
    expect(page.locator("#job-args")).to_contain_text('"customer": "ada"')
    leased = lease_one(dash_cluster, "dash-worker-2", "dash-reports")
    assert leased["id"] == job_id
    lease = {"id": job_id, "attempt": leased["attempt"], "lease_token": leased["lease_token"],
             "progress": [0.5, "page 6 of 12"]}
    with dash_cluster.client() as c:
        c.heartbeat("dash-worker-2", [lease])
    expect(page.locator('#job dd[data-field="state"]')).to_have_text("running", timeout=WAIT_MS)
    expect(page.locator('#job dd[data-field="progress"]')).to_contain_text("50% page 6 of 12")
    expect(page.locator('#job dd[data-field="worker"]')).to_have_text("dash-worker-2")

    with dash_cluster.client() as c:
        c.complete(job_id, leased["attempt"], {"pages": 12, "url": "s3://reports/ada.pdf"},
                   lease_token=leased["lease_token"])
    expect(page.locator('#job dd[data-field="state"]')).to_have_text("succeeded", timeout=WAIT_MS)
    expect(page.locator("#job-result")).to_contain_text("s3://reports/ada.pdf")
    expect(page.locator("#view")).to_contain_text("finished")  # the timeline's last step
    screenshot(page, "job")


def make_dead_letter(cluster: LocalCluster, queue: str) -> str:
    with cluster.client() as c:
        job_id = c.submit("http.fetch", {"url": "http://example.invalid/"}, queue=queue, max_attempts=1)
    leased = lease_one(cluster, "dash-worker-3", queue)
    with cluster.client() as c:
        c.fail(job_id, leased["attempt"], "connection refused: example.invalid", retryable=False,
               lease_token=leased["lease_token"])
        assert c.get(job_id)["state"] == "failed"
    return job_id


def state_of(cluster: LocalCluster, job_id: str) -> str:
    with cluster.client() as c:
        state: str = c.get(job_id)["state"]
    return state


def test_requeue_a_dead_letter_from_the_page(dash_cluster: LocalCluster, page: Any) -> None:
    leader = dash_cluster.leader_id()
    job_id = make_dead_letter(dash_cluster, "dash-dead")

    open_dashboard(page, dashboard_url(dash_cluster, leader) + "#/dead", "admin")
    row = page.locator(f'#dead tr[data-job="{job_id}"]')
    expect(row).to_contain_text("connection refused", timeout=WAIT_MS)
    screenshot(page, "dead-letters")
    row.locator("button.requeue").click()
    expect(page.locator("#notice")).to_contain_text("requeued 1", timeout=WAIT_MS)
    wait_until(lambda: state_of(dash_cluster, job_id) == "queued", 10, "the requeued job to be queued")
    expect(row).to_have_count(0, timeout=WAIT_MS)


def raftq_cli(cluster: LocalCluster, *args: str) -> Any:
    out = subprocess.run([sys.executable, "-m", "cli.main", *args, "--json"], cwd=REPO, capture_output=True,
                         text=True, timeout=60,
                         env={**os.environ, "RAFTQ_CLUSTER": ",".join(cluster.client_addrs), "RAFTQ_TOKEN": TOKEN})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def paused_in_cli(cluster: LocalCluster, name: str) -> bool:
    schedules = {s["name"]: s for s in raftq_cli(cluster, "schedule", "list")}
    return bool(schedules[name]["paused"])


def test_pause_and_resume_a_schedule_from_the_page(dash_cluster: LocalCluster, page: Any) -> None:
    leader = dash_cluster.leader_id()
    with dash_cluster.client() as c:
        c.schedule_add("dash-nightly", "report.build", {"customer": "all"}, cron="0 3 * * *", queue="dash-reports")

    open_dashboard(page, dashboard_url(dash_cluster, leader) + "#/schedules", "admin")
    row = page.locator('#schedules tr[data-schedule="dash-nightly"]')
    expect(row).to_contain_text("cron 0 3 * * *", timeout=WAIT_MS)
    expect(row).to_contain_text("active")
    row.locator("button.toggle").click()
    expect(row).to_contain_text("paused", timeout=WAIT_MS)
    assert paused_in_cli(dash_cluster, "dash-nightly")
    screenshot(page, "schedules")
    row.locator("button.toggle").click()
    expect(row).to_contain_text("active", timeout=WAIT_MS)
    assert not paused_in_cli(dash_cluster, "dash-nightly")

    # A follower's page points actions at the leader instead of carrying them out.
    follower = next(i for i in range(1, 4) if i != leader)
    open_dashboard(page, dashboard_url(dash_cluster, follower) + "#/schedules", "admin")
    page.locator('#schedules tr[data-schedule="dash-nightly"] button.toggle').click()
    notice = page.locator("#notice")
    expect(notice).to_contain_text("Actions are served by the leader at", timeout=WAIT_MS)
    expect(notice.locator("a")).to_have_attribute("href", dashboard_url(dash_cluster, leader) + "#/schedules")
    assert not paused_in_cli(dash_cluster, "dash-nightly")


def test_actions_need_the_admin_credential(dash_cluster: LocalCluster, page: Any) -> None:
    leader = dash_cluster.leader_id()
    job_id = make_dead_letter(dash_cluster, "dash-refused")

    open_dashboard(page, dashboard_url(dash_cluster, leader) + "#/dead?queue=dash-refused", "producer")
    row = page.locator(f'#dead tr[data-job="{job_id}"]')
    expect(row).to_be_visible(timeout=WAIT_MS)
    row.locator("button.requeue").click()
    expect(page.locator("#notice")).to_contain_text("needs the admin role", timeout=WAIT_MS)
    assert state_of(dash_cluster, job_id) == "failed"

    # A worker credential may not read jobs; a wrong token gets the token form back.
    page.click("#sign-out")
    open_dashboard(page, dashboard_url(dash_cluster, leader) + "#/jobs", "worker")
    expect(page.locator("#notice")).to_contain_text("needs the admin or producer role", timeout=WAIT_MS)
    page.evaluate("sessionStorage.setItem('raftq.dashboard.token', 'not-a-token-of-this-cluster')")
    page.reload()
    expect(page.locator("#login")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#login-reason")).to_have_text("invalid token")

    # Without the page: no token, no action, whatever the body says.
    request = urllib.request.Request(dashboard_url(dash_cluster, leader) + "api/requeue", method="POST",
                                     data=json.dumps({"ids": [job_id]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    assert refused.value.code == 401
    assert state_of(dash_cluster, job_id) == "failed"
