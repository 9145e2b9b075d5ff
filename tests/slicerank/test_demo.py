"""``slicerank demo`` end to end at a tiny size, and its pure helpers.

The end-to-end test runs the real command (real Label Studio, Redis, scheduler, ML backend,
RQ worker, training, analysis) with ``--keep-running``, checks every stage's output against
the live services while they are up, then presses Ctrl-C and checks nothing is left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from slicerank import demo, demo_cohort, demo_config, demo_raters, demo_services
from slicerank_base.procs import free_port

# ---------------------------------------------------------------------------------- helpers


def test_config_rejects_bad_sizes_naming_the_option(tmp_path):
    with pytest.raises(ValueError, match="--scans 1: need at least 2 scans"):
        demo_config.DemoConfig(out=tmp_path, scans=1)
    with pytest.raises(ValueError, match="--raters 4"):
        demo_config.DemoConfig(out=tmp_path, raters=4)
    with pytest.raises(ValueError, match="--hours -1"):
        demo_config.DemoConfig(out=tmp_path, hours=-1)
    assert demo_config.DemoConfig(out=tmp_path).train_preset == "cpu-small"
    assert demo_config.DemoConfig(out=tmp_path, gpu=True).train_preset == "gpu"


def test_budget_is_equal_time_at_the_study_exchange_rate():
    from ranking_scheduler.simulator.raters import SECONDS_PER_LABEL

    budget = demo_raters.labelling_budget(3323, None)
    # The study: 5 hours bought 3,323 single labels or about 1,575 ranked batches.
    assert budget["hours"] == pytest.approx(5.0)
    assert budget["single_labels"] == 3323
    assert budget["ranked_batches"] == 1575
    for n in (1, 7, 49, 50, 501):
        assert demo_raters.labelling_budget(n, None)["single_labels"] == n
    assert budget["seconds"] == pytest.approx(3323 * SECONDS_PER_LABEL)
    # One hour buys 3600 / (18000 / 1575) = 315 batches exactly.
    assert demo_raters.labelling_budget(10, 1.0)["ranked_batches"] == 315


def test_premise_reaches_the_raters_and_equal_noise_is_the_default(tmp_path):
    import argparse

    from cmr_ingest.synth import generate_cohort, slice_perception

    assert demo_config.DemoConfig(out=tmp_path).premise == 1.0
    with pytest.raises(ValueError, match="--premise"):
        demo_config.DemoConfig(out=tmp_path, premise=0)
    parser = argparse.ArgumentParser()
    demo.register(parser.add_subparsers())
    assert parser.parse_args(["demo"]).premise == 1.0
    assert parser.parse_args(["demo", "--premise", "1.5"]).premise == 1.5

    generate_cohort(2, tmp_path / "c", seed=9)
    manifest = tmp_path / "c" / "manifest.csv"
    panel = demo_raters.make_panel(manifest, 3, 9, premise=1.5, scans=2)
    assert panel.params.abs_difficulty == 1.5
    # The raters perceive what the images show: apparent positions, not the true ones.
    seen = slice_perception(2, 9)
    rater = panel.raters[0]
    assert rater._positions == {i: a for i, (a, _) in seen.items()}
    assert demo_raters.make_panel(manifest, 3, 9).params.abs_difficulty == 1.0
    with pytest.raises(ValueError, match="phantom cohort"):
        demo_raters.make_panel(manifest, 3, 10, scans=2)


def test_credentials_are_private_and_stable(tmp_path):
    path = tmp_path / "credentials.json"
    first = demo_config.load_credentials(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert len(first["api_key"]) == 40 and len(first["webhook_secret"]) >= 12
    assert demo_config.load_credentials(path) == first


def test_fresh_refuses_to_delete_a_folder_that_is_not_a_demo_run(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to delete"):
        demo_config.prepare_out_dir(demo_config.DemoConfig(out=tmp_path, fresh=True))
    assert (tmp_path / "precious.txt").exists()


def test_ports_are_remembered_between_runs(tmp_path):
    cfg = demo_config.DemoConfig(out=tmp_path)
    state = tmp_path / "state.json"
    first = demo_services.choose_ports(cfg, state)
    assert len(set(first.values())) == 3
    assert demo_services.choose_ports(cfg, state) == first


def test_cohort_is_reused_and_never_silently_replaced_under_labels(tmp_path):
    first = demo_cohort.stage_cohort(tmp_path / "media", 2, 0)
    assert not first["reused"] and first["images"] > 0
    assert sum(first["classes"].values()) == first["images"]
    again = demo_cohort.stage_cohort(tmp_path / "media", 2, 0, labelled=True)
    assert again["reused"] and again["images"] == first["images"]
    with pytest.raises(ValueError, match="labelled cohort of 2 scans.*--fresh"):
        demo_cohort.stage_cohort(tmp_path / "media", 3, 0, labelled=True)
    assert demo_cohort.stage_cohort(tmp_path / "media", 3, 0)["images"] > first["images"]


def test_label_studio_serves_the_folder_the_task_urls_point_into(tmp_path):
    """The regression behind 8 broken images per Rank task: the demo started Label Studio with
    its document root one level above the one the task URLs were computed from."""
    from urllib.parse import unquote

    from cmr_ingest.manifest import read_manifest
    from ls_config.provision import classify_task

    layout = demo_config.prepare_out_dir(demo_config.DemoConfig(out=tmp_path))
    cohort = demo_cohort.stage_cohort(layout.media, 2, 0)
    creds = demo_config.load_credentials(layout.credentials)
    server = demo_services.label_studio_server(demo_config.DemoConfig(out=tmp_path), layout, creds)
    env = server.environment()
    files = layout.local_files
    rows = read_manifest(Path(cohort["manifest"]))
    for row in rows[:5]:
        url = classify_task(row, files.media_root, files.document_root)["image"]
        served = Path(env["LOCAL_FILES_DOCUMENT_ROOT"]) / unquote(url.split("?d=", 1)[1])
        assert served.is_file(), (url, env["LOCAL_FILES_DOCUMENT_ROOT"])
    # ... and the Local Files storage (the media root) lies strictly below that root.
    assert server.media_root.is_relative_to(env["LOCAL_FILES_DOCUMENT_ROOT"])
    assert server.media_root != Path(env["LOCAL_FILES_DOCUMENT_ROOT"])
    # The demo's own Label Studio takes no open sign-ups and no secret on its command line.
    assert env["LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK"] == "true"
    cmd = " ".join(server.command())
    assert creds["password"] not in cmd and creds["api_key"] not in cmd


def test_redis_url_password_is_redacted():
    assert demo._redact("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert demo._redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_simulated_lead_times_are_plausible_and_differ_between_raters():
    import statistics

    from ranking_scheduler.simulator.raters import SECONDS_PER_BATCH, SECONDS_PER_LABEL

    names = ["rater1", "rater2", "rater3"]
    times = demo_raters.LeadTimes(names, seed=0)
    draws = {
        (r, kind): [times.draw(r, kind) for _ in range(2000)]
        for r in names
        for kind in ("rank", "label")
    }
    for kind, study in (("rank", SECONDS_PER_BATCH), ("label", SECONDS_PER_LABEL)):
        # The team's median sits at the study's exchange rate (11.4 s a batch, 5.4 s a label) ...
        team = statistics.median(x for r in names for x in draws[r, kind])
        assert 0.75 * study < team < 1.33 * study, (kind, team)
        # ... each rater has a speed of their own, and times vary from task to task.
        medians = [statistics.median(draws[r, kind]) for r in names]
        assert max(medians) / min(medians) > 1.1
        for r in names:
            spread = statistics.quantiles(draws[r, kind], n=10)
            assert spread[-1] / spread[0] > 1.8
            assert min(draws[r, kind]) >= demo_raters.LEAD_TIME_RANGE_S[0]
    # Deterministic for a seed, whatever order the raters' threads draw in.
    same = demo_raters.LeadTimes(names, seed=0)
    assert [same.draw("rater2", "rank") for _ in range(3)] == draws["rater2", "rank"][:3]
    with pytest.raises(ValueError, match="'boundary' is not 'rank' or 'label'"):
        times.draw("rater1", "boundary")
    with pytest.raises(ValueError, match="rater 'nobody'"):
        times.draw("nobody", "rank")


def test_annotation_results_have_label_studio_shape():
    (choice,) = demo_raters.choice_result("lv")
    assert choice["from_name"] == "slice_class" and choice["value"] == {"choices": ["lv"]}
    (ranker,) = demo_raters.ranker_result(["a", "b"])
    assert ranker["type"] == "ranker" and ranker["value"] == {"ranker": {"order": ["a", "b"]}}


# ------------------------------------------------------------------------------ end to end


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc), grandchildren included."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class _Output:
    """Collects a child's output lines on a thread (select() on a buffered pipe can miss lines
    already read into Python's buffer)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def text(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, proc: subprocess.Popen, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(marker in line for line in self.lines):
                if proc.poll() is not None and not self._thread.is_alive():
                    break
                if time.monotonic() > deadline:
                    break
                self._cond.wait(1.0)
            text = "".join(self.lines)
        if marker not in text:
            raise AssertionError(
                f"demo never printed {marker!r} (exit {proc.poll()}):\n{text[-6000:]}"
            )
        return text


