#!/usr/bin/env python3
"""The first run on a GPU machine: the study protocol's numbers in one command, one folder.

    PYTHONPATH=. timeout 540 python3 scripts/gpu_first_run.py --out runs/gpu-first

runs from the source tree (no ``pip install``) with only Python >= 3.11, torch, numpy, pillow,
scipy, scikit-learn and tqdm: nothing on the training path imports FastAPI, uvicorn, RQ, Redis
or pydicom. It runs these stages, each in a process of its own under its own time limit (a
stage that overruns or crashes is recorded and the next one starts), and rewrites
``DIR/results.json`` after every stage (one entry per stage under ``"stages"``):

* **env** — Python, torch, CUDA, cuDNN, the GPU, bf16 support (also ``DIR/env.txt``).
* **smoke** — 2 epochs × 1 seed through the real protocol (ensemble and prior bias included);
  the losses must be finite.
* **micro** — training (indexing + augmentation + step) vs the bare forward+backward+step at
  batch 32, each the median of 3 × 200 steps under the same cuDNN setting; the bare step in
  NCHW vs channels-last, batch 64 and 128, and the bare step replayed from a CUDA graph (the
  ceiling without launch overhead; skipped on a CPU).
* **protocol** — 70 epochs × ``--seeds`` seeds with one JSON line per epoch
  (``DIR/epochs.jsonl``), stopped before its time limit, extrapolated to 10 seeds.
* **concurrency** — one seed process alone vs two at once on the same GPU.

``DIR`` also gets ``log.txt`` (every stage's output) and, where ``nvidia-smi`` exists,
``nvidia-smi.csv`` (utilisation, memory, power and clocks every 0.5 s). ``--dry-run`` does all
of it with a tiny model on the CPU (CI runs it with the serving stack's packages blocked).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from slicerank_base.jsonout import write_json  # noqa: E402 (standard library only)

STAGES = ("env", "smoke", "micro", "protocol", "concurrency")
#: Seconds per stage on a GPU: 525 in all, inside the 540 s of the documented command.
LIMITS = {"env": 45, "smoke": 75, "micro": 120, "protocol": 210, "concurrency": 75}
#: The dry run's limits (a tiny model on a busy 2-core CPU).
DRY_LIMITS = {"env": 90, "smoke": 90, "micro": 90, "protocol": 90, "concurrency": 120}
#: Targets of issue 23, on an H100/H200.
TARGET_PROTOCOL_S = 800
TARGET_TRAIN_VS_BARE = 0.85
#: Seconds a stage process needs before its work starts (imports, CUDA, data), and after it.
STARTUP_S = 20
DRY_STARTUP_S = 10


# --------------------------------------------------------------------------------------------
# Stage processes (torch is imported only here, never in the coordinating process)
# --------------------------------------------------------------------------------------------


class StageOutput:
    """A stage's JSON, rewritten after every measurement: a stage killed at its time limit
    still leaves what it measured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        write_json(self.path, self.data)


def _setup(opts: argparse.Namespace):
    """(torch, device, config, images) of this run; the dry run is a tiny model on the CPU."""
    import torch

    from ml_backend.config import CPU_SMALL, GPU

    if opts.dry_run:
        # One thread: OpenMP's spinning makes two far slower on a busy 2-core machine.
        torch.set_num_threads(1)
        config = CPU_SMALL.replace(name="dry-run", width=4, head_hidden=(8,), square=40, crop=32,
                                   batch_size=8, cpu_threads=1)  # fmt: skip
        return torch, torch.device("cpu"), config, 96
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: the GPU run needs one (or use --dry-run)")
    return torch, torch.device("cuda"), GPU, 3323


