"""The scheduler's credentials (issue 15): the webhook secret only on /webhook and only in its
header; a separate read-only dashboard token, exchanged for a session cookie that holds no
secret; and a fuzz of /webhook with generated bad payloads.

The web app is driven in-process. The service behind it is a small recorder whose ``enqueue``
runs the real, pure intake (:func:`ranking_scheduler.service.intake.from_webhook`) on every
accepted payload, as the worker would, so a payload that would break the worker fails here;
the full service with Label Studio is exercised by test_service.py and test_browser.py.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ls_config.provision import SECRET_HEADER
from ranking_scheduler.service import intake
from ranking_scheduler.service.auth import SESSION_COOKIE, DashboardSessions, same_secret
from ranking_scheduler.service.settings import SchedulerSettings
from ranking_scheduler.service.webapp import create_app

WEBHOOK_SECRET = "webhook-secret-0123456789"
DASHBOARD_TOKEN = "dashboard-token-abcdefghij"
#: Payloads the /webhook fuzz sends (the issue asks for at least 500).
N_PAYLOADS = 600


@dataclass
class RecordingService:
    """What the web app needs of the service; applies the real intake to what it queues."""

    settings: SchedulerSettings
    queued: list[tuple[Any, Any]] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)

    def enqueue(self, action, payload) -> None:
        self.queued.append((action, payload))
        self.events += intake.from_webhook(action, payload)

    def request_reconcile(self, *, full: bool = True) -> None:
        pass

    def queue_depth(self) -> int:
        return len(self.queued)

    def stats(self) -> dict:
        return {"headline": {"batches_done": len(self.queued)}}

    def consensus(self) -> dict:
        return {"images": []}


def make(**settings) -> tuple[TestClient, RecordingService]:
    base = {"secret": WEBHOOK_SECRET, "dashboard_token": DASHBOARD_TOKEN, "api_key": "k" * 40}
    service = RecordingService(SchedulerSettings(**{**base, **settings}))
    return TestClient(create_app(service), follow_redirects=False), service


def annotation_payload(annotation_id: int = 7) -> dict:
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 1},
        "task": {"id": 3, "project": 1, "data": {"images": []}},
        "annotation": {"id": annotation_id, "completed_by": 2, "result": []},
    }


# -- the webhook secret: /webhook only, header only -----------------------------------------------


def test_webhook_takes_the_secret_in_its_header_only():
    client, service = make()
    body = annotation_payload()
    assert (
        client.post("/webhook", json=body, headers={SECRET_HEADER: WEBHOOK_SECRET}).status_code
        == 200
    )
    for kw in (
        {},
        {"params": {"token": WEBHOOK_SECRET}},
        {"headers": {"Authorization": f"Bearer {WEBHOOK_SECRET}"}},
        {"cookies": {"slicerank_token": WEBHOOK_SECRET}},
        {"headers": {SECRET_HEADER: DASHBOARD_TOKEN}},  # the reader's token cannot write
        {"headers": {SECRET_HEADER: WEBHOOK_SECRET + "x"}},
        {"headers": {SECRET_HEADER: WEBHOOK_SECRET[:-1]}},
    ):
        assert client.post("/webhook", json=body, **kw).status_code == 401, kw
    assert len(service.queued) == 1


def test_the_webhook_secret_opens_no_read():
    client, _ = make()
    for path in ("/api/stats", "/api/consensus"):
        for kw in (
            {"headers": {"Authorization": f"Bearer {WEBHOOK_SECRET}"}},
            {"headers": {SECRET_HEADER: WEBHOOK_SECRET}},
            {"params": {"token": WEBHOOK_SECRET}},
            {"auth": ("lead", WEBHOOK_SECRET)},
        ):
            assert client.get(path, **kw).status_code == 401, (path, kw)
    assert client.post("/login", data={"token": WEBHOOK_SECRET}).status_code == 401


# -- the dashboard token: read-only, exchanged for a session cookie ------------------------------


def test_dashboard_token_reads_as_bearer_but_never_from_a_url():
    client, _ = make()
    ok = {"Authorization": f"Bearer {DASHBOARD_TOKEN}"}
    assert client.get("/api/stats", headers=ok).json() == {"headline": {"batches_done": 0}}
    assert client.get("/api/consensus", headers=ok).status_code == 200
    assert client.get("/api/stats").status_code == 401
    # The old ?token= is no longer read: the token must not sit in URLs, logs and history.
    assert client.get("/api/stats", params={"token": DASHBOARD_TOKEN}).status_code == 401
    page = client.get("/dashboard", params={"token": DASHBOARD_TOKEN})
    assert page.status_code == 303 and page.headers["location"] == "/login"
    assert "set-cookie" not in page.headers


def test_login_exchanges_the_token_for_a_session_cookie():
    client, _ = make()
    form = client.get("/login")
    assert form.status_code == 200 and "method='post'" in form.text and "name='token'" in form.text
    bad = client.post("/login", data={"token": "guess"})
    assert bad.status_code == 401 and "not the dashboard token" in bad.text
    assert "set-cookie" not in bad.headers
    r = client.post("/login", data={"token": DASHBOARD_TOKEN})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # served over plain http here
    value = r.cookies[SESSION_COOKIE]
    assert DASHBOARD_TOKEN not in value and WEBHOOK_SECRET not in value
    # The browser (the test client keeps the cookie) now reads the page and the API.
    page = client.get("/dashboard")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert client.get("/api/stats").status_code == 200
    # The session does not write.
    assert client.post("/webhook", json=annotation_payload()).status_code == 401
    client.post("/logout")
    assert client.get("/api/stats").status_code == 401


def test_session_cookie_is_secure_over_https():
    client, _ = make()
    secure = TestClient(
        client.app, base_url="https://scheduler.example.org", follow_redirects=False
    )
    r = secure.post("/login", data={"token": DASHBOARD_TOKEN})
    assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]


def test_sessions_are_signed_expire_and_end_with_the_token():
    now = [1_000_000.0]
    sessions = DashboardSessions(DASHBOARD_TOKEN, ttl_s=60, clock=lambda: now[0])
    cookie = sessions.issue()
    assert sessions.valid(cookie)
    expires, nonce, mac = cookie.split(".")
    assert not sessions.valid(f"{int(expires) + 9999}.{nonce}.{mac}")  # extended by hand
    assert not sessions.valid(cookie[:-1] + ("0" if cookie[-1] != "0" else "1"))
    assert not sessions.valid("") and not sessions.valid(None) and not sessions.valid("x" * 500)
    # Another token (a rotation) does not accept the old sessions.
    assert not DashboardSessions("another-token-123456", clock=lambda: now[0]).valid(cookie)
    now[0] += 61
    assert not sessions.valid(cookie)
    # No token configured: no session is ever valid.
    assert not DashboardSessions("", clock=lambda: now[0]).valid(DashboardSessions("").issue())


def test_secret_comparison():
    assert same_secret("abc", "abc") and not same_secret("abd", "abc")
    assert not same_secret("", "") and not same_secret(None, "abc") and not same_secret("abc", "")
    assert not same_secret("\udcff", "abc")  # undecodable input is just wrong, not an error


def test_settings_require_a_separate_dashboard_token():
    base = {"api_key": "k", "secret": WEBHOOK_SECRET}
    with pytest.raises(ValueError, match="SCHEDULER_DASHBOARD_TOKEN"):
        SchedulerSettings(**base).require_secrets()
    with pytest.raises(ValueError, match="at least 12"):
        SchedulerSettings(**base, dashboard_token="short").require_secrets()
    with pytest.raises(ValueError, match="must differ"):
        SchedulerSettings(**base, dashboard_token=WEBHOOK_SECRET).require_secrets()
    SchedulerSettings(**base, dashboard_token=DASHBOARD_TOKEN).require_secrets()
    env = SchedulerSettings.from_env({"SCHEDULER_DASHBOARD_TOKEN": DASHBOARD_TOKEN})
    assert env.dashboard_token == DASHBOARD_TOKEN and DASHBOARD_TOKEN not in repr(env)


# -- fuzz -------------------------------------------------------------------------------------------

WEIRD = [
    None, True, 0, -1, 2**63, 10**100, 1.5, "", "x" * 50_000, "\x00", "../../etc/passwd",
    "http://169.254.169.254/latest/meta-data/", [], [1, "a"], {}, {"a": [None]}, "🙂" * 50,
]  # fmt: skip
ACTIONS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "TASKS_CREATED",
           "PROJECT_UPDATED", "START_TRAINING"]  # fmt: skip


def fuzz_payload(rng: random.Random) -> tuple[Any, dict]:
    """(body, headers) for one generated request."""
    pick = lambda seq: seq[rng.randrange(len(seq))]  # noqa: E731
    headers = {SECRET_HEADER: WEBHOOK_SECRET}
    roll = rng.random()
    if roll < 0.1:
        wrong = [
            "",
            "wrong",
            WEBHOOK_SECRET.upper(),
            WEBHOOK_SECRET + "!",
            DASHBOARD_TOKEN,
            "x" * 4000,
        ]
        headers = pick([{}, {SECRET_HEADER: pick(wrong)}, {"Authorization": WEBHOOK_SECRET}])
    if rng.random() < 0.08:
        return pick(WEIRD), headers
    body: dict[str, Any] = {"action": pick(ACTIONS + WEIRD)}
    for key in ("project", "task", "annotation", "annotations"):
        if rng.random() < 0.7:
            body[key] = pick(WEIRD)
    if rng.random() < 0.5:
        ann = {k: pick(WEIRD) for k in ("id", "completed_by", "result", "task", "lead_time",
                                         "was_cancelled", "created_at") if rng.random() < 0.6}  # fmt: skip
        if rng.random() < 0.3:
            ann["result"] = [{"type": "ranker", "value": {"ranker": pick(WEIRD)}}]
        body["annotation"] = ann
        body["annotations"] = [ann, pick(WEIRD)]
    if rng.random() < 0.4:
        body["task"] = {k: pick(WEIRD) for k in ("id", "project", "data", "meta")}
    return body, headers


def test_fuzz_webhook(capsys):
    client, service = make()
    rng = random.Random(15)
    counts: Counter = Counter()
    for i in range(N_PAYLOADS):
        body, headers = fuzz_payload(rng)
        if i % 25 == 0:
            content = rng.choice([b"{", b"\xff", b"[" * 100_000, b'{"action": ' * 20_000, b""])
        else:
            content = json.dumps(body).encode()
        r = client.post("/webhook", content=content,
                        headers={**headers, "Content-Type": "application/json"})  # fmt: skip
        counts[r.status_code] += 1
        assert r.status_code in (200, 400, 401, 413, 422), (body, r.status_code, r.text)
    # Every accepted payload went through the real intake without raising (checked in
    # enqueue): it became events or an ignored/refused one, never a crash of the worker.
    assert counts[200] == len(service.queued) > 50 and counts[400] > 50 and counts[401] > 20
    assert sum(counts.values()) == N_PAYLOADS
    with capsys.disabled():
        print(
            f"\n/webhook fuzz: {N_PAYLOADS} payloads, status counts {dict(sorted(counts.items()))}"
        )
