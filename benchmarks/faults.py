"""``slicerank bench faults``: the scheduler under faults, against a real Label Studio (SQLite or
PostgreSQL) with the scheduler's log on a real PostgreSQL, each case run many times.

Every case provisions its own projects (a title prefix of its own) and its own log database,
starts ``slicerank scheduler`` as a child process (so it can be killed with SIGKILL), lets
simulated clinicians (real Label Studio accounts making the labelling UI's calls) submit
rankings, injects its fault, and after each run audits the log against Label Studio
(:func:`~benchmarks.harness.audit`): answers **lost**, **double-counted**,
**wrongly rejected** — all three must be 0. The cases:

``kill9``
    SIGKILL of the scheduler at a random moment (during start-up, its first reconciliation or
    the stream), submissions go on while it is down, then a restart; one run per kill.
``ls_restart``
    Label Studio itself stops and starts again mid-run while raters and the scheduler go on.
``webhooks_off``
    The project's webhook is switched off for ``off_s`` seconds while raters submit: only the
    reconciliation (intervals shortened for the bench) brings their answers in. The dashboard
    (``/api/stats`` ``webhooks.status``) should say deliveries stopped.
``duplicates``
    Webhooks delivered twice and three times, an update before its creation, a stale creation
    after an edit (posted to ``/webhook`` as Label Studio would send them).
``edits``
    Answers edited, deleted, and a spurious delete of an answer Label Studio still holds (an
    "undelete": the reconciliation must bring it back).
``foreign_project``
    A second project with the Rank project's title appears (a colleague's copy), then the
    scheduler restarts.
``other_prefix``
    The scheduler restarts once against another project set (``SCHEDULER_PROJECT_PREFIX`` of
    another provisioning) on the same log database, then with the right one again.
``retired_held``
    A clinician holds a Rank task while the scheduler retires it (tasks go stale after a few
    seconds in this case); their Submit must still count. A Submit that Label Studio refuses
    because the task was deleted counts as lost.
``listing_delete``
    Answers deleted in Label Studio while full listings run every 2 s: a listing read before a
    delete and applied after it must not bring the answer back (**resurrected**).
``parked_delete``
    Answers deleted the moment they are saved, while the scheduler is importing new tasks: a
    delete that races the create (parked until its task is recorded) must win.
``tasks_deleted``
    Answered Rank tasks deleted in Label Studio (which sends only ``TASKS_DELETED``): their
    answers stop counting, and no reconciliation pass is refused.
``forged``
    500 forged webhooks with the right secret header (readable by any Label Studio user):
    invented annotations on real tasks, real annotations with another rater and order, deletes
    of real answers and tasks. Nothing forged may count, nothing real may go.

A scheduler that refuses to start (e.g. a pinned project mismatch) is a correct answer to
``foreign_project`` and ``other_prefix``: the run records the refusal and its message, then
removes the cause and starts it again. Results go in docs/bench/service-faults.md.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import (
    audit,
    fresh_postgres_database,
    label_studio_db_env,
)

log = logging.getLogger(__name__)

__all__ = ["CASES", "DEFAULT_RUNS", "SMALL_RUNS", "FaultBench", "run_faults"]

CASES = (
    "kill9",
    "ls_restart",
    "webhooks_off",
    "duplicates",
    "edits",
    "foreign_project",
    "other_prefix",
    "retired_held",
    "listing_delete",
    "parked_delete",
    "tasks_deleted",
    "forged",
)
"""The fault cases, in the order they run."""

DEFAULT_RUNS = {
    "kill9": 20,
    "ls_restart": 3,
    "webhooks_off": 2,
    "duplicates": 5,
    "edits": 5,
    "foreign_project": 3,
    "other_prefix": 3,
    "retired_held": 3,
    "listing_delete": 20,
    "parked_delete": 20,
    "tasks_deleted": 20,
    "forged": 1,
}
"""Runs per case of the full tally (``slicerank bench faults``)."""

CASE_SETTINGS = {
    "retired_held": {"SCHEDULER_STALE_AFTER_S": "4"},
    # Full listings back to back, so that deletes land while one is read.
    "listing_delete": {"SCHEDULER_FULL_RECONCILE_INTERVAL_S": "2"},
}
"""Scheduler settings a case adds to BENCH_SETTINGS."""

FORGED_PER_RUN = 500
"""Forged webhooks per run of the ``forged`` case (the issue's target)."""

SMALL_RUNS = {case: 1 for case in CASES} | {"kill9": 2}
"""The small preset (the test suite, ``--small``)."""

BENCH_SETTINGS = {
    # Short intervals so a missed webhook is found in seconds, not minutes.
    "SCHEDULER_RECONCILE_INTERVAL_S": "3",
    "SCHEDULER_FULL_RECONCILE_INTERVAL_S": "10",
    "SCHEDULER_WATCH_INTERVAL_S": "1",
    "SCHEDULER_MIN_OPEN_TASKS": "8",
    "SCHEDULER_BOUNDARY_OPEN": "0",  # ranking only: the audit compares Rank answers
}
"""Scheduler settings of every case (a case may add its own)."""

IMAGES = 480
"""Images per case: enough that the engine is far from done after a few hundred batches."""


def _write_media(media: Path, n_images: int, rng: random.Random) -> list[dict]:
    """Tiny PNG slices and manifest rows (the images are never looked at)."""
    import numpy as np
    from PIL import Image

    (media / "slices").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        scan, k = divmod(i, 8)
        image_id = f"f{rng.getrandbits(48):012x}"
        path = f"slices/{image_id}.png"
        Image.fromarray(np.full((16, 16), k * 30, np.uint8)).save(media / path)
        rows.append(
            {
                "image_id": image_id,
                "scan_id": f"s{scan:05d}",
                "slice_index": k,
                "n_slices": 8,
                "path": path,
                "position": k / 7,
            }
        )
    return rows


def _answers_in_label_studio(client, project_id: int) -> dict[int, list[str]]:
    """Annotation id → ranked order of every submitted (not skipped) answer in the project."""
    out = {}
    for task in client.tasks.list(project=project_id, fields="all", page_size=500):
        for ann in task.annotations or []:
            ann = ann if isinstance(ann, dict) else ann.dict()
            if ann.get("was_cancelled"):
                continue
            results = [r for r in ann.get("result") or [] if r.get("type") == "ranker"]
            if results:
                out[int(ann["id"])] = list(results[0]["value"]["ranker"]["order"])
    return out


class Raters:
    """Simulated clinicians submitting on background threads until paused or stopped.

    Each takes the next Rank task, looks at it for ``think_s`` (uniform 0.5-1.5 x), submits the
    true order with a little noise and a measured ``lead_time``. Errors while Label Studio or the
    scheduler is down are retried; a Submit refused with 404 (the task was deleted under the
    clinician) is counted in ``refused``: that answer is lost.
    """

    def __init__(self, case: CaseRun, n: int, think_s: float, seed: int) -> None:
        from ls_config.webclient import LabelStudioWebUser

        self.case = case
        self.think_s = think_s
        self.users = [
            LabelStudioWebUser(
                case.bench.ls.url, f"f{i}-{uuid.uuid4().hex[:8]}@faults.test", "pw-faults-1234"
            ).signup()
            for i in range(n)
        ]
        self.rng = random.Random(seed)
        self._go = threading.Event()
        self._stop = threading.Event()
        self._busy = [0]
        self._lock = threading.Lock()
        self.submitted = 0
        self.refused: list[str] = []
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._loop, args=(u, seed + k), daemon=True)
            for k, u in enumerate(self.users)
        ]
        for t in self.threads:
            t.start()

    def _loop(self, user, seed: int) -> None:
        from ls_config.webclient import ranker_result

        rng = random.Random(seed)
        pid = self.case.projects["Rank"]
        while not self._stop.is_set():
            if not self._go.wait(0.2):
                continue
            with self._lock:
                self._busy[0] += 1
            try:
                task = user.next_task(pid)
                if task is None:
                    time.sleep(0.2)
                    continue
                think = rng.uniform(0.5, 1.5) * self.think_s
                time.sleep(think)
                ids = [item["id"] for item in task["data"]["images"]]
                order = sorted(ids, key=lambda i: self.case.positions[i] + rng.gauss(0, 0.05))
                try:
                    ann = user.submit(task["id"], pid, ranker_result(order), lead_time=think)
                except httpx.HTTPStatusError as exc:
                    if exc.response.status_code == 404:
                        with self._lock:
                            self.refused.append(f"task {task['id']}: 404 on Submit")
                        continue
                    raise
                with self._lock:
                    self.submitted += 1
                    self.case.expected.add(int(ann["id"]))
            except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as exc:
                with self._lock:
                    self.errors.append(repr(exc)[:200])
                time.sleep(0.5)  # Label Studio restarting: try again shortly
            finally:
                with self._lock:
                    self._busy[0] -= 1

    def resume(self) -> None:
        """Let the clinicians work."""
        self._go.set()

    def pause(self, timeout: float = 120.0) -> None:
        """Stop taking new tasks and wait for the submissions in flight."""
        self._go.clear()
        deadline = time.monotonic() + timeout
        while self._busy[0] and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        """End the threads and close the sessions."""
        self.pause()
        self._stop.set()
        for t in self.threads:
            t.join(5)
        for u in self.users:
            u.close()


