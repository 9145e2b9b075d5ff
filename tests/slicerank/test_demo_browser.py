"""A clinician in a real browser (Debian Chromium via playwright) on the demo's own projects.

One ``slicerank demo --no-simulate`` (phantom cohort, private Redis) serves every test here, as
a new user would start it. What the REST API, the simulated raters and the model cannot show:
every image of Rank, Classify and Boundary loads (the demo once served each from one folder too
high: 8 broken images per Rank task), all 8 slices of a Rank task fit on a 1920x1080 screen and
on a 1366x768 one, a ranking made with the mouse and one made with the keyboard each reach the
scheduler in exactly the order on screen, and the next task is there. Also: no secret on any
process's command line, sign-up closed, and after training a Classify task opens with the
model's choice preselected. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from slicerank_base.procs import free_port
from tests.chromium import CHROMIUM, CHROMIUM_FLAGS
from tests.slicerank.test_demo import _ctrl_c_reaches_it, _descendants, _interrupt, _Output

ARTIFACTS = Path(os.environ.get("SLICERANK_TEST_ARTIFACTS", "test-artifacts"))
SCREENS = {"1920x1080": (1920, 1080), "1366x768": (1366, 768)}
ALL_IMAGES_LOADED = (
    "sel => { const imgs = [...document.querySelectorAll(sel)];"
    " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }"
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="apt-get install chromium"),
]


@dataclass
class DemoRun:
    """The running demo: its process, folder, ``--json`` result and credentials."""

    proc: subprocess.Popen
    out: Path
    result: dict
    creds: dict

    @property
    def url(self) -> str:
        return self.result["label_studio"]["url"]

    @property
    def projects(self) -> dict[str, int]:
        return self.result["provision"]["projects"]

    @property
    def reader_token(self) -> str:
        """What opens the scheduler's read-only API: a dashboard token where the run has one."""
        return self.creds.get("dashboard_token") or self.creds["webhook_secret"]

    @property
    def secrets(self) -> dict[str, str]:
        """Every secret of the run (all of credentials.json but the two user names)."""
        return {k: v for k, v in self.creds.items() if k not in ("username", "backend_user")}

    def api(self) -> httpx.Client:
        """Label Studio's REST API with the lead's token."""
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Token {self.creds['api_key']}"},
            timeout=60,
        )

    def scheduler_stats(self) -> dict:
        resp = httpx.get(
            f"{self.result['services']['scheduler_url']}/api/stats",
            headers={"Authorization": f"Bearer {self.reader_token}"},
            timeout=30,
        )
        resp.raise_for_status()
        return resp.json()

    def rank_submissions(self) -> dict[int, tuple[str, ...]]:
        """The scheduler's submission log: annotation id -> order, for every ranked batch."""
        from ranking_scheduler.service.store import SubmissionStore

        store = SubmissionStore(f"sqlite:///{self.out / 'scheduler' / 'scheduler.sqlite3'}")
        try:
            return {s.annotation_id: tuple(s.ordered) for s in store.effective_submissions("rank")}
        finally:
            store.close()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo-browser")
    out, summary = tmp / "demo", tmp / "demo.json"
    env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "slicerank", "demo", "--out", str(out), "--scans", "4",
         "--test-scans", "1", "--no-simulate", "--json", str(summary)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        preexec_fn=_ctrl_c_reaches_it,
    )  # fmt: skip
    output = _Output(proc.stdout)
    try:
        output.wait_for(proc, "services are running", timeout=600)
        result = json.loads(summary.read_text())
        creds = json.loads((out / "credentials.json").read_text())
        yield DemoRun(proc, out, result, creds)
        _interrupt(proc, output)
    finally:
        # Its descendants first: once it is gone they belong to init and cannot be found.
        left = _descendants(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS))
        yield chromium
        chromium.close()


def _login(browser, demo: DemoRun, size: tuple[int, int]):
    """A page logged in as the lead through the real form (local files need the cookie)."""
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.goto(f"{demo.url}/user/login/")
    page.fill("input[name=email]", demo.creds["username"])
    page.fill("input[name=password]", demo.creds["password"])
    page.click("button.login-button")
    page.wait_for_url(lambda url: "/user/login" not in url, timeout=60_000)
    return page


