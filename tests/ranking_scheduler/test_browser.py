"""A clinician in a real browser (Debian chromium via playwright) against the real Label Studio,
and a project lead opening the dashboard. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.chromium import CHROMIUM, CHROMIUM_FLAGS
from tests.ranking_scheduler.test_service_harness import (
    InProcessScheduler,
    make_raters,
    provision_setup,
    rank_next,
)

ARTIFACTS = Path(os.environ.get("SLICERANK_TEST_ARTIFACTS", "test-artifacts"))
pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="apt-get install chromium"),
]


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=list(CHROMIUM_FLAGS),
        )
        yield chromium
        chromium.close()


@pytest.fixture
def running(label_studio, tmp_path):
    setup = provision_setup(label_studio, tmp_path, SCHEDULER_MIN_OPEN_TASKS=2)
    sched = InProcessScheduler(setup)
    yield setup, sched
    sched.stop()


def _order(page) -> list[str]:
    return page.eval_on_selector_all(
        ".htx-ranker-item", "els => els.map(e => e.getAttribute('data-ranker-id'))"
    )


def test_clinician_drags_a_slice_and_the_scheduler_applies_that_order(
    running, label_studio, browser
):
    setup, sched = running
    (rater,) = make_raters(label_studio, 1)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    # Log in through the real form (local-file images need the session cookie).
    page.goto(f"{label_studio.url}/user/login/")
    page.fill("input[name=email]", rater.email)
    page.fill("input[name=password]", rater.password)
    page.click("button.login-button")
    page.wait_for_url(lambda url: "/user/login" not in url, timeout=60_000)
    # The labelling stream of the Rank project, as "Label All Tasks" opens it.
    page.goto(f"{label_studio.url}/projects/{setup.projects['Rank']}/data?labeling=1")
    page.wait_for_function(
        "document.querySelectorAll('.htx-ranker-item').length === 8", timeout=90_000
    )
    page.wait_for_function(
        "[...document.querySelectorAll('.htx-ranker-item img')]"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=60_000,
    )
    # Label Studio opens the project's instructions first; the clinician closes them.
    if page.get_by_text("Labeling Instructions").is_visible():
        page.keyboard.press("Escape")
        page.get_by_text("Labeling Instructions").wait_for(state="hidden", timeout=10_000)
    widths = page.eval_on_selector_all(
        ".htx-ranker-item img", "els => els.map(e => e.naturalWidth)"
    )
    assert len(widths) == 8 and min(widths) > 0
    task_id = int(page.url.split("task=")[1].split("&")[0]) if "task=" in page.url else None
    before = _order(page)
    assert len(set(before)) == 8

    # Keyboard drag (react-beautiful-dnd): focus, Space, ArrowDown x3, Space.
    item = page.locator(f".htx-ranker-item[data-ranker-id='{before[0]}']")
    item.focus()
    page.keyboard.press("Space")
    page.wait_for_timeout(300)
    for _ in range(3):
        page.keyboard.press("ArrowDown")
        page.wait_for_timeout(300)
    page.keyboard.press("Space")
    page.wait_for_timeout(800)
    after = _order(page)
    assert after == before[1:4] + [before[0]] + before[4:]
    page.screenshot(path=str(ARTIFACTS / "rank-task.png"), full_page=True)

    events = sched.store.event_count()
    page.click("[data-testid=bottombar-submit-button]")
    deadline = time.monotonic() + 30
    while sched.store.event_count() == events and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sched.service.wait_idle()
    (sub,) = list(sched.store.effective_submissions("rank"))
    assert list(sub.ordered) == after  # exactly the order on the screen
    if task_id is not None:
        assert sub.task_id == task_id
    assert sched.store.get_task(sub.task_id).status == "answered"
    page.close()


def test_dashboard_shows_the_api_stats(running, label_studio, browser):
    setup, sched = running
    positions = {r["image_id"]: float(r["position"]) for r in setup.rows}
    raters = make_raters(label_studio, 2)
    for k in range(3):
        rank_next(raters[k % 2], setup, positions)
    assert sched.service.wait_idle()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    # A lead signs in with the dashboard token (a form post: the token is in no URL).
    page.goto(f"{setup.url}/dashboard")
    assert page.url.endswith("/login")
    page.fill("input[name=token]", setup.dashboard_token)
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-rendered]", timeout=30_000)
    assert page.url.endswith("/dashboard") and setup.dashboard_token not in page.url
    shown = page.eval_on_selector_all(
        "[data-stat][data-value]",
        "els => Object.fromEntries(els.map(e => [e.dataset.stat, e.dataset.value]))",
    )
    stats = httpx.get(
        f"{setup.url}/api/stats", headers={"Authorization": f"Bearer {setup.dashboard_token}"}
    ).json()

    def get(path):
        value = stats
        for part in path.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        return value

    for path in (
        "headline.batches_done",
        "views.total",
        "tasks.open.rank",
        "rejections.total",
        "raters.0.batches",
        "raters.1.batches",
    ):
        assert path in shown, path
        assert json.loads(shown[path]) == get(path), path
    assert json.loads(shown["headline.batches_done"]) == 3
    # The page refreshes itself from /api/stats with the session cookie, which holds no secret.
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["slicerank_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert setup.dashboard_token not in session["value"] and setup.secret not in session["value"]
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    page.close()
