"""A clinician in a real browser (Debian Chromium via playwright) on the demo's own projects.

One ``slicerank demo --no-simulate`` (phantom cohort, private Redis) serves every test here, as
a new user would start it. What the REST API, the simulated raters and the model cannot show:
every image of Rank, Classify and Boundary loads (the demo once served each from one folder too
high: 8 broken images per Rank task); on a 1920x1080 screen and a 1366x768 one, all 8 slices of
a Rank task are shown at least 240 / 150 px without hovering, with Submit, and a Classify or
Boundary slice at least 512 px on the larger; a ranking typed from the keyboard alone (10 key
presses, counted) and one dragged with the mouse each reach the scheduler in exactly the order
on screen, and the next task is there; the view controls change what is shown and reset. Also:
no secret on any process's command line, sign-up closed, and after training a Classify task
opens with the model's choice preselected, which one key accepts. Screenshots and the measured
sizes go to test-artifacts/.
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
MIN_RANK_SLICE = {"1920x1080": 240, "1366x768": 150}
"""Each of the 8 slices of a Rank task, shorter side in px, without hovering (issue 20)."""
MIN_SINGLE_SLICE = {"1920x1080": 512}
"""The slice of a Classify or Boundary task, shorter side in px."""
MAX_KEYS = 10
"""Key presses a full ranking of 8 from the keyboard may take, Submit included."""
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
    """Wait for a Rank task (other than one showing ``not_ids``) with all its images loaded:
    the 8 of the grid and the 8 small ones of the list."""
    page.wait_for_function(
        "bad => { const items = [...document.querySelectorAll('.htx-ranker-item')];"
        " return items.length === 8 && !items.some(e => bad.includes(e.dataset.rankerId))"
        " && document.querySelectorAll('.sr-cell img').length === 8; }",
        arg=sorted(not_ids),
        timeout=90_000,
    )
    page.wait_for_function(
        ALL_IMAGES_LOADED, arg=".sr-cell img, .htx-ranker-item img", timeout=60_000
    )
    _close_instructions(page)
    return _order(page)


def _marks(page) -> dict[str, str]:
    """Mark -> image id as the screen shows them: each grid cell's letter and picture, matched
    to the list row (which carries the id) showing the same picture."""
    cells = page.eval_on_selector_all(
        ".sr-cell",
        "els => els.map(e => [e.querySelector('.sr-mark').textContent,"
        " e.querySelector('img').getAttribute('src')])",
    )
    rows = page.eval_on_selector_all(
        ".htx-ranker-item",
        "els => els.map(e => [e.dataset.rankerId, e.querySelector('img').getAttribute('src')])",
    )
    by_src = dict((src, rid) for rid, src in rows)
    assert len(cells) == 8 and len(by_src) == 8
    return {mark: by_src[src] for mark, src in cells}


def _grid_styles(page) -> list[list[str]]:
    """What each of the 8 grid slices is drawn with: (CSS filter, CSS transform)."""
    return page.eval_on_selector_all(
        ".sr-cell img",
        "els => els.map(e => [getComputedStyle(e).filter, getComputedStyle(e).transform])",
    )


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


def _wait_counted(demo: DemoRun, before: dict) -> tuple[int, tuple[str, ...]]:
    """Wait for the scheduler to log one new ranked batch (after a Submit); return it."""
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
    first = _wait_rank_task(page)
    assert len(set(first)) == 8
    page.mouse.move(SCREENS[screen][0] - 2, SCREENS[screen][1] // 2)  # no hover on a slice

    # All 8 slices large without hovering, inside the window, above the bar with Submit.
    width, height = SCREENS[screen]
    submit = page.locator("[data-testid=bottombar-submit-button]").bounding_box()
    assert submit["y"] + submit["height"] <= height and submit["x"] + submit["width"] <= width
    boxes = _boxes(page, ".sr-cell img")
    assert len(boxes) == 8 and min(b["natural"] for b in boxes) > 0
    for box in boxes:
        assert box["top"] >= 0 and box["left"] >= 0 and box["right"] <= width, box
        assert box["bottom"] <= submit["y"], (box, submit)
    sides = [min(b["right"] - b["left"], b["bottom"] - b["top"]) for b in boxes]
    assert min(sides) >= MIN_RANK_SLICE[screen], sides
    thumbs = _boxes(page, ".htx-ranker-item img")
    assert len(thumbs) == 8 and min(b["natural"] for b in thumbs) > 0
    assert max(b["bottom"] for b in thumbs) <= submit["y"]
    (ARTIFACTS / f"demo-rank-{screen}.json").write_text(
        json.dumps({"slice_px": min(sides), "submit_top": submit["y"]})
    )
    page.screenshot(path=str(ARTIFACTS / f"demo-rank-{screen}.png"))

    # The view controls restyle all 8 at once, and the same key again resets them.
    plain = _grid_styles(page)
    assert all(f == "none" and t == "none" for f, t in plain), plain
    page.keyboard.press("6")  # zoom 2x
    page.keyboard.press("1")  # brighter
    page.wait_for_timeout(300)
    assert _grid_styles(page) == [["brightness(1.5)", "matrix(2, 0, 0, 2, 0, 0)"]] * 8
    page.screenshot(path=str(ARTIFACTS / f"demo-rank-{screen}-view.png"))
    page.keyboard.press("6")
    page.keyboard.press("1")
    page.wait_for_timeout(300)
    assert _grid_styles(page) == plain

    # From the keyboard alone: Tab to the field, the marks most basal first (the eighth may be
    # left out), Enter, Ctrl+Enter. Every press counted.
    marks = _marks(page)
    logged = demo_run.rank_submissions()
    typed = "HGFEDCB"  # the reverse of the grid, say
    keys = ["Tab", *typed, "Enter", "Control+Enter"]
    page.keyboard.press(keys[0])
    assert page.evaluate("document.activeElement.name") == "typed"
    for key in keys[1:-1]:
        page.keyboard.press(key)
    page.wait_for_timeout(300)
    expected = [marks[m] for m in typed] + [marks["A"]]
    page.keyboard.press(keys[-1])
    annotation, order = _wait_counted(demo_run, logged)
    assert list(order) == expected  # exactly the order typed from the screen's marks
    assert len(keys) <= MAX_KEYS
    (ARTIFACTS / f"demo-rank-{screen}-keys.json").write_text(json.dumps(keys))

    # The next task is there; with the mouse: the first row dragged down past two others.
    second = _wait_rank_task(page, not_ids=set(first))
    logged = demo_run.rank_submissions()
    _mouse_drag(
        page,
        f".htx-ranker-item[data-ranker-id='{second[0]}']",
        f".htx-ranker-item[data-ranker-id='{second[2]}']",
    )
    dragged = _order(page)
    assert dragged == second[1:3] + [second[0]] + second[3:]
    page.click("[data-testid=bottombar-submit-button]")
    _, order = _wait_counted(demo_run, logged)
    assert list(order) == dragged  # exactly the order on the screen
    third = _wait_rank_task(page, not_ids=set(second))
    assert len(third) == 8
    page.close()

    # Label Studio measured the time on each, and the scheduler's dashboard figures show it.
    stats = demo_run.scheduler_stats()
    timed = stats["labelling_time"]["by_strategy"]["ranking"]
    assert timed["n"] >= 2 and timed["median_s"] > 0


def _image_view(page) -> tuple[str, float]:
    """How Label Studio draws the slice: its CSS filter and its width on screen (zoom)."""
    return tuple(
        page.eval_on_selector(
            ".lsf-image img",
            "e => [getComputedStyle(e).filter, e.getBoundingClientRect().width]",
        )
    )


def _classify_images_load(browser, demo: DemoRun, kind: str, screen: str) -> None:
    page = _login(browser, demo, SCREENS[screen])
    page.goto(f"{demo.url}/projects/{demo.projects[kind]}/data?labeling=1")
    page.wait_for_function(ALL_IMAGES_LOADED, arg=".lsf-image img", timeout=90_000)
    _close_instructions(page)
    boxes = _boxes(page, ".lsf-image img")
    assert boxes and all(b["natural"] > 0 for b in boxes)
    # The slice (what Label Studio's image stage shows) and the three buttons are on screen
    # together, above the Submit bar, the slice large.
    submit_top = page.locator("[data-testid=bottombar-submit-button]").bounding_box()["y"]
    for choices in _boxes(page, ".lsf-choices"):  # the classes, the window keys
        assert choices["bottom"] <= submit_top, (choices, submit_top)
    (shown,) = _boxes(page, ".lsf-image")
    assert shown["bottom"] <= submit_top and shown["right"] <= SCREENS[screen][0]
    side = min(shown["right"] - shown["left"], shown["bottom"] - shown["top"])
    assert side >= MIN_SINGLE_SLICE.get(screen, 0), shown
    (ARTIFACTS / f"demo-{kind.lower()}-{screen}.json").write_text(json.dumps({"slice_px": side}))
    page.screenshot(path=str(ARTIFACTS / f"demo-{kind.lower()}-{screen}.png"))

    # Label Studio's controls on the slice: zoom (Shift+1 fits the slice to its stage again),
    # brightness (its slider).
    filter0, width0 = _image_view(page)
    assert filter0 == "brightness(1) contrast(1)"
    page.locator(".lsf-tool", has_text="Zoom In").click()
    page.wait_for_timeout(400)
    assert _image_view(page)[1] > width0 * 1.05
    page.keyboard.press("Shift+1")
    page.wait_for_timeout(400)
    assert abs(_image_view(page)[1] - (shown["right"] - shown["left"])) < 2
    tools = page.locator(".lsf-tool")
    tools.nth(tools.count() - 2).click()  # brightness (contrast is the last)
    handle = page.locator(".lsf-range__range-handle").first.bounding_box()
    page.mouse.move(handle["x"], handle["y"])
    page.mouse.down()
    page.mouse.move(handle["x"], handle["y"] - 40, steps=8)
    page.mouse.up()
    page.wait_for_timeout(400)
    brighter = _image_view(page)[0]
    assert brighter.startswith("brightness(") and brighter != filter0, brighter
    page.screenshot(path=str(ARTIFACTS / f"demo-{kind.lower()}-{screen}-view.png"))
    # Label Studio's slider has no reset; the window keys (as on Rank) do: a ticked one
    # overrides the slider, the same key again gives it back.
    page.keyboard.press("6")  # darker
    page.wait_for_timeout(300)
    assert _image_view(page)[0] == "brightness(0.65)"
    page.keyboard.press("6")
    page.wait_for_timeout(300)
    assert _image_view(page)[0] == brighter
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
    # One key accepts it: Ctrl+Enter submits the preselected class as the clinician's answer.
    page.keyboard.press("Control+Enter")
    deadline = time.monotonic() + 60
    with demo_run.api() as api:
        while not (anns := api.get(f"/api/tasks/{task['id']}/annotations/").json()):
            assert time.monotonic() < deadline, "Ctrl+Enter did not submit the model's choice"
            time.sleep(0.5)
    (ann,) = anns
    assert [r["value"]["choices"] for r in ann["result"]] == [[chosen]]
    page.close()
