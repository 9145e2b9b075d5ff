"""The dashboard page: structure in Python, and the figures a real headless Chromium draws."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest

from ranking_scheduler.service.dashboard import render_dashboard
from ranking_scheduler.service.stats import compute_stats, jsonable, labelling_time
from ranking_scheduler.service.store import SubmissionStore
from tests.chromium import CHROMIUM, CHROMIUM_FLAGS

NOW = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
EVIL = '</script><script>document.documentElement.setAttribute("data-pwned", "1")</script><!--'


class Engine:
    """A small engine with thresholds known, through the API in INTERFACES.md."""

    strategy = "bayes"
    ids = [f"s{k:02d}" for k in range(24)]

    def view_counts(self):
        return {i: k % 6 for k, i in enumerate(self.ids)}

    def scores(self):
        return {i: (k / 4 - 3, 0.2 + 0.05 * (k % 5)) for k, i in enumerate(self.ids)}

    def ranking(self):
        return list(self.ids)

    def progress(self):
        return {"batches": 42, "views": 60, "estimated_batches_left": 14, "done": False}

    def expected_misclassified(self):
        return 2.5

    def boundary_status(self):
        return {
            "basal": {"state": "converged", "queries": 5, "estimate": -2.1},
            "apical": {"state": "searching", "queries": 2, "estimate": None},
        }

    def thresholds(self):
        return {"basal": -2.1, "apical": 2.4}

    def classes(self):
        return {
            i: "too_basal" if k < 4 else "lv" if k < 20 else "too_apical"
            for k, i in enumerate(self.ids)
        }

    def rater_noise(self):
        return {"r1": 0.25, EVIL: 0.5}


@pytest.fixture
def stats(tmp_path):
    store = SubmissionStore(f"sqlite:///{tmp_path / 'log.db'}")
    t0 = NOW - timedelta(minutes=30)
    for n in range(6):
        store.append_ranking(
            n + 1, Engine.ids[n : n + 8], rater="r1", created_at=t0 + timedelta(seconds=45 * n)
        )
    store.append_ranking(50, Engine.ids[:8], rater=EVIL, created_at=t0)
    store.append_boundary(60, "s03", "too_basal", rater="r1", created_at=t0)
    store.record_rejection(f"unknown class {EVIL!r}", annotation_id=70, task_id=7, rater="r2")
    store.add_task(7001, "rank", Engine.ids[:8], created_at=NOW - timedelta(minutes=2))
    webhooks = {  # the last webhook 40 min ago, the reconciliation still finding answers
        "last_delivery_at": (NOW - timedelta(minutes=40)).timestamp(),
        "found_by_reconciliation": 3,
        "last_found_at": (NOW - timedelta(minutes=1)).timestamp(),
    }
    out = compute_stats(Engine(), store, target_views=3, now=NOW, webhooks=webhooks)
    store.close()
    # Measured lead times (the store's own lead_time column is exercised in test_stats.py).
    timed = [("rank", "r1", 12.0), ("rank", "r1", 16.0), ("rank", "r2", 9.0)]
    timed += [("boundary", "r1", 5.0), ("boundary", "r2", 6.0)]
    out["labelling_time"] = jsonable(
        labelling_time(
            [SimpleNamespace(kind=k, rater=r, lead_time=t) for k, r, t in timed], n_images=24
        )
    )
    # What the scheduler service adds to /api/stats (its own counters).
    out["service"] = {
        "active_raters": 2,
        "wanted_open_rank_tasks": 4,
        "own_ms_p50": 3.2,
        "own_ms_p95": 8.75,
    }
    return out


def _get(obj, path):
    for key in path.split("."):
        obj = obj[int(key)] if isinstance(obj, list) else obj[key]
    return obj


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stats: list[tuple[str, str | None, str | None]] = []  # (path, data-value, data-fmt)
        self.scripts: list[str] = []
        self._in_script = False
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "data-stat" in a:
            self.stats.append((a["data-stat"], a.get("data-value"), a.get("data-fmt")))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)


def test_page_is_self_contained_and_embeds_the_stats(stats):
    page = render_dashboard(stats, refresh_s=3)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    # Offline: nothing loaded from anywhere (the SVG namespace string is not a fetch).
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)
    assert "<link" not in page and " src=" not in page and "@import" not in page
    parsed = _Collect()
    parsed.feed(page)
    embedded = json.loads(parsed.scripts[0])
    assert embedded == stats
    # A rater name or reason holding "</script>" cannot end the script element early.
    assert EVIL not in page and page.count("</script>") == 2
    assert "const REFRESH_MS = 3000;" in page and 'const API_URL = "/api/stats";' in page
    # Every figure the template shows by path names a key that exists in the stats.
    paths = {p for p, _, fmt in parsed.stats if fmt}
    for path in {
        "headline.progress_pct",
        "headline.batches_left",
        "headline.images_at_target",
        "headline.expected_misclassified",
        "views.histogram",
        "uncertainty.median_sd",
        "classes.counts.lv",
        "boundary.labels",
        "rejections.total",
        "tasks.open.rank",
    }:
        assert path in paths
    for path in paths:
        _get(stats, path)  # KeyError here means the page shows a figure the API does not have


def test_page_without_stats_and_bad_arguments():
    page = render_dashboard(None, api_url="/scheduler/api/stats", refresh_s=0, title="A & B")
    assert "<title>A &amp; B</title>" in page and "A snapshot: does not refresh" in page
    assert '<script id="initial-stats" type="application/json">null</script>' in page
    with pytest.raises(ValueError, match="refresh_s"):
        render_dashboard(None, refresh_s=-1)
    with pytest.raises(ValueError, match="api_url"):
        render_dashboard(None, api_url='/x"><script>')


@pytest.mark.browser
@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)"
)
def test_chromium_draws_the_figures_from_the_stats(stats, tmp_path):
    page = tmp_path / "dashboard.html"
    page.write_text(render_dashboard(stats, refresh_s=0))
    dom = subprocess.run(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert f'data-rendered="{stats["generated_at"]}"' in dom  # the script ran to the end
    assert not re.search(r"<html[^>]*data-pwned", dom)  # the injected script never ran
    parsed = _Collect()
    parsed.feed(dom)
    shown = {p: v for p, v, _ in parsed.stats if v is not None}
    # The drawn page carries a value for every figure, equal to the stats it was given.
    for path, value in shown.items():
        assert json.loads(value) == _get(stats, path), path
    expected = {
        "headline.progress_pct",
        "views.histogram.3.count",
        "uncertainty.histogram.0.count",
        "classes.counts.too_apical",
        "boundary.status.basal.queries",
        "raters.0.batches",
        "raters.1.median_s_per_batch",
        "rejections.latest.0.reason",
        "tasks.open.rank",
        "webhooks.status",
        "labelling_time.by_strategy.ranking.median_s",
        "labelling_time.cohort.hours_ranking",
        "labelling_time.by_rater.1.median_s_per_label",
    }
    assert expected <= set(shown)
    # And the text a lead reads: the headline and a rater row.
    assert re.search(r'data-stat="headline.progress_pct"[^>]*>75%<', dom)
    assert re.search(r'data-stat="headline.batches_left"[^>]*>14<', dom)
    assert re.search(r'data-stat="raters.1.median_s_per_batch"[^>]*>45 s<', dom)
    assert re.search(r'data-stat="classes.counts.lv"[^>]*>16<', dom)
    assert re.search(r'data-stat="service.own_ms_p95"[^>]*>8.8<', dom)
    assert "&lt;/script&gt;&lt;script&gt;document.documentElement" in dom  # shown as text
    # Deliveries stopped: the red banner says so, and how the lead can check.
    banner = re.search(r'<div class="alert" id="webhook-alert"[^>]*>([^<]*)<', dom)
    assert banner and "hidden" not in banner.group(0), "the webhook alert is not shown"
    assert banner.group(1).startswith(
        "Webhooks have stopped: No webhook from Label Studio since 40 min"
    )
    # Labelling time: medians per batch (12 s) and per single label (5.5 s); the cohort of 24
    # images is 11 batches at the study's ratio (24 x 1,575 / 3,323).
    assert re.search(r'data-stat="labelling_time.by_strategy.ranking.median_s"[^>]*>12.0 s<', dom)
    assert re.search(
        r'data-stat="labelling_time.by_strategy.single_label.median_s"[^>]*>5.5 s<', dom
    )
    assert re.search(r'data-stat="labelling_time.cohort.batches"[^>]*>11<', dom)
    assert re.search(r'data-stat="labelling_time.by_rater.0.median_s_per_batch"[^>]*>14.0 s<', dom)
