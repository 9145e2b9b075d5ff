"""``slicerank bench demo``: wall time and peak memory of a whole ``slicerank demo`` run.

The demo runs as a child process so that everything it starts (Label Studio, Redis, the
scheduler, the ML backend, the RQ worker and its work-horse) is measured as one process tree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

#: How often the process tree's memory is sampled, in seconds.
SAMPLE_INTERVAL_S = 0.5


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` from /proc (Linux)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def tree_rss_bytes(root: int) -> int:
    """Summed resident memory of ``root`` and all its descendants (an upper bound: forked
    processes share pages that each count in full)."""
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
        stack += _children(pid)
    return total


def run_bench(scans: int | None, out: Path, extra: list[str]) -> dict[str, Any]:
    """Run ``slicerank demo --fresh`` into ``out`` and measure it; returns the numbers."""
    demo_json = out / "demo-result.json"
    cmd = [sys.executable, "-m", "slicerank", "demo", "--out", str(out), "--fresh"]
    cmd += ["--json", str(demo_json)] + (["--scans", str(scans)] if scans else []) + extra
    peak = 0
    start = time.monotonic()
    proc = subprocess.Popen(cmd)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss_bytes(proc.pid))
            stop.wait(SAMPLE_INTERVAL_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        rc = proc.wait()
    finally:
        stop.set()
        sampler.join()
    wall = time.monotonic() - start
    result: dict[str, Any] = {
        "command": " ".join(cmd[1:]),
        "exit_code": rc,
        "wall_s": round(wall, 1),
        "peak_tree_rss_gib": round(peak / 2**30, 2),
        "cpus": os.cpu_count(),
    }
    if demo_json.exists():
        demo = json.loads(demo_json.read_text())
        result["stage_timings_s"] = demo.get("timings_s")
        result["headline"] = (demo.get("report") or {}).get("headline")
    return result


def _bench(args: argparse.Namespace) -> int:
    from slicerank_base.jsonout import write_json

    with tempfile.TemporaryDirectory(prefix="slicerank-bench-demo-") as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "demo"
        result = run_bench(args.scans, out, args.demo_args or [])
    print(
        f"demo: exit {result['exit_code']}, wall {result['wall_s']} s, "
        f"peak memory of the process tree {result['peak_tree_rss_gib']} GiB"
    )
    if args.json:
        write_json(args.json, result)
    return 0 if result["exit_code"] == 0 else 1


def register_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` benchmark target."""
    p = bench_subparsers.add_parser(
        "demo", help="wall time and peak memory of a whole demo run (default size)"
    )
    p.add_argument("--scans", type=int, help="scans to label (default: the demo's default)")
    p.add_argument("--out", help="keep the demo's output here (default: a temporary folder)")
    p.add_argument("--json", metavar="FILE", help="write the numbers as JSON")
    p.add_argument(
        "demo_args", nargs=argparse.REMAINDER, help="further arguments for slicerank demo"
    )
    p.set_defaults(func=_bench)
