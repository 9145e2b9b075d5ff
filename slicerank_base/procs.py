"""Child processes for the demo: start, wait until healthy, stop cleanly, leave no orphans.

Each child runs in its own session (so its own process group): stopping it signals the whole
group, which reaches the grandchildren too (uvicorn reloaders, RQ work-horses, Label Studio's
own helpers). On Linux each child also asks the kernel for SIGTERM when its parent dies, so a
``kill -9`` of the demo does not leave services running. :class:`ProcessSet` stops every child
it started, newest first, on normal exit, on an exception and on SIGINT/SIGTERM.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

import httpx

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (bind to port 0 and let the OS choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _child_setup() -> None:  # pragma: no cover - runs in the forked child
    """In the child before exec: ask for SIGTERM when the parent dies (Linux only)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass


def http_ok(url: str, *, headers: Mapping[str, str] | None = None) -> Callable[[], bool]:
    """A health check: ``url`` answers GET with a status below 400."""

    def check() -> bool:
        try:
            return httpx.get(url, headers=dict(headers or {}), timeout=3.0).status_code < 400
        except httpx.HTTPError:
            return False

    return check


def redis_ok(url: str) -> Callable[[], bool]:
    """A health check: the Redis server at ``url`` answers PING."""

    def check() -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
        except (redis.RedisError, OSError):
            return False

    return check


class ChildProcess:
    """One service process with a log file, a health check and a clean stop."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        log_path: str | os.PathLike,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        health: Callable[[], bool] | None = None,
    ) -> None:
        if not cmd:
            raise ValueError(f"child process {name!r}: empty command")
        self.name = name
        self.cmd = [str(c) for c in cmd]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.log_path = Path(log_path)
        self.health = health
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int | None:
        """The process id (also its process group id), or None before start."""
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ChildProcess:
        """Start the process in its own session, output appended to ``log_path``."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        log.info("starting %s: %s", self.name, " ".join(self.cmd))
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_child_setup,  # noqa: PLW1509 - only prctl, no locks touched
        )
        return self

    def wait_healthy(self, timeout: float = 60.0, interval: float = 0.25) -> None:
        """Wait until the health check passes; raise with the log's tail if it dies or times out."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.proc.returncode} before it was "
                    f"ready; its log {self.log_path} ends:\n{self.log_tail()}"
                )
            if self.health is None or self.health():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} was not healthy after {timeout:.0f} s; its log "
                    f"{self.log_path} ends:\n{self.log_tail()}"
                )
            time.sleep(interval)

    def log_tail(self, n: int = 25) -> str:
        """The last ``n`` lines of the process's log."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` s; returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            log.info("stopping %s (pid %d)", self.name, proc.pid)
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0f s: killing it", self.name, timeout)
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # Grandchildren that outlived their parent are still in the group: end them too.
        _signal_group(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ProcessSet:
    """The children of one run: stopped newest first on exit, error, SIGINT or SIGTERM.

    Use as a context manager. Inside it, SIGTERM raises ``KeyboardInterrupt`` like Ctrl-C does,
    so the ``finally`` blocks of the caller run in both cases.
    """

    def __init__(self) -> None:
        self.children: list[ChildProcess] = []
        self.stoppables: list[tuple[str, Callable[[], object]]] = []
        self._old_handlers: dict[int, object] = {}

    def start(self, child: ChildProcess, *, timeout: float = 60.0) -> ChildProcess:
        """Start ``child``, register it for the final stop, and wait until it is healthy."""
        self.children.append(child)
        child.start()
        child.wait_healthy(timeout)
        return child

    def on_stop(self, name: str, stop: Callable[[], object]) -> None:
        """Also call ``stop`` at the end (for things started elsewhere, e.g. Label Studio)."""
        self.stoppables.append((name, stop))

    def check_alive(self) -> None:
        """Raise if any child has died (a service crash should stop the run, not hang it)."""
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                raise RuntimeError(
                    f"{child.name} exited with status {child.proc.returncode}; its log "
                    f"{child.log_path} ends:\n{child.log_tail()}"
                )

    def stop_all(self) -> None:
        """Stop every child and stoppable, newest first; never raises."""
        # Ignore further Ctrl-C while cleaning up so a second press cannot leave orphans.
        previous = signal.getsignal(signal.SIGINT)
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for child in reversed(self.children):
                try:
                    child.stop()
                except Exception:  # noqa: BLE001 - keep stopping the others
                    log.exception("stopping %s failed", child.name)
            for name, stop in reversed(self.stoppables):
                try:
                    stop()
                except Exception:  # noqa: BLE001
                    log.exception("stopping %s failed", name)
            self.children.clear()
            self.stoppables.clear()
        finally:
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signal.SIGINT, previous)

    def __enter__(self) -> ProcessSet:
        def on_term(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        with contextlib.suppress(ValueError):  # not in the main thread: no handler
            self._old_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_term)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop_all()
        finally:
            for signum, handler in self._old_handlers.items():
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(signum, handler)
            self._old_handlers.clear()
