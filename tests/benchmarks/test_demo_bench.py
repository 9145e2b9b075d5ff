"""The demo benchmark's memory sampler counts a process's whole tree."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks.demo import tree_rss_bytes


def test_tree_rss_counts_children():
    # A child that holds ~200 MB must raise the tree's total by about that much.
    code = (
        "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(30)"
    )
    alone = tree_rss_bytes(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and tree_rss_bytes(os.getpid()) < alone + 150 * 2**20:
            time.sleep(0.1)
        assert tree_rss_bytes(os.getpid()) >= alone + 150 * 2**20
        assert tree_rss_bytes(child.pid) >= 150 * 2**20
    finally:
        child.kill()
        child.wait()


def test_gone_process_counts_zero():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert tree_rss_bytes(proc.pid) == 0