def stage_env(opts: argparse.Namespace, out: StageOutput) -> bool:
    import platform
    from importlib import metadata

    import numpy
    import torch

    def version(dist: str) -> str | None:
        # Read from the installed package's metadata: importing scikit-learn costs seconds.
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": numpy.__version__,
        "scipy": version("scipy"),
        "scikit_learn": version("scikit-learn"),
        "pillow": version("pillow"),
        "cuda_available": torch.cuda.is_available(),
        "dry_run": opts.dry_run,
    }
    if torch.cuda.is_available():
        from ml_backend.train import amp_dtype

        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            amp_dtype=str(amp_dtype(torch.device("cuda"))).replace("torch.", ""),
        )
    lines = [f"{k}: {v}" for k, v in info.items()]
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        lines += ["", "$ nvidia-smi", smi.stdout + smi.stderr]
    (Path(opts.out) / "env.txt").write_text("\n".join(lines) + "\n")
    for key, value in info.items():
        out.put(key, value)
    return opts.dry_run or info["cuda_available"]


def stage_smoke(opts: argparse.Namespace, out: StageOutput) -> bool:
    from benchmarks.train import run_full_protocol

    _, device, config, images = _setup(opts)
    numbers = run_full_protocol(
        device=str(device), config=config, n_images=images, epochs=2, seeds=1, bare_steps=0,
        jsonl=Path(opts.out) / "smoke_epochs.jsonl",
    )  # fmt: skip
    for key in ("preset", "amp_dtype", "epochs", "seeds", "total_s", "losses_finite",
                "ensemble", "ensemble_bias", "test"):  # fmt: skip
        out.put(key, numbers.get(key))
    bias_finite = all(math.isfinite(b) for b in numbers["ensemble_bias"])
    ok = numbers["losses_finite"] and bias_finite and numbers["ensemble"].get("n", 0) > 0
    out.put("passed", ok)
    return ok


def stage_micro(opts: argparse.Namespace, out: StageOutput) -> bool:
    from benchmarks.train import (
        bare_forward_backward,
        graphed_bare_rate,
        synthetic_prepared,
        training_rate,
    )

    torch, device, config, images = _setup(opts)
    steps, variant_steps, repeats = (4, 2, 3) if opts.dry_run else (200, 100, 3)
    batch = 32
    # The study's training split (2,658 images); enough for a few batches of 128 in a dry run.
    data = synthetic_prepared(300 if opts.dry_run else round(images * 0.8), config)
    out.put("cudnn_benchmark", "on for every measurement (as in training)")
    out.put("steps", {"batch_32": steps, "variants": variant_steps, "repeats": repeats})
    train = training_rate(config, device, batch_size=batch, steps=steps, repeats=repeats, data=data)
    out.put("train_b32", train)
    bare = bare_forward_backward(config, device, batch_size=batch, steps=steps, repeats=repeats)
    out.put("bare_b32", bare)
    out.put("train_vs_bare_b32", train["images_per_s"] / bare["images_per_s"])
    nchw = bare_forward_backward(config.replace(channels_last=False), device, batch_size=batch,
                                 steps=variant_steps, repeats=repeats)  # fmt: skip
    out.put("bare_b32_nchw", nchw)
    for size in (64, 128):
        label = f"b{size}"
        b = bare_forward_backward(config, device, batch_size=size, steps=variant_steps,
                                  repeats=repeats)  # fmt: skip
        t = training_rate(config, device, batch_size=size, steps=variant_steps, repeats=repeats,
                          data=data)  # fmt: skip
        out.put(f"bare_{label}", b)
        out.put(f"train_{label}", t)
    if device.type != "cuda":
        out.put("graphed_bare_b32", {"skipped": "CUDA graphs need a CUDA device"})
    else:
        try:
            graphed = graphed_bare_rate(config, device, batch_size=batch, steps=steps,
                                        repeats=repeats)  # fmt: skip
            out.put("graphed_bare_b32", graphed)
            out.put("graph_vs_bare_b32", graphed["images_per_s"] / bare["images_per_s"])
        except Exception as exc:  # the ceiling is informative; its failure must not hide the rest
            out.put("graphed_bare_b32", {"error": f"{type(exc).__name__}: {exc}"})
    return True


def stage_protocol(opts: argparse.Namespace, out: StageOutput) -> bool:
    from benchmarks.train import run_full_protocol

    _, device, config, images = _setup(opts)
    budget = opts.stage_seconds - (time.monotonic() - opts.started) - opts.margin
    out.put("max_seconds", budget)
    numbers = run_full_protocol(
        device=str(device), config=config, n_images=images, epochs=2 if opts.dry_run else 70,
        seeds=opts.seeds, max_seconds=budget, jsonl=Path(opts.out) / "epochs.jsonl",
        bare_steps=0,
    )  # fmt: skip
    for key, value in numbers.items():
        out.put(key, value)
    return numbers["losses_finite"]