def _close_instructions(page) -> None:
    # Label Studio opens the project's instructions over the first task.
    if page.get_by_text("Labeling Instructions").is_visible():
        page.keyboard.press("Escape")
        page.get_by_text("Labeling Instructions").wait_for(state="hidden", timeout=10_000)


def _order(page) -> list[str]:
    return page.eval_on_selector_all(
        ".htx-ranker-item", "els => els.map(e => e.getAttribute('data-ranker-id'))"
    )


def _wait_rank_task(page, not_ids: set[str] = frozenset()) -> list[str]:
    """Wait for a Rank task (other than one showing ``not_ids``) with all 8 images loaded."""
    page.wait_for_function(
        "bad => { const items = [...document.querySelectorAll('.htx-ranker-item')];"
        " return items.length === 8 && !items.some(e => bad.includes(e.dataset.rankerId)); }",
        arg=sorted(not_ids),
        timeout=90_000,
    )
    page.wait_for_function(ALL_IMAGES_LOADED, arg=".htx-ranker-item img", timeout=60_000)
    _close_instructions(page)
    return _order(page)


def _boxes(page, selector: str) -> list[dict]:
    return page.eval_on_selector_all(
        selector,
        "els => els.map(e => { const r = e.getBoundingClientRect();"
        " return {top: r.top, left: r.left, bottom: r.bottom, right: r.right,"
        " natural: e.naturalWidth}; })",
    )