@dataclass
class Scheduler:
    """``slicerank scheduler`` as a child process of its own session."""

    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Where it listens."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Scheduler:
        """Start it (does not wait)."""
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        cmd = [sys.executable, "-m", "slicerank.cli", "scheduler", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            cmd,
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_file.close()
        return self

    def wait_ready(self, timeout: float = 240.0) -> int | None:
        """Wait until it answers ``/health`` with an empty queue (its first reconciliation
        done); returns None, or the exit status if it exited instead (a refusal to start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return self.proc.returncode
            with suppress(httpx.HTTPError, ValueError):
                r = httpx.get(f"{self.url}/health", timeout=3)
                if r.status_code == 200 and r.json().get("queue") == 0:
                    return None
            time.sleep(0.2)
        raise TimeoutError(f"the scheduler at {self.url} was not ready in {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL to its whole process group."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (a clean stop), SIGKILL after 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, n: int = 5) -> str:
        """The last lines of its log."""
        with suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def refusal(self) -> str | None:
        """The ``error: ...`` line it printed when it refused to start, if any."""
        errors = [line for line in self.log_tail(40).splitlines() if line.startswith("error:")]
        return errors[-1][:400] if errors else None


@dataclass
class FaultBench:
    """One Label Studio for all cases, and where the cases write."""

    ls: Any
    work: Path
    ls_db: str
    rng: random.Random
    think_s: float = 0.4
    raters: int = 3
    images: int = IMAGES

    def client(self):
        """An SDK client with the admin token."""
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.ls.url, api_key=self.ls.api_key, timeout=60)

    def http(self) -> httpx.Client:
        """Raw REST calls with the admin token (webhook switches, deletes)."""
        return httpx.Client(
            base_url=self.ls.url, headers={"Authorization": f"Token {self.ls.api_key}"}, timeout=60
        )


@dataclass
class CaseRun:
    """One case: its projects, its log database, its scheduler, its raters, its audits."""

    bench: FaultBench
    name: str
    db_url: str
    settings: dict[str, str] = field(default_factory=dict)
    prefix: str = ""
    projects: dict[str, int] = field(default_factory=dict)
    positions: dict[str, float] = field(default_factory=dict)
    secret: str = ""
    reader_token: str = ""
    scheduler: Scheduler | None = None
    raters: Raters | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    probe: WebhookProbe | None = None
    expected: set[int] = field(default_factory=set)  # every answer Label Studio accepted
    deleted: set[int] = field(default_factory=set)  # answers the bench deleted on purpose

    def provision(self, prefix: str | None = None) -> dict[str, int]:
        """A project set of its own (webhooks to this case's scheduler port)."""
        from ls_config.provision import provision

        prefix = prefix or f"f{uuid.uuid4().hex[:6]} "
        media = self.bench.ls.media_root / prefix.strip()
        rows = _write_media(media, self.bench.images, self.bench.rng)
        report = provision(
            self.bench.client(),
            media_root=media,
            manifest_rows=rows,
            scheduler_url=f"http://127.0.0.1:{self.port}",
            secret=self.secret,
            document_root=self.bench.ls.document_root,
            prefix=prefix,
        )
        self.positions.update({r["image_id"]: float(r["position"]) for r in rows})
        return {"prefix": prefix, **report.projects}

    @property
    def port(self) -> int:
        """The scheduler's port (fixed for the case: the webhooks point at it)."""
        return self._port

    def setup(self) -> CaseRun:
        """Provision, start the scheduler, sign the raters up."""
        from ls_config.server import free_port

        self._port = free_port()
        self.secret = secrets.token_urlsafe(18)
        self.reader_token = secrets.token_urlsafe(18)
        first = self.provision()
        self.prefix = first.pop("prefix")
        self.projects = first
        self.scheduler = Scheduler(self.env(), self._port, self.bench.work / f"{self.name}.log")
        status = self.scheduler.start().wait_ready()
        if status is not None:
            raise RuntimeError(
                f"the scheduler of case {self.name} exited with {status}: "
                f"{self.scheduler.log_tail()}"
            )
        self.probe = WebhookProbe(self)
        self.raters = Raters(
            self, self.bench.raters, self.bench.think_s, self.bench.rng.randrange(1 << 30)
        )
        return self

    def env(self, prefix: str | None = None) -> dict[str, str]:
        """The scheduler's environment (``prefix``: another project set's)."""
        return {
            "LABEL_STUDIO_URL": self.bench.ls.url,
            "LABEL_STUDIO_API_KEY": self.bench.ls.api_key,
            "SCHEDULER_WEBHOOK_SECRET": self.secret,
            "SCHEDULER_DASHBOARD_TOKEN": self.reader_token,  # the dashboard's read-only token
            "SCHEDULER_DB_URL": self.db_url,
            "SCHEDULER_OUT_DIR": str(self.bench.work / f"{self.name}-out"),
            "SCHEDULER_PROJECT_PREFIX": self.prefix if prefix is None else prefix,
            **BENCH_SETTINGS,
            **self.settings,
        }

    def restart(self, *, prefix: str | None = None, kill: bool = False) -> int | None:
        """Stop (or SIGKILL) the scheduler and start it again; returns its exit status if it
        refused to start, else None once it is ready."""
        if kill:
            self.scheduler.kill()
        else:
            self.scheduler.stop()
        self.scheduler = Scheduler(self.env(prefix), self._port, self.scheduler.log_path)
        return self.scheduler.start().wait_ready()

    def api(self, path: str) -> Any:
        """GET ``path`` of the scheduler with the dashboard token as bearer token (a scheduler
        that has no separate dashboard token takes the webhook secret)."""
        for token in (self.reader_token, self.secret):
            r = httpx.get(
                f"{self.scheduler.url}{path}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            if r.status_code != 401:
                break
        r.raise_for_status()
        return r.json()

    def settle(self, timeout: float = 120.0) -> None:
        """Wait until the scheduler's queue has stayed empty for a moment."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline and quiet < 4:
            try:
                r = httpx.get(f"{self.scheduler.url}/health", timeout=5)
                quiet = quiet + 1 if r.json().get("queue") == 0 else 0
            except (httpx.HTTPError, ValueError):
                quiet = 0
            time.sleep(0.25)

    def post_webhook(self, payload: dict) -> None:
        """Deliver a webhook body to the scheduler as Label Studio does."""
        from ls_config.provision import SECRET_HEADER

        r = httpx.post(
            f"{self.scheduler.url}/webhook",
            json=payload,
            headers={SECRET_HEADER: self.secret},
            timeout=10,
        )
        r.raise_for_status()

    def webhooks_active(self, active: bool) -> None:
        """Switch this case's project webhooks on or off in Label Studio."""
        with self.bench.http() as http:
            for kind in ("Rank", "Boundary"):
                hooks = http.get("/api/webhooks/", params={"project": self.projects[kind]})
                hooks.raise_for_status()
                for hook in hooks.json():
                    if hook.get("project") == self.projects[kind]:
                        http.patch(
                            f"/api/webhooks/{hook['id']}/", json={"is_active": active}
                        ).raise_for_status()

    def check(self, label: str, **extra: Any) -> dict[str, Any]:
        """Pause the raters, let the scheduler settle, audit; one run's record."""
        from ranking_scheduler.service.store import SubmissionStore

        self.raters.pause()
        self.settle()
        stats = self.api("/api/stats")
        ls_answers = _answers_in_label_studio(self.bench.client(), self.projects["Rank"])
        # What should be counted: every answer Label Studio accepted (the raters saw it saved),
        # minus those the bench deleted on purpose, plus any it holds that the bench missed.
        # An accepted answer that Label Studio no longer has was destroyed (a task deleted
        # under it): it is checked against the log too, and reported on its own.
        gone = self.expected - self.deleted - set(ls_answers)
        truth = {**ls_answers, **{a: None for a in gone}}
        with SubmissionStore(self.db_url) as store:
            log_answers = {
                s.annotation_id: list(s.ordered) for s in store.effective_submissions("rank")
            }
            rejected = {r.annotation_id for r in store.rejections() if r.annotation_id}
        result = audit(
            truth,
            log_answers,
            rejected=rejected,
            engine_batches=(stats.get("headline") or {}).get("batches_done"),
        ).as_dict()
        # Answers the bench deleted (or whose tasks it deleted) that the log counts again.
        result["resurrected"] = len(self.deleted & set(log_answers))
        result["reconcile_refused"] = bool((stats.get("service") or {}).get("reconcile_refused"))
        refused = list(self.raters.refused)
        self.raters.refused.clear()
        # Answers Label Studio refused to save (the task was deleted under the clinician) are
        # lost too, though the log cannot show them: counted per run.
        record = {"run": label, **result, "refused": len(refused), "refused_why": refused[:5]}
        record["gone_from_label_studio"] = len(gone)
        record.update(extra)
        record["clean"] = not (
            result["lost"]
            or refused
            or gone
            or result["wrongly_rejected"]
            or result["double_counted"]
            or result["resurrected"]
        )
        self.runs.append(record)
        log.info("%s %s: %s", self.name, label, record)
        return record

    def teardown(self) -> None:
        """Stop raters, probe and scheduler."""
        if self.probe is not None:
            self.probe.stop()
        if self.raters is not None:
            self.raters.stop()
        if self.scheduler is not None:
            self.scheduler.stop()


class WebhookProbe:
    """Posts a webhook Label Studio sends but the scheduler ignores (``PROJECT_UPDATED``) every
    ``every_s`` and times the answer: Label Studio gives up on a delivery after 1 s
    (``WEBHOOK_TIMEOUT``), so every answer must come well inside that, whatever the worker is
    doing (start-up reconciliation, a burst, a rebuild). While the scheduler is down the probe
    counts nothing."""

    def __init__(self, case: CaseRun, every_s: float = 0.5) -> None:
        from ls_config.provision import SECRET_HEADER

        self.case = case
        self.every_s = every_s
        self.header = {SECRET_HEADER: case.secret}
        self.ms: list[float] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        body = {"action": "PROJECT_UPDATED", "project": {"id": self.case.projects["Rank"]}}
        with httpx.Client(timeout=5) as http:
            while not self._stop.wait(self.every_s):
                t0 = time.perf_counter()
                try:
                    r = http.post(
                        f"{self.case.scheduler.url}/webhook", json=body, headers=self.header
                    )
                except httpx.HTTPError:
                    continue  # down (killed, restarting): Label Studio's delivery fails too
                if r.status_code == 200:
                    self.ms.append(1000 * (time.perf_counter() - t0))

    def stop(self) -> dict[str, Any]:
        """Stop probing; the answer times (ms): p50, p95, max, and how many took over 1 s."""
        self._stop.set()
        self.thread.join(10)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        """The answer times so far."""
        ms = sorted(self.ms)
        pick = lambda q: round(ms[min(len(ms) - 1, int(q * len(ms)))], 1) if ms else None  # noqa: E731
        return {
            "n": len(ms),
            "p50_ms": pick(0.5),
            "p95_ms": pick(0.95),
            "max_ms": round(ms[-1], 1) if ms else None,
            "over_1s": sum(1 for v in ms if v >= 1000),
        }


# ---------------------------------------------------------------------- the cases
def case_kill9(case: CaseRun, runs: int, rng: random.Random) -> None:
    """SIGKILL at a random moment after the (re)start, raters going on; restart; audit."""
    for k in range(runs):
        case.raters.resume()
        # From 0 s (during start-up and the first reconciliation) to 6 s into the stream.
        time.sleep(rng.uniform(0.0, 6.0))
        case.scheduler.kill()
        time.sleep(rng.uniform(0.5, 3.0))  # raters keep submitting; the webhooks fail
        status = case.restart()
        # A webhook refused in the moment before the new process listens is found by the next
        # light reconciliation (every 3 s here, 60 s by default): wait for one.
        time.sleep(float(BENCH_SETTINGS["SCHEDULER_RECONCILE_INTERVAL_S"]) + 1)
        case.check(f"kill {k + 1}", refused_start=status)


def case_ls_restart(case: CaseRun, runs: int, rng: random.Random) -> None:
    """Label Studio stops and starts again under the raters and the scheduler."""
    for k in range(runs):
        case.raters.resume()
        time.sleep(rng.uniform(2.0, 6.0))
        t0 = time.perf_counter()
        case.bench.ls.stop()
        time.sleep(rng.uniform(1.0, 4.0))
        case.bench.ls.start()
        down = time.perf_counter() - t0
        time.sleep(4.0)  # raters and scheduler pick up again
        # A full reconciliation after Label Studio is back catches what failed meanwhile.
        time.sleep(float(BENCH_SETTINGS["SCHEDULER_FULL_RECONCILE_INTERVAL_S"]) + 2)
        case.check(f"restart {k + 1}", label_studio_down_s=round(down, 1))


def case_webhooks_off(case: CaseRun, runs: int, rng: random.Random, off_s: float) -> None:
    """Webhooks off for ``off_s`` while raters submit; the reconciliation alone keeps up."""
    for k in range(runs):
        case.webhooks_active(False)
        case.raters.resume()
        t0 = time.monotonic()
        said_stopped = False
        while time.monotonic() - t0 < off_s:
            time.sleep(2.0)
            with suppress(httpx.HTTPError):
                said_stopped |= (case.api("/api/stats").get("webhooks") or {}).get(
                    "status"
                ) == "stopped"
        case.raters.pause()
        # Give the reconciliation one full interval to catch the last answers, webhooks still off.
        time.sleep(float(BENCH_SETTINGS["SCHEDULER_FULL_RECONCILE_INTERVAL_S"]) + 2)
        record = case.check(f"off {k + 1}", off_s=off_s, dashboard_said_stopped=said_stopped)
        record["submitted_so_far"] = case.raters.submitted
        case.webhooks_active(True)


def _answer_payload(bench: FaultBench, case: CaseRun, ann_id: int, action: str) -> dict:
    """The webhook body Label Studio sends for one annotation (read back through its API)."""
    with bench.http() as http:
        ann = http.get(f"/api/annotations/{ann_id}/").json()
        task = http.get(f"/api/tasks/{ann['task']}/").json()
    return {
        "action": action,
        "annotation": ann,
        "task": task,
        "project": {"id": case.projects["Rank"]},
    }


def _submit_without_webhook(case: CaseRun, n: int) -> list[int]:
    """``n`` answers submitted with the webhooks off (so the bench delivers them itself)."""
    from ls_config.webclient import ranker_result

    user = case.raters.users[0]
    pid = case.projects["Rank"]
    out = []
    for _ in range(n):
        task = None
        deadline = time.monotonic() + 30
        while task is None and time.monotonic() < deadline:
            task = user.next_task(pid)
            time.sleep(0 if task else 0.2)
        if task is None:
            break
        ids = [item["id"] for item in task["data"]["images"]]
        order = sorted(ids, key=case.positions.__getitem__)
        out.append(user.submit(task["id"], pid, ranker_result(order), lead_time=9.0)["id"])
        case.expected.add(int(out[-1]))
    return out


def case_duplicates(case: CaseRun, runs: int, rng: random.Random) -> None:
    """Each answer delivered 2-3 times, an update before its creation, a stale creation after
    an edit; plus the raters' own (normal) webhooks."""
    from ls_config.webclient import ranker_result

    for k in range(runs):
        case.raters.resume()
        time.sleep(3.0)
        case.raters.pause()
        case.webhooks_active(False)
        ids = _submit_without_webhook(case, 4)
        user = case.raters.users[0]
        created = {a: _answer_payload(case.bench, case, a, "ANNOTATION_CREATED") for a in ids}
        # 1) the same creation two or three times, interleaved
        for a in ids[:2]:
            for _ in range(rng.choice((2, 3))):
                case.post_webhook(created[a])
        # 2) an edit whose UPDATED webhook arrives before its CREATED one
        if len(ids) > 2:
            a = ids[2]
            order = list(
                reversed(created[a]["annotation"]["result"][0]["value"]["ranker"]["order"])
            )
            user.update(a, ranker_result(order))
            case.post_webhook(_answer_payload(case.bench, case, a, "ANNOTATION_UPDATED"))
            case.post_webhook(created[a])  # late and stale
        # 3) created, edited (webhook delivered), then the stale creation again
        if len(ids) > 3:
            a = ids[3]
            case.post_webhook(created[a])
            order = list(
                reversed(created[a]["annotation"]["result"][0]["value"]["ranker"]["order"])
            )
            user.update(a, ranker_result(order))
            case.post_webhook(_answer_payload(case.bench, case, a, "ANNOTATION_UPDATED"))
            case.post_webhook(created[a])
        case.webhooks_active(True)
        case.check(f"duplicates {k + 1}", replayed=len(ids))


def case_edits(case: CaseRun, runs: int, rng: random.Random) -> None:
    """Edits and deletes through Label Studio, and a spurious delete it never made."""
    from ls_config.webclient import ranker_result

    pid = case.projects["Rank"]
    for k in range(runs):
        case.raters.resume()
        time.sleep(4.0)
        deadline = time.monotonic() + 120
        while case.raters.submitted < 3 * (k + 1) and time.monotonic() < deadline:
            time.sleep(0.5)  # at least three new answers to edit, delete and "undelete"
        case.raters.pause()
        case.settle()
        answers = sorted(_answers_in_label_studio(case.bench.client(), pid).items())
        if len(answers) < 3:
            raise RuntimeError(f"only {len(answers)} answers to edit after 2 minutes")
        picks = rng.sample(answers, 3)
        with case.bench.http() as http:
            if picks:  # an edit (any rater's answer; the admin token may edit it)
                a, order = picks[0]
                edited_ids = [a]
                r = http.patch(
                    f"/api/annotations/{a}/", json={"result": ranker_result(order[::-1])}
                )
                r.raise_for_status()
            if len(picks) > 1:  # a real delete
                http.delete(f"/api/annotations/{picks[1][0]}/").raise_for_status()
                case.deleted.add(int(picks[1][0]))
            if len(picks) > 2:  # a delete webhook for an answer that is still there
                a = picks[2][0]
                case.post_webhook({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": a}],
                                   "project": {"id": pid}})  # fmt: skip
        # The reconciliation (full pass every 10 s here) must bring the undeleted answer back.
        time.sleep(float(BENCH_SETTINGS["SCHEDULER_FULL_RECONCILE_INTERVAL_S"]) * 2 + 2)
        case.check(
            f"edits {k + 1}",
            edited=edited_ids[0],
            deleted=picks[1][0],
            spurious_delete=picks[2][0],
        )


def _foreign_title(case: CaseRun) -> str:
    return case.bench.client().projects.get(case.projects["Rank"]).title


def case_foreign_project(case: CaseRun, runs: int, rng: random.Random) -> None:
    """A same-titled project appears; the scheduler restarts; the copy goes; restart again."""
    for k in range(runs):
        case.raters.resume()
        time.sleep(3.0)
        case.raters.pause()
        # Label Studio lists pinned projects first, then the newest: every other run the lead
        # has pinned our Rank project, so the copy comes after ours in the listing.
        pinned = k % 2 == 1
        if pinned:
            with case.bench.http() as http:
                http.patch(
                    f"/api/projects/{case.projects['Rank']}/",
                    json={"pinned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                ).raise_for_status()
        copy = case.bench.client().projects.create(title=_foreign_title(case))
        status = case.restart()
        message = case.scheduler.refusal() if status is not None else None
        if status is None:  # it started: keep working against whatever it bound
            case.raters.resume()
            time.sleep(4.0)
            time.sleep(float(BENCH_SETTINGS["SCHEDULER_FULL_RECONCILE_INTERVAL_S"]) + 2)
            mid = case.check(f"foreign {k + 1} (copy present)", refused_start=None)
        else:
            mid = None
        case.bench.client().projects.delete(copy.id)
        if pinned:
            with case.bench.http() as http:
                http.patch(
                    f"/api/projects/{case.projects['Rank']}/", json={"pinned_at": None}
                ).raise_for_status()
        status2 = case.restart()
        case.check(
            f"foreign {k + 1}",
            ours_pinned=pinned,
            refused_start=status,
            refusal=message,
            clean_while_copy_present=None if mid is None else mid["clean"],
            restarted=status2,
        )


def case_other_prefix(case: CaseRun, runs: int, rng: random.Random) -> None:
    """A restart against another provisioned project set on the same log, then back."""
    other = case.provision()["prefix"]
    for k in range(runs):
        case.raters.resume()
        time.sleep(3.0)
        case.raters.pause()
        status = case.restart(prefix=other)
        message = case.scheduler.refusal() if status is not None else None
        if status is None:
            time.sleep(float(BENCH_SETTINGS["SCHEDULER_FULL_RECONCILE_INTERVAL_S"]) + 2)
        status2 = case.restart()
        time.sleep(float(BENCH_SETTINGS["SCHEDULER_FULL_RECONCILE_INTERVAL_S"]) + 2)
        case.check(f"prefix {k + 1}", refused_start=status, refusal=message, restarted=status2)


def case_retired_held(case: CaseRun, runs: int, rng: random.Random) -> None:
    """A clinician opens a Rank task and submits it only after the scheduler retired it."""
    from ls_config.webclient import ranker_result
    from ranking_scheduler.service.store import SubmissionStore

    pid = case.projects["Rank"]
    stale = float(case.settings["SCHEDULER_STALE_AFTER_S"])
    for k in range(runs):
        user = case.raters.users[k % len(case.raters.users)]
        task = None
        while task is None:
            task = user.next_task(pid)
            time.sleep(0 if task else 0.2)
        # Held until the scheduler has retired it (stale tasks are retired after each
        # reconciliation pass), then a moment longer for the Label Studio call that follows.
        deadline = time.monotonic() + stale + 60
        status_when_submitted = None
        while time.monotonic() < deadline and status_when_submitted not in ("retired", "hidden"):
            time.sleep(0.5)
            with SubmissionStore(case.db_url) as store:
                record = store.get_task(task["id"])
            status_when_submitted = record.status if record is not None else None
        time.sleep(2.0)
        ids = [item["id"] for item in task["data"]["images"]]
        order = sorted(ids, key=case.positions.__getitem__)
        try:
            ann = user.submit(task["id"], pid, ranker_result(order), lead_time=stale + 8)
            case.expected.add(int(ann["id"]))
        except httpx.HTTPStatusError as exc:
            case.raters.refused.append(f"task {task['id']}: {exc.response.status_code} on Submit")
        case.check(f"held {k + 1}", task_id=task["id"], task_status=status_when_submitted)


def _wait_answers(case: CaseRun, n: int, timeout: float = 120.0) -> None:
    """Let the raters work until ``n`` more answers are in (or ``timeout``)."""
    target = case.raters.submitted + n
    case.raters.resume()
    deadline = time.monotonic() + timeout
    while case.raters.submitted < target and time.monotonic() < deadline:
        time.sleep(0.2)


def case_listing_delete(case: CaseRun, runs: int, rng: random.Random) -> None:
    """Answers deleted while full listings (every 2 s) are being read and applied."""
    pid = case.projects["Rank"]
    for k in range(runs):
        _wait_answers(case, 4)
        answers = sorted(_answers_in_label_studio(case.bench.client(), pid))
        picks = rng.sample(answers, min(2, len(answers)))
        with case.bench.http() as http:
            for a in picks:  # spread over a listing interval, raters still at work
                time.sleep(rng.uniform(0.0, 2.0))
                http.delete(f"/api/annotations/{a}/").raise_for_status()
                case.deleted.add(int(a))
        # Several listings after the deletes: none may bring them back.
        time.sleep(
            3 * float(CASE_SETTINGS["listing_delete"]["SCHEDULER_FULL_RECONCILE_INTERVAL_S"])
        )
        case.check(f"listing {k + 1}", deleted=picks)


def case_parked_delete(case: CaseRun, runs: int, rng: random.Random) -> None:
    """An answer deleted right after it is saved, while task imports are in flight."""
    from ls_config.webclient import ranker_result

    pid = case.projects["Rank"]
    user = case.raters.users[0]
    for k in range(runs):
        case.raters.resume()  # the others keep the scheduler importing replacements
        task = None
        deadline = time.monotonic() + 30
        while task is None and time.monotonic() < deadline:
            task = user.next_task(pid)
            time.sleep(0 if task else 0.1)
        if task is None:
            raise RuntimeError("no Rank task for the racing answer in 30 s")
        ids = [item["id"] for item in task["data"]["images"]]
        order = sorted(ids, key=case.positions.__getitem__)
        ann = user.submit(task["id"], pid, ranker_result(order), lead_time=3.0)
        with case.bench.http() as http:
            http.delete(f"/api/annotations/{ann['id']}/").raise_for_status()
        case.expected.add(int(ann["id"]))
        case.deleted.add(int(ann["id"]))
        time.sleep(rng.uniform(0.5, 2.0))
        stats = case.api("/api/stats")
        parked = ((stats.get("service") or {}).get("counts") or {}).get("parked", 0)
        case.check(f"parked {k + 1}", raced=ann["id"], parked_so_far=parked)


def case_tasks_deleted(case: CaseRun, runs: int, rng: random.Random) -> None:
    """Answered Rank tasks deleted in Label Studio (TASKS_DELETED only)."""
    pid = case.projects["Rank"]
    for k in range(runs):
        _wait_answers(case, 3)
        case.raters.pause()
        case.settle()
        by_task: dict[int, list[int]] = {}
        for task in case.bench.client().tasks.list(project=pid, fields="all", page_size=500):
            d = task if isinstance(task, dict) else task.dict()
            anns = [a if isinstance(a, dict) else a.dict() for a in d.get("annotations") or []]
            if anns:
                by_task[int(d["id"])] = [int(a["id"]) for a in anns]
        picks = rng.sample(sorted(by_task), min(2, len(by_task)))
        with case.bench.http() as http:
            for t in picks:
                http.delete(f"/api/tasks/{t}/").raise_for_status()
                case.deleted.update(by_task[t])
        case.raters.resume()
        time.sleep(float(BENCH_SETTINGS["SCHEDULER_FULL_RECONCILE_INTERVAL_S"]) + 2)
        record = case.check(f"tasks {k + 1}", deleted_tasks=picks)
        if record["reconcile_refused"]:
            record["clean"] = False  # a lead would have to accept what Label Studio said


def _forged_bodies(case: CaseRun, rng: random.Random, n: int) -> list[dict]:
    """``n`` webhooks a Label Studio user could forge: invented annotations on real tasks,
    real annotations with another rater and order, deletes of real answers and tasks."""
    import json

    from ls_config.webclient import ranker_result

    pid = case.projects["Rank"]
    tasks = [  # as plain JSON, the way a webhook body carries them
        json.loads(json.dumps(t if isinstance(t, dict) else t.dict(), default=str))
        for t in case.bench.client().tasks.list(project=pid, fields="all", page_size=500)
    ]
    real = [(t, a if isinstance(a, dict) else a.dict()) for t in tasks for a in t["annotations"]]
    top = max((a["id"] for _, a in real), default=0)
    bodies = []
    for k in range(n):
        task = rng.choice(tasks)
        images = [i["id"] for i in task["data"]["images"]]
        kind = k % 4 if real else 0
        if kind == 0:
            ann = {"id": top + 10_000 + k, "task": task["id"],
                   "completed_by": rng.randrange(1, 10_000), "result": ranker_result(images)}  # fmt: skip
            bodies.append({"action": "ANNOTATION_CREATED", "annotation": ann, "task": task,
                           "project": {"id": pid}})  # fmt: skip
        elif kind == 1:
            t, a = rng.choice(real)
            ann = {**a, "completed_by": rng.randrange(1, 10_000),
                   "result": ranker_result(images[::-1])}  # fmt: skip
            bodies.append({"action": "ANNOTATION_UPDATED", "annotation": ann, "task": t,
                           "project": {"id": pid}})  # fmt: skip
        elif kind == 2:
            bodies.append({"action": "ANNOTATIONS_DELETED", "project": {"id": pid},
                           "annotations": [{"id": rng.choice(real)[1]["id"]}]})  # fmt: skip
        else:
            bodies.append({"action": "TASKS_DELETED", "project": {"id": pid},
                           "tasks": [{"id": rng.choice(real)[0]["id"]}]})  # fmt: skip
    return bodies


def case_forged(case: CaseRun, runs: int, rng: random.Random) -> None:
    """FORGED_PER_RUN forged webhooks with the right secret, raters at work meanwhile."""
    from ranking_scheduler.service.store import SubmissionStore

    for k in range(runs):
        _wait_answers(case, 3)
        bodies = _forged_bodies(case, rng, FORGED_PER_RUN)
        for body in bodies:
            case.post_webhook(body)
        case.raters.pause()
        case.settle(300)
        record = case.check(f"forged {k + 1}", forged=len(bodies))
        # Every counted answer carries Label Studio's rater, not a forged one.
        client = case.bench.client()
        raters = {}
        for task in client.tasks.list(project=case.projects["Rank"], fields="all", page_size=500):
            for a in task.annotations or []:
                a = a if isinstance(a, dict) else a.dict()
                raters[int(a["id"])] = f"ls-user-{a['completed_by']}"
        with SubmissionStore(case.db_url) as store:
            wrong = [
                s.annotation_id
                for s in store.effective_submissions("rank")
                if raters.get(s.annotation_id) != s.rater
            ]
        record["wrong_rater"] = len(wrong)
        record["clean"] = record["clean"] and not wrong and not record["unknown_in_log"]


# ---------------------------------------------------------------------- the bench
@contextmanager
def _label_studio(work: Path, ls_db: str) -> Iterator[Any]:
    from ls_config.server import LabelStudioServer

    with label_studio_db_env(ls_db) as db_env:
        server = LabelStudioServer(
            work / "files" / "media",
            data_dir=work / "ls-data",
            log_path=work / "label-studio.log",
            open_signup=True,  # the simulated clinicians sign up through the form
            extra_env=db_env,
        )
        (work / "files" / "media").mkdir(parents=True, exist_ok=True)
        server.start()
        try:
            yield server
        finally:
            server.stop()


def run_faults(
    *,
    cases: tuple[str, ...] = CASES,
    runs: dict[str, int] | None = None,
    ls_db: str = "sqlite",
    off_s: float = 90.0,
    out: str = "runs/bench-faults",
    seed: int = 0,
    progress: bool = True,
    on_case: Callable[[str, dict], None] | None = None,
    label_studio: Any = None,
    images: int = IMAGES,
) -> dict[str, Any]:
    """Run each case of ``cases`` ``runs[case]`` times (default :data:`DEFAULT_RUNS`) against
    one real Label Studio on ``ls_db`` (``sqlite`` or ``postgresql``), each case with its own
    PostgreSQL log database; returns per case the runs' audits and the tally.

    ``images``: the pool of each case (fewer make a quicker set-up; the engine must not be
    done before the raters stop). ``label_studio``: a running server to use instead (anything with ``url``, ``api_key``,
    ``media_root`` and ``document_root``, e.g. the tests' session server, with open sign-up);
    the ``ls_restart`` case needs one it can stop and start, so it is refused then."""
    from tqdm import tqdm

    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"unknown fault cases {unknown}; choose from {', '.join(CASES)}")
    runs = {**DEFAULT_RUNS, **(runs or {})}
    bad = {c: n for c, n in runs.items() if not isinstance(n, int) or n < 1}
    if bad:
        raise ValueError(f"runs per case must be positive integers, got {bad}")
    if off_s <= 0:
        raise ValueError(f"off_s must be > 0 seconds, got {off_s}")
    if images < 64:
        raise ValueError(f"images must be at least 64 (8 scans of 8 slices), got {images}")
    if label_studio is not None and "ls_restart" in cases:
        raise ValueError("the ls_restart case restarts Label Studio: let the bench start its own")
    work = Path(out).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rng = random.Random(seed)
    result: dict[str, Any] = {"ls_db": ls_db, "log_db": "postgresql", "cases": {}}
    t_all = time.perf_counter()
    bar = tqdm(total=sum(runs[c] for c in cases), desc="fault runs", disable=not progress)
    with _label_studio(work, ls_db) if label_studio is None else nullcontext(label_studio) as ls:
        bench = FaultBench(ls=ls, work=work, ls_db=ls_db, rng=rng, images=images)
        for name in cases:
            t0 = time.perf_counter()
            settings = dict(CASE_SETTINGS.get(name, {}))
            with fresh_postgres_database("slicerank_faults") as db:
                case = CaseRun(bench, name, db["url"], settings=settings)
                error = None
                try:
                    case.setup()
                    before = len(case.runs)
                    fn = globals()[f"case_{name}"]
                    args = (off_s,) if name == "webhooks_off" else ()
                    fn(case, runs[name], rng, *args)
                    bar.update(len(case.runs) - before)
                except Exception as exc:  # noqa: BLE001 - reported in the results
                    log.exception("fault case %s failed", name)
                    error = f"{type(exc).__name__}: {exc}"[:500]
                finally:
                    case.teardown()
            summary = _tally(case.runs)
            summary.update({"error": error, "wall_s": round(time.perf_counter() - t0, 1)})
            summary["runs"] = case.runs
            summary["rater_errors"] = len(case.raters.errors) if case.raters else None
            summary["webhook_answer"] = case.probe.summary() if case.probe else None
            result["cases"][name] = summary
            if on_case is not None:
                on_case(name, summary)
    bar.close()
    result["wall_s"] = round(time.perf_counter() - t_all, 1)
    result["totals"] = {
        key: sum(c[key] for c in result["cases"].values())
        for key in (
            "n_runs",
            "clean_runs",
            "lost",
            "double_counted",
            "wrongly_rejected",
            "resurrected",
        )
    }
    probes = [c["webhook_answer"] for c in result["cases"].values() if c.get("webhook_answer")]
    result["webhook_answer"] = {
        "n": sum(p["n"] for p in probes),
        "worst_p95_ms": max((p["p95_ms"] for p in probes if p["p95_ms"] is not None), default=None),
        "max_ms": max((p["max_ms"] for p in probes if p["max_ms"] is not None), default=None),
        "over_1s": sum(p["over_1s"] for p in probes),
    }
    result["all_clean"] = all(
        c["error"] is None and c["clean_runs"] == c["n_runs"] for c in result["cases"].values()
    )
    return result


def _tally(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The case's figures. The log's audit is cumulative (a loss stays until a reconciliation
    repairs it), so ``lost`` / ``double_counted`` / ``wrongly_rejected`` are the worst seen at
    any run's check, plus every Submit Label Studio refused; ``*_at_end`` after the last run."""
    last = runs[-1] if runs else {}
    return {
        "n_runs": len(runs),
        "clean_runs": sum(1 for r in runs if r["clean"]),
        "lost": max((r["lost"] for r in runs), default=0) + sum(r["refused"] for r in runs),
        "refused_submits": sum(r["refused"] for r in runs),
        "double_counted": max((r["double_counted"] for r in runs), default=0),
        "wrongly_rejected": max((r["wrongly_rejected"] for r in runs), default=0),
        "resurrected": max((r.get("resurrected", 0) for r in runs), default=0),
        "gone_from_label_studio": max((r["gone_from_label_studio"] for r in runs), default=0),
        "lost_at_end": last.get("lost", 0),
        "answers_at_end": last.get("label_studio_answers", 0),
    }


# ---------------------------------------------------------------------- CLI
def main(args) -> int:
    import json

    from slicerank_base.jsonout import write_json

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per rater request otherwise
    cases = tuple(args.case) if args.case else CASES
    runs = dict(SMALL_RUNS) if args.small else dict(DEFAULT_RUNS)
    if args.runs is not None:
        runs = {c: args.runs for c in CASES}

    def show(name: str, summary: dict) -> None:
        brief = {k: v for k, v in summary.items() if k != "runs"}
        print(f"{name}: {json.dumps(brief)}", flush=True)

    result = run_faults(
        cases=cases,
        runs=runs,
        ls_db=args.ls_db,
        off_s=args.off_s,
        out=args.out,
        seed=args.seed,
        on_case=show,
    )
    print(json.dumps({"totals": result["totals"], "all_clean": result["all_clean"],
                      "wall_s": result["wall_s"]}))  # fmt: skip
    if args.json:
        write_json(args.json, result)
    return 0 if result["all_clean"] else 1
