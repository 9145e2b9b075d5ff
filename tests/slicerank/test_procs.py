"""The demo's child-process manager: start, health wait, clean stop, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from slicerank_base.procs import ChildProcess, ProcessSet, free_port, http_ok


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


# A child that starts a grandchild, prints its pid, then serves HTTP.
SPAWNER = textwrap.dedent(
    """
    import http.server, subprocess, sys
    grand = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("grandchild", grand.pid, flush=True)
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler
                           ).serve_forever()
    """
)


def _grandchild_pid(log_path, timeout=10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            if line.startswith("grandchild "):
                return int(line.split()[1])
        time.sleep(0.05)
    raise AssertionError(f"no grandchild pid in {log_path}")


def test_start_health_and_stop_reaches_grandchildren(tmp_path):
    port = free_port()
    child = ChildProcess(
        "web",
        [sys.executable, "-c", SPAWNER, str(port)],
        log_path=tmp_path / "web.log",
        cwd=tmp_path,
        health=http_ok(f"http://127.0.0.1:{port}/"),
    )
    with ProcessSet() as procs:
        procs.start(child, timeout=30)
        assert child.running
        assert http_ok(f"http://127.0.0.1:{port}/")()
        grand = _grandchild_pid(tmp_path / "web.log")
        assert _alive(grand)
    assert not child.running
    assert _wait_gone(grand), "grandchild outlived the stop"


def test_child_that_dies_reports_its_log(tmp_path):
    child = ChildProcess(
        "broken",
        [sys.executable, "-c", "import sys; print('bad config: FOO'); sys.exit(3)"],
        log_path=tmp_path / "broken.log",
        health=lambda: False,
    )
    with ProcessSet() as procs, pytest.raises(RuntimeError, match="broken exited with status 3"):
        procs.start(child, timeout=30)
    assert "bad config: FOO" in child.log_tail()


def test_health_timeout_names_the_service(tmp_path):
    child = ChildProcess(
        "slow",
        [sys.executable, "-c", "import time; time.sleep(60)"],
        log_path=tmp_path / "slow.log",
        health=lambda: False,
    )
    with ProcessSet() as procs, pytest.raises(TimeoutError, match="slow was not healthy"):
        procs.start(child, timeout=0.5)
    assert not child.running


def test_empty_command_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="'x': empty command"):
        ChildProcess("x", [], log_path=tmp_path / "x.log")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_parent_stops_every_child(tmp_path, sig):
    """Ctrl-C (or SIGTERM) to a process holding a ProcessSet leaves no process behind."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from slicerank_base.procs import ChildProcess, ProcessSet
        SPAWNER = {SPAWNER!r}
        with ProcessSet() as procs:
            for i, port in enumerate(sys.argv[1:]):
                procs.start(ChildProcess(f"c{{i}}", [sys.executable, "-c", SPAWNER, port],
                                         log_path=f"c{{i}}.log"))
            print("ready", flush=True)
            try:
                time.sleep(600)
            finally:
                print("cleaning", flush=True)
        """
    )
    ports = [str(free_port()), str(free_port())]
    parent = subprocess.Popen(
        [sys.executable, "-c", script, *ports],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout.readline().strip() == "ready"
    pids = [_grandchild_pid(tmp_path / f"c{i}.log") for i in range(2)]
    children = [
        int(p)
        for p in subprocess.run(
            ["pgrep", "-P", str(parent.pid)], capture_output=True, text=True
        ).stdout.split()
    ]
    assert len(children) == 2
    parent.send_signal(sig)
    parent.wait(30)
    assert "cleaning" in parent.stdout.read()
    for pid in pids + children:
        assert _wait_gone(pid), f"process {pid} outlived the demo"


def test_parent_killed_hard_takes_children_down(tmp_path):
    """Even SIGKILL of the parent (no clean-up possible) ends the children (PDEATHSIG)."""
    script = textwrap.dedent(
        """
        import sys, time
        from slicerank_base.procs import ChildProcess, ProcessSet
        with ProcessSet() as procs:
            c = procs.start(ChildProcess("sleeper", [sys.executable, "-c",
                            "import time; time.sleep(600)"], log_path="s.log"))
            print(c.pid, flush=True)
            time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    child_pid = int(parent.stdout.readline())
    assert _alive(child_pid)
    parent.kill()
    parent.wait(10)
    assert _wait_gone(child_pid)