def seed_process(opts: argparse.Namespace, out: StageOutput) -> bool:
    """One seed's training (``--epochs``) as a process of its own, for the concurrency stage."""
    from benchmarks.train import synthetic_prepared
    from ml_backend.data import stratified_split
    from ml_backend.train import fit

    _, device, config, images = _setup(opts)
    config = config.replace(epochs=opts.epochs)
    data = synthetic_prepared(images, config)
    tr, va, _ = stratified_split(data.targets.tolist(), config.split, config.split_seed)
    out.put("seed", opts.seed)
    t0 = time.perf_counter()
    result = fit(config, data.subset(tr), data.subset(va), device, seed=opts.seed)
    out.put("fit_s", time.perf_counter() - t0)
    out.put("epochs", [h.as_dict() for h in result.history])
    return True


CHILDREN = {"env": stage_env, "smoke": stage_smoke, "micro": stage_micro,
            "protocol": stage_protocol, "seed-process": seed_process}  # fmt: skip


def run_child(opts: argparse.Namespace) -> int:
    out = StageOutput(Path(opts.child_json))
    try:
        ok = CHILDREN[opts.child](opts, out)
    except SystemExit as exc:
        out.put("error", str(exc))
        raise
    return 0 if ok else 1


# --------------------------------------------------------------------------------------------
# The coordinating process (standard library only)
# --------------------------------------------------------------------------------------------