def _mouse_drag(page, source: str, target: str) -> None:
    """react-beautiful-dnd wants a press, small moves past its 5 px threshold, a slow move to
    the target and a pause before release."""
    src = page.locator(source).bounding_box()
    dst = page.locator(target).bounding_box()
    x, y = src["x"] + 20, src["y"] + src["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 4):
        page.mouse.move(x, y + 3 * step)
        page.wait_for_timeout(60)
    page.mouse.move(x, dst["y"] + dst["height"] * 0.75, steps=25)
    page.wait_for_timeout(500)
    page.mouse.up()
    page.wait_for_timeout(800)


def _keyboard_move(page, item_id: str, down: int) -> None:
    page.locator(f".htx-ranker-item[data-ranker-id='{item_id}']").focus()
    page.keyboard.press("Space")
    page.wait_for_timeout(300)
    for _ in range(down):
        page.keyboard.press("ArrowDown")
        page.wait_for_timeout(300)
    page.keyboard.press("Space")
    page.wait_for_timeout(800)


def _submit_and_wait_counted(page, demo: DemoRun, before: dict) -> tuple[int, tuple[str, ...]]:
    """Press Submit; wait for the scheduler to log one new ranked batch; return it."""
    page.click("[data-testid=bottombar-submit-button]")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = {k: v for k, v in demo.rank_submissions().items() if k not in before}
        if new:
            assert len(new) == 1, new
            return next(iter(new.items()))
        time.sleep(0.3)
    raise AssertionError("the scheduler never logged the ranking submitted in the browser")


# ------------------------------------------------------------------------------------ tests


def test_no_secret_on_any_command_line_and_sign_up_is_closed(demo_run):
    from ls_config.webclient import LabelStudioWebUser

    procs = {demo_run.proc.pid} | _descendants(demo_run.proc.pid)
    cmdlines = {}
    for pid in procs:
        with contextlib.suppress(OSError):
            cmdlines[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    # Every service the demo started is there (the check would pass vacuously otherwise).
    text = "\n".join(cmdlines.values())
    for name in ("label-studio", "redis-server", "scheduler", "backend", "worker"):
        assert name in text, f"{name} is not among the demo's processes:\n{text}"
    assert {"password", "api_key", "webhook_secret", "backend_pass"} <= set(demo_run.secrets)
    for key, secret in demo_run.secrets.items():
        leaks = [cmd for cmd in cmdlines.values() if secret in cmd]
        assert not leaks, f"{key} is on a command line: {leaks}"
    # Nobody can make an account on the demo's Label Studio: the lead adds clinicians.
    stranger = LabelStudioWebUser(demo_run.url, "stranger@example.org", "pw-stranger-123")
    with pytest.raises(RuntimeError, match="sign-up of stranger@example.org failed"):
        stranger.signup()
    with demo_run.api() as api:
        emails = [u["email"] for u in api.get("/api/users/").json()]
    assert "stranger@example.org" not in emails


@pytest.mark.parametrize("screen", list(SCREENS))
def test_clinician_ranks_8_slices_on_one_screen_with_mouse_and_keyboard(demo_run, browser, screen):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = _login(browser, demo_run, SCREENS[screen])
    page.goto(f"{demo_run.url}/projects/{demo_run.projects['Rank']}/data?labeling=1")
    before = _wait_rank_task(page)
    assert len(set(before)) == 8

    # All 8 slices load and lie inside the window, above the bar with the Submit button.
    submit_top = page.locator("[data-testid=bottombar-submit-button]").bounding_box()["y"]
    width, height = SCREENS[screen]
    boxes = _boxes(page, ".htx-ranker-item img")
    assert len(boxes) == 8 and min(b["natural"] for b in boxes) > 0
    for box in boxes:
        assert box["top"] >= 0 and box["left"] >= 0 and box["right"] <= width, box
        assert box["bottom"] <= min(height, submit_top), (box, submit_top)
    # Big enough to judge anatomy, and larger on hover.
    thumb = boxes[0]["bottom"] - boxes[0]["top"]
    assert thumb >= 56
    page.screenshot(path=str(ARTIFACTS / f"demo-rank-{screen}.png"))
    page.locator(".htx-ranker-item").nth(2).hover()
    page.wait_for_timeout(400)
    zoomed = _boxes(page, ".htx-ranker-item img")[2]
    assert zoomed["bottom"] - zoomed["top"] >= 3.5 * thumb
    page.screenshot(path=str(ARTIFACTS / f"demo-rank-{screen}-hover.png"))

    # With the mouse: the first slice dragged down past two others.
    logged = demo_run.rank_submissions()
    _mouse_drag(
        page,
        f".htx-ranker-item[data-ranker-id='{before[0]}']",
        f".htx-ranker-item[data-ranker-id='{before[2]}']",
    )
    dragged = _order(page)
    assert dragged == before[1:3] + [before[0]] + before[3:]
    annotation, order = _submit_and_wait_counted(page, demo_run, logged)
    assert list(order) == dragged  # exactly the order on the screen

    # The next task is there; with the keyboard: focus, Space, ArrowDown x3, Space.
    second = _wait_rank_task(page, not_ids=set(before))
    logged = demo_run.rank_submissions()
    _keyboard_move(page, second[0], 3)
    moved = _order(page)
    assert moved == second[1:4] + [second[0]] + second[4:]
    _, order = _submit_and_wait_counted(page, demo_run, logged)
    assert list(order) == moved
    third = _wait_rank_task(page, not_ids=set(second))
    assert len(third) == 8
    page.close()

    # Label Studio measured the time on each, and the scheduler's dashboard figures show it.
    stats = demo_run.scheduler_stats()
    timed = stats["labelling_time"]["by_strategy"]["ranking"]
    assert timed["n"] >= 2 and timed["median_s"] > 0


def _classify_images_load(browser, demo: DemoRun, kind: str, screen: str) -> None:
    page = _login(browser, demo, SCREENS[screen])
    page.goto(f"{demo.url}/projects/{demo.projects[kind]}/data?labeling=1")
    page.wait_for_function(ALL_IMAGES_LOADED, arg=".lsf-image img", timeout=90_000)
    _close_instructions(page)
    boxes = _boxes(page, ".lsf-image img")
    assert boxes and all(b["natural"] > 0 for b in boxes)
    # The slice and the three buttons are on screen together, above the Submit bar.
    submit_top = page.locator("[data-testid=bottombar-submit-button]").bounding_box()["y"]
    choices = page.locator(".lsf-choices").bounding_box()
    assert choices["y"] + choices["height"] <= submit_top, (choices, submit_top)
    assert boxes[0]["bottom"] <= submit_top and boxes[0]["right"] <= SCREENS[screen][0]
    page.screenshot(path=str(ARTIFACTS / f"demo-{kind.lower()}-{screen}.png"))
    page.close()


def test_classify_images_load(demo_run, browser):
    for screen in SCREENS:
        _classify_images_load(browser, demo_run, "Classify", screen)


def _truth(demo: DemoRun) -> dict[str, float]:
    from cmr_ingest.manifest import read_manifest

    rows = read_manifest(demo.out / "data" / "media" / "manifest.csv")
    return {str(r["image_id"]): float(r["position"]) for r in rows}


def test_boundary_images_load(demo_run, browser):
    """Rank through the API until the scheduler asks its first boundary question, then open
    the Boundary project in the browser."""
    from slicerank.demo_raters import LabelStudioREST, is_open, ranker_result

    position = _truth(demo_run)
    deadline = time.monotonic() + 300
    with httpx.Client(timeout=60) as http:
        rest = LabelStudioREST(http, demo_run.url, demo_run.creds["api_key"])
        lead = rest._call("GET", "/api/current-user/whoami")["id"]
        while not [t for t in rest.tasks(demo_run.projects["Boundary"]) if is_open(t)]:
            assert time.monotonic() < deadline, "the scheduler asked no boundary question"
            open_rank = [t for t in rest.tasks(demo_run.projects["Rank"]) if is_open(t)]
            for task in open_rank[:4]:
                ids = [item["id"] for item in task["data"]["images"]]
                order = sorted(ids, key=position.__getitem__)
                rest.annotate(task["id"], ranker_result(order), lead, 11.0)
            time.sleep(1.0)
    for screen in SCREENS:
        _classify_images_load(browser, demo_run, "Boundary", screen)


def test_trained_model_choice_is_preselected(demo_run, browser):
    """Label part of Classify, train a one-epoch model through the demo's own worker (it
    writes its predictions back), then open an unlabelled task: the model's class is ticked."""
    import redis

    from cmr_ingest.manifest import read_manifest
    from slicerank.demo_config import Layout
    from slicerank.demo_raters import LabelStudioREST, choice_result
    from slicerank.demo_training import stage_train

    rows = read_manifest(demo_run.out / "data" / "media" / "manifest.csv")
    truth = {str(r["image_id"]): str(r["true_class"]) for r in rows}
    classify = demo_run.projects["Classify"]
    with httpx.Client(timeout=60) as http:
        rest = LabelStudioREST(http, demo_run.url, demo_run.creds["api_key"])
        lead = rest._call("GET", "/api/current-user/whoami")["id"]
        tasks = rest.tasks(classify)
        for task in tasks[: int(len(tasks) * 0.7)]:
            label = truth[task["data"]["image_id"]]
            rest.annotate(task["id"], choice_result(label), lead, 5.0)
        unlabelled = [t for t in tasks[int(len(tasks) * 0.7) :]]
    model = stage_train(
        redis.Redis.from_url(demo_run.result["redis"]["url"]),
        f"slicerank-demo-{demo_run.creds['api_key'][:8]}",
        label_source="classify", project_id=classify, layout=Layout(demo_run.out),
        preset="cpu-small", device="cpu", epochs=1,
        check_alive=lambda: None, timeout_s=600,
    )  # fmt: skip
    version = model["model_version"]
    assert version and model["predictions_written"] >= len(unlabelled)

    task = unlabelled[0]
    with demo_run.api() as api:
        preds = api.get("/api/predictions/", params={"task": task["id"]}).json()
    (pred,) = [p for p in preds if p["model_version"] == version]
    (chosen,) = pred["result"][0]["value"]["choices"]
    page = _login(browser, demo_run, SCREENS["1920x1080"])
    page.goto(f"{demo_run.url}/projects/{classify}/data?task={task['id']}")
    page.wait_for_function(ALL_IMAGES_LOADED, arg=".lsf-image img", timeout=90_000)
    _close_instructions(page)
    checked = page.locator(".lsf-choice__checkbox.ant-checkbox-wrapper-checked")
    checked.first.wait_for(timeout=30_000)
    labels = {"too_basal": "Too basal", "lv": "LV", "too_apical": "Too apical"}
    assert checked.count() == 1
    assert checked.first.inner_text().startswith(labels[chosen])
    page.screenshot(path=str(ARTIFACTS / "demo-classify-preselected.png"))
    page.close()
