"""Limits before work (issue 21): request bodies capped on every scheduler route from
``Content-Length`` and while streaming, slow clients cut off, and a socket that listens before
the service starts. Each runs against a real uvicorn server on a real socket, as
``slicerank scheduler`` serves (the service behind the app is test_webapp_auth's recorder)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from ls_config.provision import SECRET_HEADER
from ls_config.server import free_port
from ranking_scheduler.service.limits import (
    DEFAULT_MAX_BYTES,
    WEBHOOK_MAX_BYTES,
    SlowClientProtocol,
    listen,
    make_server,
)
from ranking_scheduler.service.settings import SchedulerSettings
from ranking_scheduler.service.webapp import create_app
from tests.ranking_scheduler.test_webapp_auth import (
    DASHBOARD_TOKEN,
    WEBHOOK_SECRET,
    RecordingService,
)

READ_TIMEOUT_S = 1.0


class QuickDeadline(SlowClientProtocol):
    """The real protocol with a deadline short enough for a test."""

    read_timeout_s = READ_TIMEOUT_S


@pytest.fixture
def server():
    service = RecordingService(
        SchedulerSettings(secret=WEBHOOK_SECRET, dashboard_token=DASHBOARD_TOKEN, api_key="k" * 40)
    )
    port = free_port()
    sock = listen("127.0.0.1", port)
    srv = make_server(create_app(service), http=QuickDeadline)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield port, service
    srv.should_exit = True
    thread.join(10)
    sock.close()


def _raw(port: int, head: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(head)
    return s


def _status(s: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0


def test_a_declared_body_over_the_cap_is_refused_before_it_is_read(server):
    port, service = server
    for path, cap in (("/login", DEFAULT_MAX_BYTES), ("/webhook", WEBHOOK_MAX_BYTES)):
        # 800 MB announced, not one byte of it sent: the answer comes at once.
        s = _raw(
            port,
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 800000000\r\n"
            f"{SECRET_HEADER}: {WEBHOOK_SECRET}\r\n\r\n".encode(),
        )
        assert _status(s) == 413, path
        s.close()
        assert cap < 800_000_000
    # A route with no body of its own takes only a small one.
    r = httpx.post(f"http://127.0.0.1:{port}/logout", content=b"x" * (DEFAULT_MAX_BYTES + 1))
    assert r.status_code == 413
    assert service.queued == []


def _stream(port: int, head: bytes, most: int) -> tuple[int, int]:
    """Send ``head`` and then a chunked body until the server answers (or ``most`` bytes went);
    returns (status, bytes sent before the answer). A reader thread takes the answer as soon as
    it comes (a server that closes early may reset the connection)."""
    s = _raw(port, head)
    answer = bytearray()
    got = threading.Event()

    def read() -> None:
        try:
            while chunk := s.recv(4096):
                answer.extend(chunk)
                got.set()
        except OSError:
            pass
        got.set()

    threading.Thread(target=read, daemon=True).start()
    sent, chunk = 0, b"a" * 65536
    while sent < most and not got.is_set():
        try:
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            break
        sent += len(chunk)
    got.wait(5)
    s.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, sent


@pytest.mark.parametrize("path", ["/login", "/webhook"])
def test_a_streamed_body_is_cut_off_at_the_cap(server, path):
    port, service = server
    cap = DEFAULT_MAX_BYTES if path == "/login" else WEBHOOK_MAX_BYTES
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        f"{SECRET_HEADER}: {WEBHOOK_SECRET}\r\n\r\n"
    ).encode()
    status, sent = _stream(port, head, most=max(64 * cap, 64 << 20))  # unless it is stopped
    assert status == 413
    # Stopped near the cap (plus what the kernel's socket buffers took on the way: a few MB on
    # loopback), not after 64 MB or more.
    assert sent <= cap + 16 * 1024 * 1024
    assert service.queued == []


def test_a_body_within_the_cap_still_works(server):
    port, service = server
    r = httpx.post(
        f"http://127.0.0.1:{port}/webhook",
        json={"action": "ANNOTATION_CREATED", "annotation": {"id": 5}},
        headers={SECRET_HEADER: WEBHOOK_SECRET},
    )
    assert r.status_code == 200 and len(service.queued) == 1
    r = httpx.post(f"http://127.0.0.1:{port}/login", data={"token": DASHBOARD_TOKEN})
    assert r.status_code == 303


def test_slow_clients_are_not_held(server):
    port, _ = server
    # 21 half-sent requests: headers never finished, or a body that stops half-way; and one
    # kept-alive connection whose next request stalls.
    slow = [_raw(port, b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Le") for _ in range(11)]
    slow += [
        _raw(port, b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\ntoken=")
        for _ in range(10)
    ]
    kept = _raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(kept) == 200
    kept.sendall(b"GET /heal")
    time.sleep(READ_TIMEOUT_S + 1.5)
    closed = 0
    for s in [*slow, kept]:
        s.settimeout(2)
        try:
            while s.recv(4096):
                pass
            closed += 1  # the server closed it (b"")
        except (TimeoutError, ConnectionResetError):
            closed += isinstance(sys.exc_info()[1], ConnectionResetError)
        s.close()
    assert closed == 22
    # A client that sends its request in time is served as before.
    assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200


@pytest.mark.slow
def test_slicerank_scheduler_listens_before_it_starts(tmp_path):
    """A restarted scheduler accepts connections before it reads Label Studio, so a webhook
    sent while it starts waits in the socket's backlog instead of being refused (the kill -9
    window of issue 21). Label Studio here is a socket that accepts and never answers (a
    stalled server: a fault a real one cannot be made to show on demand)."""
    stalled = socket.create_server(("127.0.0.1", 0))
    held = []
    threading.Thread(target=lambda: held.append(stalled.accept()), daemon=True).start()
    port = free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_URL": f"http://127.0.0.1:{stalled.getsockname()[1]}",
        "LABEL_STUDIO_API_KEY": "k" * 40,
        "SCHEDULER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SCHEDULER_DASHBOARD_TOKEN": DASHBOARD_TOKEN,
        "SCHEDULER_DB_URL": f"sqlite:///{tmp_path / 'log.db'}",
        "SCHEDULER_OUT_DIR": str(tmp_path / "out"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "slicerank.cli", "scheduler", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not held and time.monotonic() < deadline:
            assert proc.poll() is None, "the scheduler exited"
            time.sleep(0.1)
        assert held, "the scheduler never called Label Studio"
        # It is stuck reading Label Studio, and its port already takes connections.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(10)
        stalled.close()