class Run:
    """The output folder: results.json, log.txt, and the stage processes started into it."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.out = Path(opts.out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "stages").mkdir(exist_ok=True)
        for stale in ("epochs.jsonl", "smoke_epochs.jsonl"):
            (self.out / stale).unlink(missing_ok=True)
        self.log = (self.out / "log.txt").open("a", buffering=1)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + opts.budget
        self.results: dict[str, Any] = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "dry_run": opts.dry_run,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "budget_s": opts.budget,
            "stages": {},
        }
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        self.env.setdefault("PYTHONUNBUFFERED", "1")

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        self.results["summary"] = summarise(self.results["stages"], self.opts.dry_run)
        write_json(self.out / "results.json", self.results)

    def start(self, child: str, json_path: Path, seconds: float, *extra: str) -> subprocess.Popen:
        argv = [sys.executable, str(Path(__file__).resolve()), "--out", str(self.out),
                "--child", child, "--child-json", str(json_path), "--seeds", str(self.opts.seeds),
                "--stage-seconds", str(seconds), *extra]  # fmt: skip
        if self.opts.dry_run:
            argv.append("--dry-run")
        json_path.unlink(missing_ok=True)
        return subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
                                cwd=ROOT)  # fmt: skip

    @staticmethod
    def finish(proc: subprocess.Popen, until: float) -> str:
        """Wait until the monotonic time ``until``; ``ok``, ``failed`` or ``timeout``."""
        try:
            rc = proc.wait(timeout=max(until - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return "timeout"
        return "ok" if rc == 0 else "failed"

    def limit(self, stage: str) -> float:
        limits = DRY_LIMITS if self.opts.dry_run else LIMITS
        return min(self.opts.limits.get(stage, limits[stage]), self.deadline - time.monotonic())

    def run_stage(self, stage: str) -> str:
        seconds = self.limit(stage)
        entry: dict[str, Any] = {"limit_s": round(seconds, 1)}
        if self.deadline - time.monotonic() < 5:
            entry["status"] = "skipped"
            entry["reason"] = "the run's --budget is spent"
            self.results["stages"][stage] = entry
            return "skipped"
        self.log.flush()
        log_from = (self.out / "log.txt").stat().st_size
        self.say(f"stage {stage}: starting (limit {seconds:.0f} s)")
        t0 = time.monotonic()
        if stage == "concurrency":
            status, data = self.concurrency(t0 + seconds)
        else:
            json_path = self.out / "stages" / f"{stage}.json"
            status = self.finish(self.start(stage, json_path, seconds), t0 + seconds)
            data = json.loads(json_path.read_text()) if json_path.is_file() else {}
        if stage == "protocol" and status == "timeout" and "extrapolated_s" not in data:
            data["from_epochs_jsonl"] = extrapolate_jsonl(self.out / "epochs.jsonl")
        entry.update(status=status, seconds=round(time.monotonic() - t0, 1), **data)
        if status != "ok":
            # What went wrong, in results.json itself (the whole output is in log.txt).
            self.log.flush()
            with (self.out / "log.txt").open("rb") as fh:
                fh.seek(log_from)
                entry["output_tail"] = fh.read()[-3000:].decode(errors="replace")
        self.results["stages"][stage] = entry
        self.save()
        self.say(f"stage {stage}: {status} in {entry['seconds']} s")
        return status

    def concurrency(self, until: float) -> tuple[str, dict[str, Any]]:
        """One seed process alone, then two at once (seeds 0 and 1); each trains ``epochs``."""
        epochs = "1" if self.opts.dry_run else "6"
        folder = self.out / "stages" / "concurrency"
        folder.mkdir(exist_ok=True)
        data: dict[str, Any] = {"epochs_per_process": int(epochs)}
        runs = {"one": [0], "two": [0, 1]}
        status = "ok"
        for name, seeds in runs.items():
            left = until - time.monotonic()
            paths = [folder / f"{name}_seed{s}.json" for s in seeds]
            t0 = time.monotonic()
            procs = [self.start("seed-process", p, left, "--seed", str(s), "--epochs", epochs)
                     for p, s in zip(paths, seeds, strict=True)]  # fmt: skip
            states = [self.finish(p, until) for p in procs]
            wall = time.monotonic() - t0
            rows = [json.loads(p.read_text()) if p.is_file() else {} for p in paths]
            data[name] = {"wall_s": round(wall, 1), "status": states,
                          "processes": [_process_rate(r) for r in rows]}  # fmt: skip
            if any(s != "ok" for s in states):
                status = "timeout" if "timeout" in states else "failed"
                break
        if status == "ok":
            one = data["one"]["processes"][0]["images_per_s_median"]
            both = sum(p["images_per_s_median"] for p in data["two"]["processes"])
            data["two"]["aggregate_images_per_s"] = both
            data["two_vs_one"] = both / one
        return status, data

    def close(self) -> None:
        self.save()
        self.log.close()


def _process_rate(row: dict[str, Any]) -> dict[str, Any]:
    """A seed process's training rate: the median over its epochs after the first (cuDNN's
    autotuning), or over all when it ran fewer than three."""
    epochs = row.get("epochs") or []
    rates = [e["images_per_s"] for e in epochs]
    steady = rates[1:] if len(rates) >= 3 else rates
    return {"seed": row.get("seed"), "fit_s": row.get("fit_s"), "epochs": len(epochs),
            "images_per_s_median": statistics.median(steady) if steady else None}  # fmt: skip


def extrapolate_jsonl(path: Path, *, epochs: int = 70, seeds: int = 10) -> dict[str, Any]:
    """A cut-off protocol's estimate from its per-epoch lines: the elapsed seconds per epoch
    times ``epochs`` × ``seeds`` (each seed's final evaluation is then missing)."""
    if not path.is_file():
        return {"epochs_run": 0}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return {"epochs_run": 0}
    per_epoch = rows[-1]["elapsed_s"] / len(rows)
    return {"epochs_run": len(rows), "seconds_per_epoch": per_epoch,
            "extrapolated_s": per_epoch * epochs * seeds}  # fmt: skip


def summarise(stages: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    """The issue's numbers and targets, from whatever stages finished."""
    micro, protocol = stages.get("micro", {}), stages.get("protocol", {})
    conc = stages.get("concurrency", {})
    extrapolated = protocol.get("extrapolated_s")
    if extrapolated is None:
        extrapolated = protocol.get("from_epochs_jsonl", {}).get("extrapolated_s")
    ratio = micro.get("train_vs_bare_b32")
    summary: dict[str, Any] = {
        "gpu": stages.get("env", {}).get("gpu"),
        "protocol_70x10_extrapolated_s": extrapolated,
        "train_vs_bare_b32": ratio,
        "graph_vs_bare_b32": micro.get("graph_vs_bare_b32"),
        "bare_dispatch_share_b32": micro.get("bare_b32", {}).get("dispatch_share"),
        "two_processes_vs_one": conc.get("two_vs_one"),
        "statuses": {k: v.get("status") for k, v in stages.items()},
    }
    if dry_run:
        summary["targets"] = "not applicable: a dry run (tiny model on the CPU) checks the path"
    else:
        summary["targets"] = {
            f"protocol < {TARGET_PROTOCOL_S} s": None if extrapolated is None
            else extrapolated < TARGET_PROTOCOL_S,
            f"train/bare >= {TARGET_TRAIN_VS_BARE}": None if ratio is None
            else ratio >= TARGET_TRAIN_VS_BARE,
        }  # fmt: skip
    return summary


class NvidiaSmiTrace:
    """``nvidia-smi`` sampling into ``nvidia-smi.csv`` while the run lasts (when it exists)."""

    QUERY = ("timestamp,name,utilization.gpu,utilization.memory,memory.used,memory.total,"
             "power.draw,clocks.sm,temperature.gpu,pstate")  # fmt: skip

    def __init__(self, out: Path) -> None:
        self.proc = None
        self.fh = None
        if shutil.which("nvidia-smi"):
            self.fh = (out / "nvidia-smi.csv").open("w")
            self.proc = subprocess.Popen(
                ["nvidia-smi", f"--query-gpu={self.QUERY}", "--format=csv", "-lms", "500"],
                stdout=self.fh,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.fh.close()


def _limits(text: str) -> dict[str, float]:
    limits = {}
    for part in filter(None, text.split(",")):
        name, _, seconds = part.partition("=")
        if name not in STAGES or not seconds:
            raise argparse.ArgumentTypeError(
                f"--limits {part!r}: expected STAGE=SECONDS with STAGE one of {', '.join(STAGES)}"
            )
        limits[name] = float(seconds)
    return limits


def _stages(text: str) -> list[str]:
    names = [s for s in text.split(",") if s]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}"
        )
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--seeds", type=int, default=2,
                   help="seeds of the protocol stage (default 2; extrapolated to 10)")  # fmt: skip
    p.add_argument("--stages", type=_stages, default=list(STAGES),
                   help=f"comma-separated subset of {','.join(STAGES)} (default: all)")  # fmt: skip
    p.add_argument("--limits", type=_limits, default={},
                   help="per-stage time limits, e.g. protocol=300,micro=90 (seconds)")  # fmt: skip
    p.add_argument("--budget", type=float, default=530,
                   help="seconds for the whole run; later stages shrink to fit (default 530)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true",
                   help="everything tiny on the CPU (checks the path, about a minute)")  # fmt: skip
    # Internal: a stage process.
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--child-json", help=argparse.SUPPRESS)
    p.add_argument("--stage-seconds", type=float, default=0, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=2, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    opts.started = time.monotonic()
    opts.margin = DRY_STARTUP_S if opts.dry_run else STARTUP_S
    if opts.seeds < 1:
        p.error("--seeds must be >= 1")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.child:
        return run_child(opts)
    run = Run(opts)
    trace = NvidiaSmiTrace(run.out)
    run.say(f"gpu_first_run: stages {','.join(opts.stages)} into {run.out}"
            + (" (dry run: tiny model on the CPU)" if opts.dry_run else ""))  # fmt: skip
    try:
        for stage in opts.stages:
            run.run_stage(stage)
            no_cuda = not run.results["stages"].get("env", {}).get("cuda_available")
            if stage == "env" and not opts.dry_run and no_cuda:
                run.say("no CUDA device: stopping (use --dry-run to check the path on a CPU)")
                break
        run.save()
        run.say("summary: " + json.dumps(run.results["summary"]))
    finally:
        trace.stop()
        run.close()
    summary = run.results["summary"]
    failed = [k for k, v in summary["statuses"].items() if v not in ("ok", "skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