def _tasks(http, url: str, project: int) -> list[dict]:
    resp = http.get(
        f"{url}/api/tasks", params={"project": project, "page_size": 1000, "fields": "all"}
    )
    resp.raise_for_status()
    return resp.json()["tasks"]


def _ctrl_c_reaches_it() -> None:  # pragma: no cover - runs in the forked child
    """A shell that starts pytest in the background makes it (and so the demo) ignore SIGINT;
    the demo is a foreground program that Ctrl-C must reach, as it does in a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(proc: subprocess.Popen, output: _Output) -> set[int]:
    """Ctrl-C the demo; assert it exits 0 and that none of its descendants outlives it.
    Returns the descendants it had."""
    before = _descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    proc.wait(90)
    assert proc.returncode == 0, output.text()[-3000:]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in before):
        time.sleep(0.2)
    assert not [p for p in before if _alive(p)], "child processes outlived the demo"
    return before


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    summary_path = tmp_path / "demo.json"
    # Nothing answers at REDIS_URL, so the demo starts its own redis-server (a private one
    # also keeps other tests' flushes of the shared Redis away from its jobs).
    env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "slicerank", "demo", "--out", str(out), "--scans", "4",
         "--test-scans", "2", "--epochs", "1", "--keep-running", "--json", str(summary_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=_ctrl_c_reaches_it,
    )  # fmt: skip
    try:
        output = _Output(proc.stdout)
        printed = output.wait_for(proc, "services are running", timeout=780)
        result = json.loads(summary_path.read_text())
        assert result["redis"]["started"] is True
        creds = json.loads((out / "credentials.json").read_text())
        ls_url = result["label_studio"]["url"]
        projects = result["provision"]["projects"]
        n_images = result["cohort"]["images"]
        # What a person needs is printed: where to go and who to log in as.
        assert ls_url in printed and creds["username"] in printed
        assert result["urls"]["dashboard"] in printed
        # No secret is printed or written into the summary.
        for key in ("password", "api_key", "webhook_secret", "dashboard_token", "backend_pass"):
            assert creds[key] not in printed
            assert creds[key] not in summary_path.read_text()

        with httpx.Client(
            headers={"Authorization": f"Token {creds['api_key']}"}, timeout=60
        ) as http:
            # Projects exist, with tasks and annotations from the simulated clinicians.
            titles = {
                p["title"]: p["id"]
                for p in http.get(f"{ls_url}/api/projects", params={"page_size": 100}).json()[
                    "results"
                ]
            }
            assert {titles[f"slicerank {k}"] for k in ("Rank", "Classify", "Boundary")} == set(
                projects.values()
            )
            classify = _tasks(http, ls_url, projects["Classify"])
            rank = _tasks(http, ls_url, projects["Rank"])
            boundary = _tasks(http, ls_url, projects["Boundary"])
            assert len(classify) == n_images
            assert sum(t["total_annotations"] for t in classify) == result["classify"]["labels"]
            assert result["classify"]["labels"] >= n_images  # one label per image's time
            assert sum(t["total_annotations"] for t in rank) == result["ranking"]["ranked_batches"]
            assert result["ranking"]["ranked_batches"] > 0
            assert (
                sum(t["total_annotations"] for t in boundary)
                == result["ranking"]["boundary_labels"]
            )
            # Three different clinicians did the ranking.
            raters = {a["completed_by"] for t in rank for a in t["annotations"]}
            assert len(raters) == 3

            # The scheduler's submission log matches Label Studio, annotation for annotation.
            from ranking_scheduler.service.store import SubmissionStore

            store = SubmissionStore(f"sqlite:///{out / 'scheduler' / 'scheduler.sqlite3'}")
            try:
                logged = {
                    kind: {s.annotation_id for s in store.effective_submissions(kind)}
                    for kind in ("rank", "boundary")
                }
            finally:
                store.close()
            assert logged["rank"] == {a["id"] for t in rank for a in t["annotations"]}
            assert logged["boundary"] == {a["id"] for t in boundary for a in t["annotations"]}
            for task in rank:
                for ann in task["annotations"]:
                    order = ann["result"][0]["value"]["ranker"]["order"]
                    assert sorted(order) == sorted(i["id"] for i in task["data"]["images"])

            # Both models are registered, each trained on its own arm's decoded classes
            # (a consensus file: every labelled slice gets a class), on ONE split shared by
            # both arms, drawn by scan before any label: every labelled slice not in the
            # validation scans trains, and no internal test split eats labels.
            from ml_backend.registry import ModelRegistry

            versions = {v.name: v for v in ModelRegistry(out / "models").versions()}
            files = {"one-at-a-time": "single-consensus.json", "ranking": "demo-consensus.json"}
            splits = {}
            for name, file in files.items():
                model = result["models"][name]
                assert model["model_version"] in versions
                label_source = versions[model["model_version"]].read_json("label_source")
                assert Path(label_source["consensus_path"]).name == file
                assert label_source["n_labels"] == n_images
                splits[name] = versions[model["model_version"]].read_json("splits")
            assert splits["one-at-a-time"]["scans"] == splits["ranking"]["scans"]
            assert splits["ranking"]["scans"]["val"] == result["split"]["validation_scans"]
            assert splits["ranking"]["test"] == [] and splits["ranking"]["shared_validation_scans"]
            assert len(splits["ranking"]["train"]) + len(splits["ranking"]["val"]) == n_images
            # The one-at-a-time arm chose where to ask: the stack-aware labeller.
            assert result["classify"]["strategy"].startswith("single")
            # The premise is named: equal noise by default.
            assert result["premise"]["abs_difficulty"] == 1.0
            assert "premise 1" in printed

            # The new model's predictions are pre-annotations on every Classify task.
            classify_version = result["models"]["one-at-a-time"]["model_version"]
            with_prediction = [
                t
                for t in classify
                if any(p["model_version"] == classify_version for p in t.get("predictions", []))
            ]
            assert len(with_prediction) == n_images

            # The dashboard answers with the secret and refuses without it.
            stats_url = f"{result['services']['scheduler_url']}/api/stats"
            assert httpx.get(stats_url).status_code == 401
            stats = httpx.get(
                stats_url, headers={"Authorization": f"Bearer {creds['dashboard_token']}"}
            )
            assert stats.status_code == 200
            # Measured labelling time: the simulated clinicians' lead_times reach the log and
            # the dashboard's figures (median per batch and per label, per rater, cohort hours).
            timing = stats.json()["labelling_time"]
            ranking = timing["by_strategy"]["ranking"]
            assert ranking["n"] == result["ranking"]["ranked_batches"]
            assert 5.0 < ranking["median_s"] < 25.0  # the study: 11.4 s a batch
            per_rater = {r["rater"]: r for r in timing["by_rater"]}
            assert len(per_rater) == 3
            assert all(r["batches_timed"] + r["labels_timed"] for r in per_rater.values())
            # Each clinician has a pace of their own (a rater may have ranked no batch here).
            paces = [r["median_s_per_label"] for r in per_rater.values() if r["labels_timed"]]
            assert len(paces) >= 2 and len(set(paces)) == len(paces)
            assert timing["cohort"]["hours_ranking"] > 0

        # The report is written, with the held-out comparison and McNemar's test.
        report = result["report"]
        text = Path(report["markdown"]).read_text()
        assert "McNemar" in text
        # It opens with the lead's lines (premise, labels, models with the scan-clustered
        # CI and P, what it cannot show) before Table 2.
        assert (
            text.index("## In brief") < text.index("Premise: premise 1") < text.index("## Table 2")
        )
        assert "bootstrap over scans" in text and "cannot show" in text
        assert "resampling scans" in text
        assert Path(report["html"]).stat().st_size > 1000
        assert all(Path(f).stat().st_size > 1000 for f in report["figures"])
        head = report["headline"]
        assert head["n_images"] == result["testset"]["images"]
        # Each model beside its stack-decoded predictions (issue 11).
        models = {"one-at-a-time", "ranking"}
        assert set(head["models"]) == models | {f"{m} (stack-decoded)" for m in models}
        (comparison,) = [c for c in head["comparisons"] if c["model"] == "ranking"]
        assert 0.0 <= comparison["mcnemar_binary_p"] <= 1.0
        assert Path(result["label_report"]["markdown"]).exists()

        # Ctrl-C stops every child process, grandchildren included.
        assert len(_interrupt(proc, output)) >= 4  # LS, scheduler, backend, worker (+ children)

        # Again on the same folder with --no-simulate: everything is reused (same URLs, no
        # new tasks or labels) and the projects wait for real people until Ctrl-C.
        again_path = tmp_path / "again.json"
        proc = subprocess.Popen(
            [sys.executable, "-m", "slicerank", "demo", "--out", str(out), "--scans", "4",
             "--test-scans", "2", "--no-simulate", "--json", str(again_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            preexec_fn=_ctrl_c_reaches_it,
        )  # fmt: skip
        output = _Output(proc.stdout)
        output.wait_for(proc, "services are running", timeout=400)
        again = json.loads(again_path.read_text())
        assert again["cohort"]["reused"] and again["testset"]["reused"]
        assert again["urls"] == result["urls"]
        assert again["provision"]["projects"] == projects
        assert again["provision"]["classify_tasks_imported"] == 0
        assert (
            again["provision"]["removed"] == [] and not again["provision"]["ml_backend"]["created"]
        )
        assert "classify" not in again and "models" not in again
        with httpx.Client(
            headers={"Authorization": f"Token {creds['api_key']}"}, timeout=60
        ) as http:
            assert http.get(f"{ls_url}/health").status_code == 200
            labels = sum(t["total_annotations"] for t in _tasks(http, ls_url, projects["Classify"]))
            assert labels == result["classify"]["labels"]
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


def test_the_demo_scheduler_keeps_no_recent_view_window_unless_asked(tmp_path, monkeypatch):
    """Simulated raters answer in milliseconds: a wall-clock 'recently ranked' window would span
    the whole demo. A value in the environment still wins."""
    cfg = demo_config.DemoConfig(out=tmp_path)
    layout = demo_config.prepare_out_dir(cfg)
    creds = demo_config.load_credentials(layout.credentials)
    monkeypatch.delenv("SCHEDULER_RECENT_VIEW_S", raising=False)
    env = demo_services.service_env(cfg, layout, creds, "http://ls", "redis://r")
    assert env["SCHEDULER_RECENT_VIEW_S"] == "0"
    monkeypatch.setenv("SCHEDULER_RECENT_VIEW_S", "120")
    env = demo_services.service_env(cfg, layout, creds, "http://ls", "redis://r")
    assert env["SCHEDULER_RECENT_VIEW_S"] == "120"
    # Real people label (--no-simulate): the scheduler's own default.
    monkeypatch.delenv("SCHEDULER_RECENT_VIEW_S")
    people = demo_config.DemoConfig(out=tmp_path, simulate=False)
    env = demo_services.service_env(people, layout, creds, "http://ls", "redis://r")
    assert "SCHEDULER_RECENT_VIEW_S" not in env
